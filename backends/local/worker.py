"""The GPU worker: one process that owns the GPU, keeps the pipelines resident and runs one job
at a time. The bot talks to it over a pipe (`backends.local.backend.LocalBackend`).

Messages to the worker: ("job", job_id, params dict, face bytes, pose bytes or None), ("stop",).
Messages from it: ("ready", operations), ("failed", reason) at start, then per job
("done", job_id, [PNG bytes], seconds), ("refused", job_id, reason) for a request the pipeline
cannot serve (no face, an unsupported option), ("error", job_id, reason) for anything else.
Reasons are our own words: tracebacks go to the worker's log only.
"""

from __future__ import annotations

import importlib
import io
import logging
import queue
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from backends.errors import InvalidRequest
from backends.local.components import MissingComponent
from backends.local.config import WorkerConfig
from backends.local.faces import FaceAnalyser, InsightFaceAnalyser
from backends.local.pipeline import LocalJob, OperationPipeline, loader_for
from backends.params import GenerationParams, Operation

log = logging.getLogger("headshot_bot.gpu_worker")


def load_pipelines(config: WorkerConfig) -> dict[Operation, OperationPipeline]:
    """Every configured operation's pipeline, loaded once; operations that share a pipeline
    (headshot and facegen) share one instance. Missing folders are all checked first."""
    models = config.models
    missing = models.missing(config.operations, face_analyser=config.face_analyser)
    if missing:
        raise missing[0]
    faces = _face_analyser(config)
    loaded: dict[Any, OperationPipeline] = {}
    pipelines: dict[Operation, OperationPipeline] = {}
    for operation in config.operations:
        loader = loader_for(operation)
        if loader not in loaded:
            loaded[loader] = loader(models, config.runtime, faces)
        pipelines[operation] = loaded[loader]
    return pipelines


def _face_analyser(config: WorkerConfig) -> FaceAnalyser:
    if config.face_analyser == "insightface":
        folder = config.models.require("insightface")
        return InsightFaceAnalyser(folder, use_gpu=config.runtime.on_gpu)
    module, _, name = config.face_analyser.partition(":")
    return getattr(importlib.import_module(module), name)()  # type: ignore[no-any-return]


def run_job(
    pipelines: dict[Operation, OperationPipeline],
    params: dict[str, Any],
    face: bytes,
    pose: bytes | None,
) -> list[bytes]:
    """One job, start to finish, as PNG bytes."""
    from PIL import Image

    checked = GenerationParams.from_dict(params)
    job = LocalJob(
        params=checked,
        face=Image.open(io.BytesIO(face)).convert("RGB"),
        pose=Image.open(io.BytesIO(pose)).convert("RGB") if pose else None,
    )
    images = pipelines[checked.operation].generate(job)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def serve(conn: Connection, config: WorkerConfig) -> None:
    """The worker process's life: load, warm up, then run jobs until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu-worker %(message)s")
    # diffusers and transformers warn with pieces of users' prompts (truncation notices).
    for library in ("diffusers", "transformers"):
        logging.getLogger(library).setLevel(logging.ERROR)
    try:
        pipelines = load_pipelines(config)
        started = time.monotonic()
        for pipeline in dict.fromkeys(pipelines.values()):
            pipeline.warm_up()
        log.info("pipelines loaded and warmed up in %.1f s", time.monotonic() - started)
    except MissingComponent as exc:
        conn.send(("failed", exc.message))
        return
    except Exception as exc:
        log.exception("the GPU worker could not start")
        conn.send(("failed", f"the GPU worker could not load its models ({type(exc).__name__})"))
        return
    conn.send(("ready", [str(op) for op in pipelines]))
    inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    # A reader thread drains the pipe while a job runs, so that the bot's sends never block.
    threading.Thread(target=_read, args=(conn, inbox), daemon=True).start()
    while (message := inbox.get()) is not None and message[0] == "job":
        _, job_id, params, face, pose = message
        started = time.monotonic()
        try:
            outputs = run_job(pipelines, params, face, pose)
        except InvalidRequest as exc:
            conn.send(("refused", job_id, exc.message))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            conn.send(("error", job_id, _reason(exc)))
        else:
            conn.send(("done", job_id, outputs, time.monotonic() - started))
        del message, face, pose  # the selfie is kept only while its job runs


def _read(conn: Connection, inbox: queue.Queue[tuple[Any, ...] | None]) -> None:
    try:
        while (message := conn.recv())[0] != "stop":
            inbox.put(message)
    except (EOFError, OSError):
        pass
    # Stopping: the jobs not started yet are dropped (the bot fails and refunds them).
    while True:
        try:
            inbox.get_nowait()
        except queue.Empty:
            break
    inbox.put(None)


def _reason(exc: Exception) -> str:
    if "out of memory" in str(exc).lower():
        return "the GPU ran out of memory"
    return f"the GPU worker failed ({type(exc).__name__})"
