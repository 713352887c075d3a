"""The face toolkit's cost and errors: the intake check and the identity gate, on dlib's real
models on the CPU, at the sizes they run on in the bot.

    .venv/bin/python bench/identity.py              # 30 runs
    .venv/bin/python bench/identity.py --runs 100

Inputs:

* the selfie: a 12 MP phone photo (4032×3024 JPEG, the example selfie upscaled onto a
  backdrop) sanitised as the bot does it (`bot.images.sanitise_selfie`, long side 1536);
* the outputs: the simulator's renderings of the example selfie (`make_images`), a headshot at
  512×768 and a FLUX headshot at 1024², as JPEG.

Figures, p50 / p99 / max in ms over --runs runs (with 30 runs, p99 is the slowest):

1. intake check: `FaceToolkit.check_selfie` on the sanitised selfie, as the caller waits for
   it (the hop to the worker process included), and the work inside the worker. On this
   photo HOG also finds the mission patch on the suit, beside the face and of its size, so the
   check includes one confirmation by the CNN detector (which finds no face there). Beside it,
   inside the worker: the example selfie as it is (one face found: no confirmation) and on a
   640 px canvas at 390 px (the patch again: one confirmation), so the confirmation's cost
   shows;
2. output check: each output's `IdentityScore.seconds` (decode, detect, embed, compare, inside
   the worker), per size; and one `compare()` call with both outputs as the caller waits for it
   (the selfie's embedding, once per call, and the hop included);
3. the event loop's largest gap (a 2 ms ticker) while the toolkit worked;
4. false accepts and false rejects at the threshold on the packaged test faces
   (`tests/face_set.py`, the set `tests/test_faces.py` asserts).

The acknowledgement p99 with the check and the gate on and off is `bench/discord_ack.py
--faces both`'s to measure, in one run; this one says so.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import platform
import sys
import time
from pathlib import Path

from PIL import Image

# `python bench/identity.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.modelslab.simulated_images import make_images
from bot.faces import FaceRules, FaceToolkit
from bot.faces.models import CNN_DETECTOR_FILE, EMBEDDER_FILE, LANDMARKS_FILE, load_models
from bot.faces.verdict import MAX_CONFIRMATIONS
from bot.images import sanitise_selfie
from tests.conftest import EXAMPLE_SELFIE
from tests.face_set import measure, record_loop_gaps

PHONE_PHOTO = (4032, 3024)
OUTPUTS = {"512x768": ("headshot", 512, 768), "1024x1024": ("flux_headshot", 1024, 1024)}


def phone_photo() -> bytes:
    """The example selfie upscaled (face about 480 px) onto a 12 MP backdrop, as a phone's
    JPEG."""
    selfie = Image.open(EXAMPLE_SELFIE).convert("RGB")
    width, height = PHONE_PHOTO
    backdrop = Image.linear_gradient("L").resize(PHONE_PHOTO).convert("RGB")
    side = height * 4 // 5
    backdrop.paste(selfie.resize((side, side), Image.Resampling.BICUBIC), ((width - side) // 2, 0))
    out = io.BytesIO()
    backdrop.save(out, "JPEG", quality=92)
    return out.getvalue()


def patched_selfie() -> bytes:
    """The example selfie at 390 px on a 640 px canvas: HOG finds the suit's patch too."""
    canvas = Image.new("RGB", (640, 640), (128, 128, 128))
    canvas.paste(Image.open(EXAMPLE_SELFIE).convert("RGB").resize((390, 390)), (0, 0))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=92)
    return out.getvalue()


def outputs(selfie: bytes) -> dict[str, bytes]:
    return {
        size: make_images(
            selfie,
            operation=operation,
            width=width,
            height=height,
            seed=1,
            count=1,
            image_format="jpeg",
        )[0]
        for size, (operation, width, height) in OUTPUTS.items()
    }


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000

    return f"p50 {at(50):6.1f}  p99 {at(99):6.1f}  max {ordered[-1] * 1000:6.1f} ms"


