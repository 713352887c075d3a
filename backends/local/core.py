"""The GPU worker's core, shared by both transports: the child process on a pipe
(`backends.local.worker`, one machine) and the fleet's `headshot-bot gpu-worker` (the cluster's
queue). It loads and warms up the pipelines, then turns one job's parameters and images into
PNG bytes. Importing it loads neither torch nor diffusers: `load()` does.
"""

from __future__ import annotations

import importlib
import io
import logging
import time
from typing import Any

from backends.local.components import face_pack
from backends.local.config import WorkerConfig
from backends.local.faces import FaceAnalyser, InsightFaceAnalyser
from backends.local.pipeline import LocalJob, OperationPipeline, loader_for
from backends.params import GenerationParams, Operation

log = logging.getLogger("headshot_bot.gpu_worker")


class WorkerCore:
    """The resident pipelines of `config.operations`. Operations that share a pipeline
    (headshot and facegen) share one instance."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._pipelines: dict[Operation, OperationPipeline] = {}

    def load(self) -> tuple[Operation, ...]:
        """Load every configured pipeline and warm each up once; the operations served.
        Missing folders are all checked first (raises `MissingComponent`)."""
        config = self.config
        missing = config.models.missing(config.operations, face_analyser=config.face_analyser)
        if missing:
            raise missing[0]
        analysers: dict[str, FaceAnalyser] = {}
        loaded: dict[Any, OperationPipeline] = {}
        pipelines: dict[Operation, OperationPipeline] = {}
        for operation in config.operations:
            # Each method gets the face-model pack it was trained with (operations that share
            # a pipeline share a pack).
            pack = face_pack(operation)
            if pack not in analysers:
                analysers[pack] = face_analyser(config, pack)
            loader = loader_for(operation)
            if loader not in loaded:
                loaded[loader] = loader(config.models, config.runtime, analysers[pack])
            pipelines[operation] = loaded[loader]
        started = time.monotonic()
        for pipeline in dict.fromkeys(pipelines.values()):
            pipeline.warm_up()
        log.info("pipelines loaded and warmed up in %.1f s", time.monotonic() - started)
        self._pipelines = pipelines
        return tuple(pipelines)

    @property
    def operations(self) -> tuple[Operation, ...]:
        """What `load()` made ready (nothing before it)."""
        return tuple(self._pipelines)

    def run(self, params: dict[str, Any], face: bytes, pose: bytes | None) -> list[bytes]:
        """One job, start to finish, as PNG bytes. Raises `InvalidRequest` for a request the
        pipeline cannot serve (no face, an option it lacks)."""
        from PIL import Image

        checked = GenerationParams.from_dict(params)
        pipeline = self._pipelines.get(checked.operation)
        if pipeline is None:
            raise RuntimeError(f"{checked.operation} is not loaded in this worker")
        job = LocalJob(
            params=checked,
            face=Image.open(io.BytesIO(face)).convert("RGB"),
            pose=Image.open(io.BytesIO(pose)).convert("RGB") if pose else None,
        )
        encoded = []
        for image in pipeline.generate(job):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        return encoded

    @staticmethod
    def reason(exc: BaseException) -> str:
        """A failed job's reason in our own words (the traceback goes to the log only)."""
        if "out of memory" in str(exc).lower():
            return "the GPU ran out of memory"
        return f"the GPU worker failed ({type(exc).__name__})"


def quiet_libraries() -> None:
    """diffusers and transformers warn with pieces of users' prompts (truncation notices)."""
    for library in ("diffusers", "transformers"):
        logging.getLogger(library).setLevel(logging.ERROR)


def face_analyser(config: WorkerConfig, pack: str) -> FaceAnalyser:
    """The analyser of one face-model pack: insightface's from the pack's folder, or the
    configured `module:Factory` called with the pack's name."""
    if config.face_analyser == "insightface":
        folder = config.models.require(pack)
        return InsightFaceAnalyser(folder, use_gpu=config.runtime.on_gpu)
    module, _, name = config.face_analyser.partition(":")
    return getattr(importlib.import_module(module), name)(pack)  # type: ignore[no-any-return]
