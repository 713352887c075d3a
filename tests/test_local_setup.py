"""Choosing the generator (BACKEND, FALLBACK_BACKEND), the model folders and `models` commands.

None of this needs torch: the core chooses and reports without importing it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from backends.fallback import FallbackBackend
from backends.local.backend import LocalBackend
from backends.local.components import (
    COMPONENTS,
    FACE_PACKS,
    MissingComponent,
    ModelPaths,
    face_pack,
)
from backends.local.download import DownloadIncomplete, download, status
from backends.modelslab import ModelsLabClient
from backends.params import Operation
from bot.backends import choose_backend
from bot.config import ConfigError, load_settings
from bot.fleet.pools import EVERY_OPERATION, pools_of
from storage.dispatch import Pool
from tests.conftest import TEST_KEY
from tests.test_cli import headshot_bot


def fill(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "weights.bin").write_bytes(b"x")


BUFFALO_L_FILES = ("models/buffalo_l/det_10g.onnx", "models/buffalo_l/w600k_r50.onnx")
FACE_ID = ("sd15", "sd15_vae", "ip_adapter_faceid", "clip_image_encoder", "buffalo_l")


def hub_files(repo: str, patterns: tuple[str, ...], folder: Path) -> None:
    """What snapshot_download leaves behind: a file for each pattern asked for."""
    for pattern in patterns:
        path = folder / pattern.replace("*", "weights")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_every_component_has_a_setting_to_move_it() -> None:
    settings = load_settings(
        **{c.setting.lower(): f"/elsewhere/{c.name}" for c in COMPONENTS.values()}
    )
    assert settings.local_model_overrides == {
        name: Path(f"/elsewhere/{name}") for name in COMPONENTS
    }


def test_a_missing_component_names_its_folder_and_the_download_command(tmp_path: Path) -> None:
    paths = ModelPaths(tmp_path, {"sd15": tmp_path / "mine"})
    with pytest.raises(MissingComponent) as caught:
        paths.require("sd15")
    assert caught.value.message == (
        f"missing model folder {tmp_path / 'mine'} (sd15, for headshot): "
        "run `headshot-bot models download --op headshot` or set LOCAL_MODEL_SD15"
    )
    (tmp_path / "flux_kontext").mkdir()  # an empty folder is as good as none
    fill(tmp_path, "buffalo_l")
    (missing,) = paths.missing([Operation.FLUX_HEADSHOT])
    assert (
        "--op flux_headshot" in missing.message
        and str(tmp_path / "flux_kontext") in missing.message
    )


def test_auto_with_nothing_to_run_refuses_in_one_line(tmp_path: Path) -> None:
    settings = load_settings(local_models_dir=tmp_path, backend="auto")
    with pytest.raises(ConfigError) as caught:
        choose_backend(settings)
    assert str(caught.value).startswith("invalid setting BACKEND: auto found neither a GPU")
    assert "MODELSLAB_API_KEY" in str(caught.value) and "\n" not in str(caught.value)


async def test_auto_takes_modelslab_when_the_models_are_missing(tmp_path: Path) -> None:
    settings = load_settings(local_models_dir=tmp_path, modelslab_api_key=TEST_KEY)
    backend = choose_backend(settings)
    assert isinstance(backend, ModelsLabClient)
    assert await pools_of(backend, settings) == [Pool(None, settings.modelslab_max_queued)]


def test_auto_takes_modelslab_when_no_gpu_is_visible(tmp_path: Path) -> None:
    # Every folder is there, but this machine has no GPU (the CI machine has none either).
    fill(tmp_path, *COMPONENTS)
    settings = load_settings(local_models_dir=tmp_path, modelslab_api_key=TEST_KEY)
    assert isinstance(choose_backend(settings), ModelsLabClient)


def test_local_with_a_missing_folder_refuses_to_start(tmp_path: Path) -> None:
    fill(tmp_path, "sd15", "sd15_vae", "ip_adapter_faceid", "buffalo_l")
    pytest.importorskip("diffusers")
    settings = load_settings(
        local_models_dir=tmp_path, backend="local", local_operations="headshot"
    )
    with pytest.raises(ConfigError) as caught:
        choose_backend(settings)
    assert str(caught.value) == (
        f"invalid setting LOCAL_MODELS_DIR: missing model folder {tmp_path / 'clip_image_encoder'}"
        " (clip_image_encoder, for headshot): run `headshot-bot models download --op headshot`"
        " or set LOCAL_MODEL_CLIP_IMAGE_ENCODER"
    )


async def test_local_with_its_folders_is_a_local_backend_whose_capacity_is_the_dispatchers(
    tmp_path: Path,
) -> None:
    pytest.importorskip("diffusers")
    fill(tmp_path, *FACE_ID)
    settings = load_settings(
        local_models_dir=tmp_path,
        backend="local",
        local_operations="headshot,facegen",
        local_capacity=3,
        fallback_backend="modelslab",
        modelslab_api_key=TEST_KEY,
    )
    backend = choose_backend(settings)
    assert isinstance(backend, FallbackBackend)
    assert isinstance(backend.primary, LocalBackend)
    assert isinstance(backend.secondary, ModelsLabClient)
    # Its operations have its slots; ModelsLab's are for the others.
    served = frozenset({"headshot", "facegen"})
    assert await pools_of(backend, settings) == [
        Pool(served, 3),
        Pool(EVERY_OPERATION - served, settings.modelslab_max_queued),
    ]
    assert backend.primary.config.operations == (Operation.HEADSHOT, Operation.FACEGEN)


def test_a_fallback_must_differ_from_the_backend(tmp_path: Path) -> None:
    settings = load_settings(
        backend="modelslab", fallback_backend="modelslab", modelslab_api_key=TEST_KEY
    )
    with pytest.raises(ConfigError, match="FALLBACK_BACKEND: it is the same as BACKEND"):
        choose_backend(settings)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "LOCAL_OPERATIONS",
            "headshot,selfie",
            "'selfie' is not one of headshot, facegen, avatar, flux_headshot",
        ),
        ("LOCAL_DEVICE", "tpu", "use cuda, cuda:N or cpu"),
        ("BACKEND", "gpu", "Input should be 'auto', 'modelslab' or 'local'"),
    ],
)
def test_bad_local_settings_name_the_variable(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    result = headshot_bot("migrate", cwd=tmp_path, env={name: value})
    assert result.returncode == 2
    assert result.stderr.strip() == f"headshot-bot: invalid setting {name}: {message}"


def test_download_fetches_each_folder_and_prints_its_licence(tmp_path: Path) -> None:
    fetched: list[tuple[str, tuple[str, ...], Path]] = []
    said: list[str] = []
    paths = ModelPaths(tmp_path, {"buffalo_l": tmp_path / "faces"})

    def fetch(repo: str, patterns: tuple[str, ...], folder: Path) -> None:
        fetched.append((repo, patterns, folder))
        hub_files(repo, patterns, folder)

    written = download(paths, [Operation.HEADSHOT], say=said.append, fetch=fetch)

    assert [f[0] for f in fetched] == [
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "stabilityai/sd-vae-ft-mse",
        "h94/IP-Adapter-FaceID",
        "h94/IP-Adapter",
        "public-data/insightface",
    ]
    assert written == [
        tmp_path / "sd15",
        tmp_path / "sd15_vae",
        tmp_path / "ip_adapter_faceid",
        tmp_path / "clip_image_encoder",
        tmp_path / "faces",
    ]
    assert fetched[2][1] == ("ip-adapter-faceid-plusv2_sd15.bin",)
    # FaceID's own face models: buffalo_l's detector and recogniser, nothing else of the pack.
    assert fetched[4][1] == BUFFALO_L_FILES
    licences = [line for line in said if not line.startswith("  ->")]
    assert len(licences) == 5
    assert [("NON-COMMERCIAL" in line) for line in licences] == [False, False, True, False, True]
    assert "CreativeML OpenRAIL-M" in licences[0] and "(licence: MIT)" in licences[1]


@pytest.mark.parametrize(
    ("operation", "pack", "files"),
    [
        (Operation.HEADSHOT, "buffalo_l", BUFFALO_L_FILES),
        (Operation.FACEGEN, "buffalo_l", BUFFALO_L_FILES),
        (Operation.AVATAR, "antelopev2", ("scrfd_10g_bnkps.onnx", "glintr100.onnx")),
        (Operation.FLUX_HEADSHOT, "buffalo_l", BUFFALO_L_FILES),
    ],
)
def test_each_operation_downloads_the_face_pack_its_method_was_trained_with(
    tmp_path: Path, operation: Operation, pack: str, files: tuple[str, ...]
) -> None:
    fetched: dict[str, tuple[str, ...]] = {}

    def fetch(repo: str, patterns: tuple[str, ...], folder: Path) -> None:
        fetched[folder.name] = patterns
        hub_files(repo, patterns, folder)

    download(ModelPaths(tmp_path), [operation], say=lambda _line: None, fetch=fetch)
    assert face_pack(operation) == pack
    assert [name for name in fetched if name in FACE_PACKS] == [pack]
    assert fetched[pack] == files


def test_the_old_single_face_model_setting_is_refused_in_one_line(tmp_path: Path) -> None:
    result = headshot_bot("migrate", cwd=tmp_path, env={"LOCAL_MODEL_INSIGHTFACE": "/models/f"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "headshot-bot: invalid setting LOCAL_MODEL_INSIGHTFACE: each method now loads the face "
        "models it was trained with: set LOCAL_MODEL_BUFFALO_L (headshot, facegen, "
        "flux_headshot) and LOCAL_MODEL_ANTELOPEV2 (avatar) instead"
    )


def test_flux_download_warns_that_flux_dev_is_non_commercial(tmp_path: Path) -> None:
    said: list[str] = []
    download(ModelPaths(tmp_path), [Operation.FLUX_HEADSHOT], say=said.append, fetch=hub_files)
    flux = next(line for line in said if line.startswith("flux_kontext: "))
    assert flux.startswith("flux_kontext: black-forest-labs/FLUX.1-Kontext-dev")
    assert "Non-Commercial" in flux and flux.endswith("NON-COMMERCIAL")


def test_an_interrupted_download_is_not_taken_for_a_model_and_resumes(tmp_path: Path) -> None:
    paths = ModelPaths(tmp_path)

    def cut_off(repo: str, patterns: tuple[str, ...], folder: Path) -> None:
        (folder / "model_index.json").write_text("{}")
        raise KeyboardInterrupt  # the operator pressed Ctrl-C half-way

    with pytest.raises(KeyboardInterrupt):
        download(paths, [Operation.HEADSHOT], say=lambda _line: None, fetch=cut_off)
    assert not paths.present("sd15") and paths.unfinished("sd15")
    with pytest.raises(MissingComponent) as caught:
        paths.require("sd15")
    assert str(caught.value) == (
        f"unfinished download in model folder {tmp_path / 'sd15'} (sd15, for headshot): "
        "run `headshot-bot models download --op headshot` or set LOCAL_MODEL_SD15"
    )
    assert str(paths.missing([Operation.HEADSHOT])[0]) == str(caught.value)
    assert status(paths, [Operation.HEADSHOT])[0].startswith(f"PARTIAL  {tmp_path / 'sd15'}  ")

    # Offline, the hub hands back the folder as it is, without an error: still unfinished.
    with pytest.raises(DownloadIncomplete, match=r"sd15: nothing in .* matches scheduler/\*"):
        download(paths, [Operation.HEADSHOT], say=lambda _line: None, fetch=lambda *a: None)
    assert paths.unfinished("sd15") and not paths.present("sd15")

    download(paths, [Operation.HEADSHOT], say=lambda _line: None, fetch=hub_files)
    assert paths.present("sd15") and not paths.unfinished("sd15")
    assert paths.missing([Operation.HEADSHOT]) == []
    assert paths.require("sd15") == tmp_path / "sd15"


def test_models_list_shows_what_is_present_and_missing(tmp_path: Path) -> None:
    fill(tmp_path / "models", "sd15")
    result = headshot_bot(
        "models", "list", "--op", "facegen", cwd=tmp_path, env={"LOCAL_MODELS_DIR": "models"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("present  models/sd15  sd15: stable-diffusion-v1-5")
    assert lines[1].startswith("MISSING  models/sd15_vae  sd15_vae: stabilityai/sd-vae-ft-mse")
    assert lines[2].startswith("MISSING  models/ip_adapter_faceid  ip_adapter_faceid: h94/")
    assert lines[4].startswith("MISSING  models/buffalo_l  buffalo_l: public-data/insightface")
    assert status(ModelPaths(tmp_path / "models"), [Operation.FACEGEN]) == [
        line.replace("models/", f"{tmp_path}/models/") for line in lines
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"operation": "flux_headshot"}, "this bot's GPU does not serve flux_headshot"),
        ({"width": 500}, "width and height are multiples of 8"),
    ],
)
async def test_what_the_gpu_cannot_make_is_refused_before_the_worker_starts(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    # OperationNotServed, not InvalidRequest: FALLBACK_BACKEND hands these to the other
    # generator, and nothing reaches (or starts) the GPU worker.
    pytest.importorskip("diffusers")
    from backends.base import SubmitRequest
    from backends.errors import InvalidRequest, OperationNotServed
    from backends.params import GenerationParams

    fill(tmp_path, *FACE_ID)
    settings = load_settings(
        local_models_dir=tmp_path, backend="local", local_operations="headshot"
    )
    backend = choose_backend(settings)
    assert isinstance(backend, LocalBackend)
    operation = str(options.pop("operation", "headshot"))
    params = GenerationParams.create(operation, prompt="a headshot", seed=1, **options)
    with pytest.raises(OperationNotServed) as caught:
        await backend.submit(SubmitRequest(params=params, face_image=b"not sent"))
    assert message in caught.value.message
    assert not isinstance(caught.value, InvalidRequest)
    assert backend._process is None


def _app_settings(tmp_path: Path, port: int) -> dict[str, object]:
    fill(tmp_path / "models", *FACE_ID)
    return {
        "local_models_dir": tmp_path / "models",
        "backend": "local",
        "local_operations": "headshot",
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'headshot.db'}",
        "web_host": "127.0.0.1",
        "web_port": port,
    }


async def test_a_taken_port_is_reported_before_the_gpu_loads_its_models(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from bot.app import HeadshotApp

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = HeadshotApp(load_settings(**_app_settings(tmp_path, taken.getsockname()[1])))
        with pytest.raises(ConfigError, match="invalid setting WEB_PORT: cannot listen"):
            await app.start()
    assert isinstance(app.backend, LocalBackend)
    assert app.backend._process is None, "the worker was started for nothing"


async def test_a_worker_that_cannot_load_stops_start_up_and_frees_the_port(
    tmp_path: Path,
) -> None:
    pytest.importorskip("diffusers")
    from bot.app import HeadshotApp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The folders exist but hold no model: the worker fails while loading.
    app = HeadshotApp(load_settings(**_app_settings(tmp_path, port)))
    with pytest.raises(ConfigError, match="the local GPU backend did not start"):
        await app.start()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))  # free again: start-up closed what it had opened
