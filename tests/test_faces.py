"""The face toolkit (bot/faces) with dlib's real models on the CPU: the intake verdicts, the
identity measure on the packaged test faces, and the event loop kept free while it works.

The event loop test is why the toolkit works in processes: dlib holds the GIL while its ResNet
embeds a face (about 160 ms here), so a thread doing it stalled a 2 ms ticker for 209 ms."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from backends.modelslab.simulated_images import make_images
from bot.faces import (
    FaceCheckFailed,
    FaceModelsMissing,
    FaceRules,
    FaceToolkit,
    SelfieCheck,
    SelfieVerdict,
)
from bot.faces.checks import check_selfie
from bot.faces.confirm import confirmed
from bot.faces.detect import Face, find_faces
from bot.faces.models import (
    CNN_DETECTOR_FILE,
    EMBEDDER_FILE,
    LANDMARKS_FILE,
    FaceModels,
    load_models,
    models_folder,
)
from bot.faces.picture import UnreadableImage, decode
from bot.faces.verdict import MAX_CONFIRMATIONS, faces_that_count, subject_of
from tests.conftest import EXAMPLE_SELFIE
from tests.face_set import insightface_image, jpeg, measure, png, record_loop_gaps, t1_face

# The example selfie's face (384×384 photo): HOG's box, in the photo's pixels.
ASTRONAUT_FACE = (130, 56, 205, 130)
ASTRONAUT_FACE_PX = 75


@pytest.fixture(scope="module")
def toolkit() -> Iterator[FaceToolkit]:
    """One toolkit for the module: its worker process is not bound to an event loop."""
    kit = FaceToolkit(FaceRules())
    asyncio.run(kit.start())
    yield kit
    asyncio.run(kit.aclose())


@pytest.fixture(scope="module")
def models() -> Iterator[FaceModels]:
    yield load_models()


def astronaut() -> Image.Image:
    return Image.open(EXAMPLE_SELFIE).convert("RGB")


def gradient(size: tuple[int, int] = (640, 480)) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (ramp, ImageOps.invert(ramp), ramp.rotate(90).resize(size)))


def tiny_face() -> Image.Image:
    """The astronaut shrunk so that its face is about 40 px, on a plain 480×360 canvas."""
    small = astronaut().resize((205, 205), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (480, 360), (128, 132, 140))
    canvas.paste(small, (140, 80))
    return canvas


def big_face_and_small_face() -> Image.Image:
    """The astronaut's head and shoulders with its face about 140 px, and Tom Hanks' 112 px
    crop (face about 78 px) beside it: areas about 3:1."""
    left, top, right, bottom = ASTRONAUT_FACE
    head = astronaut().crop((left - 50, max(0, top - 50), right + 50, bottom + 90))
    factor = 140 / ASTRONAUT_FACE_PX
    head = head.resize((round(head.width * factor), round(head.height * factor)))
    canvas = Image.new("RGB", (640, 480), (128, 132, 140))
    canvas.paste(head, (20, 20))
    canvas.paste(Image.open(insightface_image("Tom_Hanks_54745.png")).convert("RGB"), (480, 200))
    return canvas


# Intake verdicts.


async def test_the_example_selfie_has_one_usable_face(toolkit: FaceToolkit) -> None:
    check = await toolkit.check_selfie(EXAMPLE_SELFIE.read_bytes())
    assert check.verdict is SelfieVerdict.OK
    assert check.faces == 1
    assert check.face_px is not None and abs(check.face_px - ASTRONAUT_FACE_PX) <= 3
    assert 0 < check.seconds < 5


async def test_a_group_photo_has_several_faces(toolkit: FaceToolkit) -> None:
    check = await toolkit.check_selfie(insightface_image("t1.jpg").read_bytes())
    assert check.verdict is SelfieVerdict.SEVERAL
    assert check.faces == 2  # the subject and the first face confirmed: the check stops there


async def test_an_image_without_a_face_has_none(toolkit: FaceToolkit) -> None:
    check = await toolkit.check_selfie(jpeg(gradient()))
    assert check.verdict is SelfieVerdict.NO_FACE
    assert (check.faces, check.face_px) == (0, None)


async def test_a_tiny_face_is_too_small_not_missing(toolkit: FaceToolkit) -> None:
    check = await toolkit.check_selfie(jpeg(tiny_face()))
    assert check.verdict is SelfieVerdict.TOO_SMALL
    assert check.faces == 1
    assert check.face_px is not None and 34 <= check.face_px <= 46


async def test_the_minimum_face_size_is_the_boundary() -> None:
    for image in (EXAMPLE_SELFIE.read_bytes(), jpeg(tiny_face())):
        face_px = (await _check(FaceRules(min_face_px=1), image)).face_px
        assert face_px is not None
        at_size = await _check(FaceRules(min_face_px=face_px), image)
        just_over = await _check(FaceRules(min_face_px=face_px + 1), image)
        assert (at_size.verdict, just_over.verdict) == (SelfieVerdict.OK, SelfieVerdict.TOO_SMALL)


async def test_a_dominant_face_is_the_subject_unless_dominance_asks_for_more() -> None:
    image = jpeg(big_face_and_small_face())
    usual = await _check(FaceRules(), image)
    assert (usual.verdict, usual.faces) == (SelfieVerdict.OK, 1)
    assert usual.face_px is not None and 115 <= usual.face_px <= 150
    strict = await _check(FaceRules(dominance=100), image)
    assert (strict.verdict, strict.faces) == (SelfieVerdict.SEVERAL, 2)


def test_a_dominated_face_needs_no_confirmation(models: FaceModels) -> None:
    picture = decode(jpeg(big_face_and_small_face()), FaceRules().detect_side)
    found = find_faces(models.detector, picture)
    assert len(found) == 2
    asked: list[Face] = []

    def confirm(face: Face) -> bool:
        asked.append(face)
        return confirmed(models.confirmer, picture, face)

    assert faces_that_count(found, FaceRules(), confirm) == [found[0]]
    assert asked == []
    assert faces_that_count(found, FaceRules(dominance=100), confirm) == found
    assert len(asked) == 1


def astronaut_on_canvas(side: int) -> bytes:
    """The example selfie resized to `side` px in the corner of a 640 px canvas."""
    canvas = Image.new("RGB", (640, 640), (128, 128, 128))
    canvas.paste(astronaut().resize((side, side)), (0, 0))
    return jpeg(canvas)


# Scales at which HOG (threshold 0) also finds the mission patch on the suit, in a box about
# the face's size: scored 0.32, 0.27, 0.08 and 0.04 at 390, 420, 570 and 630 px; at 430, 490
# and 590 px its box is the larger (88 px against 73 at 430) and the face the surer.
PATCH_SCALES = [390, 420, 430, 490, 570, 590, 630]


@pytest.mark.parametrize("side", PATCH_SCALES)
def test_the_suits_patch_is_not_a_second_face(models: FaceModels, side: int) -> None:
    image = astronaut_on_canvas(side)
    found = find_faces(models.detector, decode(image, FaceRules().detect_side))
    assert len(found) == 2  # the face and the patch, of comparable sizes
    check = check_selfie(models, image, FaceRules())
    assert (check.verdict, check.faces) == (SelfieVerdict.OK, 1)
    face, patch = sorted(found, key=lambda found_face: found_face.score, reverse=True)
    assert face.score > 1 > 0.5 > patch.score
    assert check.face_px == face.short_side_px


def test_the_cnn_confirms_every_face_of_the_group_photo_and_not_the_patch(
    models: FaceModels,
) -> None:
    """Measured: the CNN finds a face in the crop around each of t1.jpg's four faces HOG finds
    at 640 px (HOG scores 0.59, 0.51, 0.36, 0.02; the CNN's confidence 1.01-1.08), and none in
    the crop around the patch."""
    group = decode(insightface_image("t1.jpg").read_bytes(), 640)
    faces = find_faces(models.detector, group)
    assert len(faces) == 4 and min(face.score for face in faces) < 0.1
    assert all(confirmed(models.confirmer, group, face) for face in faces)
    selfie = decode(astronaut_on_canvas(390), 640)
    face, patch = find_faces(models.detector, selfie)
    assert patch.score > 0.3  # higher than the least of t1.jpg's real faces
    assert confirmed(models.confirmer, selfie, face)
    assert not confirmed(models.confirmer, selfie, patch)


def side_by_side(first: Image.Image, second: Image.Image) -> bytes:
    canvas = Image.new("RGB", (first.width + second.width, max(first.height, second.height)))
    canvas.paste(first, (0, 0))
    canvas.paste(second, (first.width, 0))
    return jpeg(canvas)


@pytest.mark.parametrize("pair", ["two t1 faces", "the astronaut twice"])
async def test_two_real_faces_of_one_size_are_several(toolkit: FaceToolkit, pair: str) -> None:
    if pair == "two t1 faces":
        image = side_by_side(t1_face(0), t1_face(1).resize(t1_face(0).size))
    else:
        image = side_by_side(astronaut(), astronaut())
    check = await toolkit.check_selfie(image)
    assert (check.verdict, check.faces) == (SelfieVerdict.SEVERAL, 2)


def _face(side: int, score: float) -> Face:
    return Face(box=None, width_px=side, height_px=side, score=score)


def test_confirmation_is_bounded_and_stops_at_the_first_confirmed() -> None:
    """The choice of faces to confirm, on Face records: what each confirmation finds is the
    CNN's business (tested above), how many are asked is this one's."""
    subject, *rivals = [_face(100, 1.5)] + [_face(90 - n, 0.1 * n) for n in range(6)]
    asked: list[Face] = []

    def nothing(face: Face) -> bool:
        asked.append(face)
        return False

    assert faces_that_count([subject, *rivals], FaceRules(), nothing) == [subject]
    assert asked == rivals[:MAX_CONFIRMATIONS]
    asked.clear()

    def the_second(face: Face) -> bool:
        asked.append(face)
        return face is rivals[1]

    assert faces_that_count([subject, *rivals], FaceRules(), the_second) == [subject, rivals[1]]
    assert asked == rivals[:2]


def test_the_surest_of_faces_of_comparable_size_is_the_subject() -> None:
    larger, surer, small = _face(88, 0.16), _face(73, 1.21), _face(40, 2.0)
    asked: list[Face] = []

    def nothing(face: Face) -> bool:
        asked.append(face)
        return False

    assert faces_that_count([larger, surer, small], FaceRules(), nothing) == [surer]
    assert asked == [larger]  # `small` is dominated by the larger: never asked about
    assert faces_that_count([larger, surer], FaceRules(), lambda face: True) == [larger, surer]
    # The gate embeds the same face of the selfie and of each output: the surest, not the largest.
    assert subject_of([larger, surer, small], FaceRules()) is surer
    dominant = _face(200, 0.1)  # 200² ≥ 2 × 90²: the other face does not count
    assert subject_of([dominant, _face(90, 3.0)], FaceRules()) is dominant
    assert subject_of([], FaceRules()) is None


async def _check(rules: FaceRules, image: bytes) -> SelfieCheck:
    kit = FaceToolkit(rules)
    try:
        return await kit.check_selfie(image)
    finally:
        await kit.aclose()


# The identity measure.


def test_the_packaged_faces_give_no_false_accept_and_no_false_reject_at_0_6(
    models: FaceModels,
) -> None:
    """Measured at dlib's 0.6 (dlib 20.0.1, face-recognition-models 0.3.0): 8 identities (the
    astronaut, Tom Hanks, the 6 faces of t1.jpg), each against 7 variants of itself (56 genuine
    pairs: mirrored, re-cropped, JPEG q=30, brightness ×0.6 and ×1.4, contrast ×1.5 and ×0.6),
    and 28 impostor pairs (every two identities). 0 false rejects: the genuine distances are
    0.05–0.28. 0 false accepts: the impostor distances are 0.64–0.90, the closest two faces of
    t1.jpg at 0.637."""
    errors = measure(models, FaceRules())
    assert (len(errors.genuine), len(errors.impostor)) == (56, 28)
    assert errors.false_rejects == []
    assert errors.false_accepts == []
    genuine = [pair.distance for pair in errors.genuine if pair.distance is not None]
    impostor = [pair.distance for pair in errors.impostor if pair.distance is not None]
    assert max(genuine) < 0.35 and min(impostor) > 0.6


async def test_the_same_person_passes_and_another_fails(toolkit: FaceToolkit) -> None:
    selfie = EXAMPLE_SELFIE.read_bytes()
    mirrored = png(ImageOps.mirror(astronaut()))
    stranger = insightface_image("Tom_Hanks_54745.png").read_bytes()
    same, other = await toolkit.compare(selfie, [mirrored, stranger])
    assert same.passed is True and same.distance is not None and same.distance < 0.3
    assert other.passed is False and other.distance is not None and other.distance > 0.6
    assert same.seconds > 0 and other.seconds > 0


@pytest.mark.parametrize("size", [(512, 768), (1024, 1024)])
async def test_the_simulators_outputs_of_the_selfie_pass(
    toolkit: FaceToolkit, size: tuple[int, int]
) -> None:
    selfie = EXAMPLE_SELFIE.read_bytes()
    width, height = size
    outputs = [
        make_images(
            selfie,
            operation=operation,
            width=width,
            height=height,
            seed=7,
            count=1,
            image_format="jpeg",
        )[0]
        for operation in ("headshot", "flux_headshot")
    ]
    for score in await toolkit.compare(selfie, outputs):
        assert score.passed is True and score.distance is not None and score.distance < 0.2


async def test_an_output_without_a_face_fails_with_no_distance(toolkit: FaceToolkit) -> None:
    (score,) = await toolkit.compare(EXAMPLE_SELFIE.read_bytes(), [jpeg(gradient())])
    assert (score.distance, score.passed) == (None, False)


async def test_a_selfie_without_a_face_leaves_nothing_to_judge(toolkit: FaceToolkit) -> None:
    outputs = [EXAMPLE_SELFIE.read_bytes(), jpeg(gradient())]
    scores = await toolkit.compare(jpeg(gradient()), outputs)
    assert [(s.distance, s.passed) for s in scores] == [(None, None), (None, None)]


async def test_the_threshold_decides(toolkit: FaceToolkit) -> None:
    selfie = EXAMPLE_SELFIE.read_bytes()
    mirrored = png(ImageOps.mirror(astronaut()))
    (measured,) = await toolkit.compare(selfie, [mirrored])
    assert measured.distance is not None
    strict = FaceToolkit(FaceRules(threshold=measured.distance - 0.01))
    try:
        (score,) = await strict.compare(selfie, [mirrored])
    finally:
        await strict.aclose()
    assert score.passed is False and score.distance == pytest.approx(measured.distance)


# Threads, models and bounds.


async def test_the_event_loop_stays_free_while_faces_are_compared() -> None:
    kit = FaceToolkit(FaceRules(), workers=2)
    await kit.start()
    selfie = EXAMPLE_SELFIE.read_bytes()
    outputs = make_images(
        selfie, operation="headshot", width=1024, height=1024, seed=1, count=4, image_format="jpeg"
    )
    gaps: list[float] = []

    ticking = asyncio.create_task(record_loop_gaps(gaps))
    try:
        started = time.perf_counter()
        scores = await kit.compare(selfie, outputs)
        busy = time.perf_counter() - started
    finally:
        ticking.cancel()
        await kit.aclose()
    assert all(score.passed for score in scores)
    assert busy > 0.2  # long enough for the ticker to have had something to wait behind
    assert len(gaps) > 20
    assert max(gaps) < 0.05


@pytest.mark.parametrize("noticed", [False, True], ids=["during the call", "before the call"])
async def test_a_dead_worker_fails_its_call_and_the_next_call_gets_a_new_one(
    noticed: bool,
) -> None:
    """Whether the pool notices the death while the call waits, or before it is made (then it
    refuses the call itself): the call fails with one reason, and the next gets a new worker."""
    kit = FaceToolkit(FaceRules())
    await kit.start()
    try:
        pid = await kit._run(os.getpid, first=True)
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        if noticed:
            async with asyncio.timeout(10):
                while not kit._pool._broken:  # type: ignore[attr-defined]
                    await asyncio.sleep(0.01)
        with pytest.raises(FaceCheckFailed, match="died"):
            await kit.check_selfie(EXAMPLE_SELFIE.read_bytes())
        check = await kit.check_selfie(EXAMPLE_SELFIE.read_bytes())
        assert check.verdict is SelfieVerdict.OK
        assert await kit._run(os.getpid, first=True) != pid
    finally:
        await kit.aclose()


async def test_a_call_past_its_time_limit_has_its_worker_killed_and_replaced() -> None:
    kit = FaceToolkit(FaceRules(), time_limit=1.0)
    await kit.start()
    try:
        pid = await kit._run(os.getpid, first=True)
        started = time.perf_counter()
        with pytest.raises(FaceCheckFailed, match="ran past 1 s"):
            await kit._run(time.sleep, 30, first=False)  # stuck, as in native code
        assert time.perf_counter() - started < 10
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _alive(pid)
        check = await kit.check_selfie(EXAMPLE_SELFIE.read_bytes())
        assert check.verdict is SelfieVerdict.OK
    finally:
        await kit.aclose()


async def test_intake_checks_past_the_waiting_bound_are_refused_but_the_gate_waits() -> None:
    # Before any check is timed, each counts 0.2 s: the third would wait 0.4 s.
    kit = FaceToolkit(FaceRules(), max_wait=0.3)
    await kit.start()
    selfie = EXAMPLE_SELFIE.read_bytes()
    try:
        answers = await asyncio.gather(
            *(kit.check_selfie(selfie) for _ in range(4)),
            kit.compare(selfie, [selfie]),
            return_exceptions=True,
        )
        checks, (scores,) = answers[:4], answers[4:]
        assert [type(a).__name__ for a in checks] == [
            "SelfieCheck",
            "SelfieCheck",
            "FacesBusy",
            "FacesBusy",
        ]
        assert isinstance(scores, list) and scores[0].passed
        assert (await kit.check_selfie(selfie)).verdict is SelfieVerdict.OK  # bound released
    finally:
        await kit.aclose()


async def test_a_free_worker_goes_to_the_gate_before_waiting_intake_checks() -> None:
    kit = FaceToolkit(FaceRules())
    await kit.start()
    selfie = EXAMPLE_SELFIE.read_bytes()
    done: list[str] = []

    async def record(name: str, call: Awaitable[object]) -> None:
        await call
        done.append(name)

    try:
        busy = asyncio.create_task(kit._run(time.sleep, 0.5, first=False))
        await asyncio.sleep(0.05)  # the only worker is taken
        intake = [
            asyncio.create_task(record(f"intake {n}", kit.check_selfie(selfie))) for n in (1, 2)
        ]
        await asyncio.sleep(0.05)
        gate = asyncio.create_task(record("gate", kit.compare(selfie, [selfie])))
        await asyncio.gather(busy, *intake, gate)
        assert done == ["gate", "intake 1", "intake 2"]
    finally:
        await kit.aclose()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child not yet reaped by its executor is a zombie: dead all the same.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def test_missing_or_damaged_models_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FaceModelsMissing, match="FACE_CHECK=0") as missing:
        load_models(tmp_path)
    assert "\n" not in str(missing.value) and "pip install" in str(missing.value)
    for name in (LANDMARKS_FILE, EMBEDDER_FILE):
        (tmp_path / name).symlink_to(models_folder() / name)
    with pytest.raises(FaceModelsMissing, match=CNN_DETECTOR_FILE):
        load_models(tmp_path)
    (tmp_path / CNN_DETECTOR_FILE).write_bytes(b"not a dlib model")
    with pytest.raises(FaceModelsMissing, match="IDENTITY_GATE=0"):
        load_models(tmp_path)


def test_decoding_is_bounded_and_sized_for_detection() -> None:
    photo = Image.new("RGB", (4000, 3000), (90, 90, 90))
    picture = decode(jpeg(photo), 640)
    assert picture.pixels.shape == (480, 640, 3)
    assert picture.scale == pytest.approx(4000 / 640)
    small = decode(png(Image.new("RGB", (112, 112))), 640)
    assert small.pixels.shape == (640, 640, 3)
    huge = io.BytesIO()
    Image.new("1", (8000, 7000)).save(huge, "PNG")  # 56 MP in a few kB
    with pytest.raises(UnreadableImage, match="over 50 MP"):
        decode(huge.getvalue(), 640)
    with pytest.raises(UnreadableImage):
        decode(b"GIF89a not an image we take", 640)