async def timings(runs: int, rules: FaceRules) -> None:
    photo = phone_photo()
    sanitised = sanitise_selfie(photo)
    made = outputs(EXAMPLE_SELFIE.read_bytes())
    print(
        f"selfie: {PHONE_PHOTO[0]}×{PHONE_PHOTO[1]} JPEG ({len(photo) / 1e6:.1f} MB), "
        f"sanitised to {sanitised.width}×{sanitised.height} ({len(sanitised.data) / 1e3:.0f} kB)"
    )
    kit = FaceToolkit(rules)
    started = time.perf_counter()
    await kit.start()
    loaded = time.perf_counter() - started
    print(f"toolkit start (a worker process, its models loaded): {loaded:.2f} s")

    gaps: list[float] = []

    intake_wall, intake_work, compare_wall = [], [], []
    plain_selfie, patched = EXAMPLE_SELFIE.read_bytes(), patched_selfie()
    plain_work: list[float] = []
    patched_work: list[float] = []
    per_output: dict[str, list[float]] = {size: [] for size in made}
    distances: dict[str, float | None] = {}
    ticking = asyncio.create_task(record_loop_gaps(gaps))
    try:
        for _ in range(runs):
            started = time.perf_counter()
            check = await kit.check_selfie(sanitised.data)
            intake_wall.append(time.perf_counter() - started)
            intake_work.append(check.seconds)
            plain = await kit.check_selfie(plain_selfie)
            plain_work.append(plain.seconds)
            confirmed = await kit.check_selfie(patched)
            patched_work.append(confirmed.seconds)
            started = time.perf_counter()
            scores = await kit.compare(sanitised.data, list(made.values()))
            compare_wall.append(time.perf_counter() - started)
            for size, score in zip(made, scores, strict=True):
                per_output[size].append(score.seconds)
                distances[size] = score.distance
    finally:
        ticking.cancel()
        await kit.aclose()

    print(f"intake check: {check.verdict}, face {check.face_px} px (runs: {runs})")
    print(f"  as awaited        {percentiles(intake_wall)}")
    print(f"  in the worker     {percentiles(intake_work)}")
    print(
        f"  example selfie, 384² (no confirmation: {plain.verdict}, {plain.faces} face)\n"
        f"    in the worker   {percentiles(plain_work)}"
    )
    print(
        f"  example selfie at 390 px on a 640² canvas (one CNN confirmation: "
        f"{confirmed.verdict}, {confirmed.faces} face)\n"
        f"    in the worker   {percentiles(patched_work)}"
    )
    for size, seconds in per_output.items():
        distance = distances[size]
        shown = "no face" if distance is None else f"{distance:.3f}"
        print(f"output check {size:>9} (distance {shown})  {percentiles(seconds)}")
    print(f"compare(), both outputs, as awaited  {percentiles(compare_wall)}")
    print(f"event loop's largest gap (2 ms ticker): {max(gaps) * 1000:.1f} ms")


def errors(rules: FaceRules) -> None:
    measured = measure(load_models(), rules)
    genuine = [p.distance for p in measured.genuine if p.distance is not None]
    impostor = [p.distance for p in measured.impostor if p.distance is not None]
    print(
        f"test faces at threshold {rules.threshold}: "
        f"{len(measured.false_rejects)} false rejects of {len(measured.genuine)} genuine pairs "
        f"(distances {min(genuine):.3f}–{max(genuine):.3f}), "
        f"{len(measured.false_accepts)} false accepts of {len(measured.impostor)} impostor pairs "
        f"(distances {min(impostor):.3f}–{max(impostor):.3f})"
    )
    for pair in [*measured.false_rejects, *measured.false_accepts]:
        print(f"  {pair.first} vs {pair.second}: {pair.distance}")


def acknowledgement() -> None:
    print(
        "acknowledgement p99, check and gate on and off, in one run: measured by "
        "`.venv/bin/python bench/discord_ack.py --faces both`"
    )


def models_and_rules(rules: FaceRules) -> None:
    print(
        "models: dlib HOG detector (upsample 0, then 1 if nothing; threshold 0), "
        f"{CNN_DETECTOR_FILE} (confirms a second face, at most {MAX_CONFIRMATIONS} per selfie), "
        f"{LANDMARKS_FILE}, {EMBEDDER_FILE}"
    )
    print(
        f"rules: detect at {rules.detect_side} px long side, dominance {rules.dominance:g}, "
        f"min face {rules.min_face_px} px, threshold {rules.threshold:g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=FaceRules().threshold)
    args = parser.parse_args()
    rules = FaceRules(threshold=args.threshold)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    models_and_rules(rules)
    asyncio.run(timings(args.runs, rules))
    errors(rules)
    acknowledgement()


if __name__ == "__main__":
    main()
