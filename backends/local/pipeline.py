"""What the GPU worker asks of each operation's pipeline, and which module serves which one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from backends.local.components import ModelPaths
from backends.local.faces import FaceAnalyser
from backends.local.runtime import Runtime
from backends.params import GenerationParams, Operation


@dataclass(frozen=True)
class LocalJob:
    """One generation: checked parameters (seed always set) and the decoded images."""

    params: GenerationParams
    face: Image.Image
    pose: Image.Image | None = None

    @property
    def seed(self) -> int:
        assert self.params.seed is not None, "the backend picks a seed before the worker runs"
        return self.params.seed


class OperationPipeline(Protocol):
    """One resident pipeline. `arguments` is everything a run depends on (the diffusers call's
    keyword arguments plus module-level settings such as adapter scales), so that tests can see
    each ModelsLab knob reach its pipeline argument; `generate` makes the job's images, one
    denoising pass each, image i with seed + i (`runtime.one_pass_per_image`)."""

    operations: tuple[Operation, ...]

    def arguments(self, job: LocalJob) -> dict[str, Any]: ...

    def generate(self, job: LocalJob) -> list[Image.Image]: ...

    def warm_up(self) -> None: ...


class PipelineLoader(Protocol):
    def __call__(
        self, models: ModelPaths, runtime: Runtime, faces: FaceAnalyser
    ) -> OperationPipeline: ...


# Operation -> "module:function" that loads its pipeline (imported only in the worker).
LOADERS: dict[Operation, str] = {
    Operation.HEADSHOT: "backends.local.headshot:load",
    Operation.FACEGEN: "backends.local.headshot:load",
    Operation.AVATAR: "backends.local.avatar:load",
    Operation.FLUX_HEADSHOT: "backends.local.flux:load",
}


def loader_for(operation: Operation) -> PipelineLoader:
    module, _, name = LOADERS[operation].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
