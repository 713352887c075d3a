"""The model folders the local backend loads, where they come from, and their licences.

Every component lives in its own folder under `LOCAL_MODELS_DIR` (one sub-folder each, named
below), or wherever `LOCAL_MODEL_<NAME>` points. Nothing is ever fetched at run time: a missing
folder stops the worker with one line naming the folder and the command that downloads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backends.errors import BackendError
from backends.params import Operation


@dataclass(frozen=True)
class Component:
    name: str
    repo_id: str
    licence: str
    operations: tuple[Operation, ...]
    # Which files of the hub repository to fetch (huggingface_hub allow_patterns).
    allow_patterns: tuple[str, ...] = ("*",)
    non_commercial: bool = False

    @property
    def setting(self) -> str:
        """The environment variable that points this component elsewhere."""
        return f"LOCAL_MODEL_{self.name.upper()}"


_FACE_ID = (Operation.HEADSHOT, Operation.FACEGEN)
_AVATAR = (Operation.AVATAR,)
_FLUX = (Operation.FLUX_HEADSHOT,)
FACE_PACKS = ("buffalo_l", "antelopev2")

COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            "sd15",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "CreativeML OpenRAIL-M",
            _FACE_ID,
            allow_patterns=(
                "model_index.json",
                "scheduler/*",
                "text_encoder/config.json",
                "text_encoder/model.fp16.safetensors",
                "tokenizer/*",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
            ),
        ),
        # The VAE IP-Adapter-FaceID's model card uses: SD1.5's own, fine-tuned for sharper faces.
        Component(
            "sd15_vae",
            "stabilityai/sd-vae-ft-mse",
            "MIT",
            _FACE_ID,
            allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        Component(
            "ip_adapter_faceid",
            "h94/IP-Adapter-FaceID",
            "non-commercial research use only (IP-Adapter-FaceID model card)",
            _FACE_ID,
            allow_patterns=("ip-adapter-faceid-plusv2_sd15.bin",),
            non_commercial=True,
        ),
        Component(
            "clip_image_encoder",
            "h94/IP-Adapter",
            "Apache-2.0",
            _FACE_ID,
            allow_patterns=("models/image_encoder/*",),
        ),
        # insightface's face-model packs, one per method: each was trained on one recogniser's
        # embeddings (IP-Adapter-FaceID on buffalo_l's w600k_r50, InstantID on antelopev2's
        # glintr100). flux_headshot only needs a face found: buffalo_l's detector does it.
        Component(
            "buffalo_l",
            # A mirror of insightface's own release, with its file names (its card states no
            # licence of its own: insightface's applies).
            "public-data/insightface",
            "non-commercial research use only (insightface model licence)",
            (*_FACE_ID, *_FLUX),
            allow_patterns=("models/buffalo_l/det_10g.onnx", "models/buffalo_l/w600k_r50.onnx"),
            non_commercial=True,
        ),
        Component(
            "antelopev2",
            "DIAMONIK7777/antelopev2",
            "non-commercial research use only (insightface model licence)",
            _AVATAR,
            allow_patterns=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            non_commercial=True,
        ),
        Component(
            "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "CreativeML Open RAIL++-M",
            _AVATAR,
            allow_patterns=(
                "model_index.json",
                "scheduler/*",
                "text_encoder/config.json",
                "text_encoder/model.fp16.safetensors",
                "text_encoder_2/config.json",
                "text_encoder_2/model.fp16.safetensors",
                "tokenizer/*",
                "tokenizer_2/*",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ),
        ),
        Component(
            "instantid",
            "InstantX/InstantID",
            "Apache-2.0 (it needs insightface's antelopev2 models, which are non-commercial)",
            _AVATAR,
            allow_patterns=("ip-adapter.bin", "ControlNetModel/*"),
        ),
        Component(
            "controlnet_pose",
            "thibaud/controlnet-openpose-sdxl-1.0",
            "other (see the model card)",
            _AVATAR,
            allow_patterns=("config.json", "OpenPoseXL2.safetensors"),
        ),
        Component(
            "controlnet_canny",
            "diffusers/controlnet-canny-sdxl-1.0",
            "CreativeML Open RAIL++-M",
            _AVATAR,
            allow_patterns=("config.json", "diffusion_pytorch_model.fp16.safetensors"),
        ),
        Component(
            "flux_kontext",
            "black-forest-labs/FLUX.1-Kontext-dev",
            "FLUX.1 [dev] Non-Commercial License (gated: accept it on the model page first)",
            _FLUX,
            allow_patterns=(
                "model_index.json",
                "scheduler/*",
                "text_encoder/*",
                "text_encoder_2/*",
                "tokenizer/*",
                "tokenizer_2/*",
                "transformer/*",
                "vae/*",
            ),
            non_commercial=True,
        ),
    )
}


def components_for(operations: Iterable[Operation]) -> list[Component]:
    wanted = set(operations)
    return [c for c in COMPONENTS.values() if wanted.intersection(c.operations)]


def face_pack(operation: Operation) -> str:
    """The insightface face-model pack `operation`'s method was trained with."""
    return next(c.name for c in components_for([operation]) if c.name in FACE_PACKS)


# `models download` writes this into a folder before fetching it and removes it once the
# folder is complete, so that an interrupted download is not taken for a model.
DOWNLOAD_MARKER = ".download-unfinished"


class MissingComponent(BackendError):
    """A model folder is absent, empty or half-downloaded. The message names it and the
    download command."""

    def __init__(
        self,
        component: Component,
        folder: Path,
        operation: Operation | None = None,
        *,
        unfinished: bool = False,
    ) -> None:
        op = operation or component.operations[0]
        what = "unfinished download in model folder" if unfinished else "missing model folder"
        super().__init__(
            f"{what} {folder} ({component.name}, for {op}): "
            f"run `headshot-bot models download --op {op}` or set {component.setting}"
        )
        self.component = component
        self.folder = folder


@dataclass(frozen=True)
class ModelPaths:
    """Where each component's folder is: `root/<name>` unless overridden."""

    root: Path
    overrides: Mapping[str, Path] = field(default_factory=dict)

    def folder(self, name: str) -> Path:
        overridden = self.overrides.get(name)
        return overridden if overridden is not None else self.root / name

    def present(self, name: str) -> bool:
        folder = self.folder(name)
        return folder.is_dir() and any(folder.iterdir()) and not self.unfinished(name)

    def unfinished(self, name: str) -> bool:
        """A download into this folder started and did not complete."""
        return (self.folder(name) / DOWNLOAD_MARKER).exists()

    def require(self, name: str) -> Path:
        """The component's folder; MissingComponent when it is absent, empty or unfinished."""
        if not self.present(name):
            raise self._missing(COMPONENTS[name])
        return self.folder(name)

    def missing(
        self, operations: Iterable[Operation], *, face_analyser: str = "insightface"
    ) -> list[MissingComponent]:
        """What the operations need and is not there. Another face analyser than insightface
        ("module:Class") brings its own models, so the face-pack folders are not needed."""
        wanted = list(operations)
        return [
            self._missing(c, next(o for o in wanted if o in c.operations))
            for c in components_for(wanted)
            if not self.present(c.name)
            and not (c.name in FACE_PACKS and face_analyser != "insightface")
        ]

    def _missing(
        self, component: Component, operation: Operation | None = None
    ) -> MissingComponent:
        return MissingComponent(
            component,
            self.folder(component.name),
            operation,
            unfinished=self.unfinished(component.name),
        )
