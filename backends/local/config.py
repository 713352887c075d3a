"""What the GPU worker process is started with: plain data, light to import (the bot's process
imports this, never torch or numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backends.local.components import ModelPaths
from backends.local.runtime import Runtime
from backends.params import Operation


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker process needs; plain data, so that it crosses a process spawn."""

    models_root: Path
    operations: tuple[Operation, ...]
    runtime: Runtime
    overrides: dict[str, Path] = field(default_factory=dict)
    # "insightface", or "package.module:Factory" for another analyser (the tests' stand-in),
    # called with the name of the face-model pack it stands for (buffalo_l, antelopev2).
    face_analyser: str = "insightface"

    @property
    def models(self) -> ModelPaths:
        return ModelPaths(self.models_root, self.overrides)
