"""Which generator the service uses, from BACKEND and FALLBACK_BACKEND.

`local` is the GPU: on SQLite (one machine) a worker process of the bot's own, on PostgreSQL
the fleet of `headshot-bot gpu-worker`s sharing the cluster's database (their models are on
their machines: the replica needs neither the models nor torch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backends.base import Backend
from backends.fallback import FallbackBackend
from backends.local.backend import LocalBackend
from backends.local.components import ModelPaths
from backends.local.config import WorkerConfig
from backends.local.probe import gpu_visible, local_extra_installed
from backends.local.runtime import Runtime
from backends.modelslab import ModelsLabClient
from backends.modelslab.client import CallListener
from backends.params import Operation
from bot.config import ConfigError, Settings
from bot.fleet.backend import FleetBackend, Listen
from storage.database import Database
from storage.gpu_queue import GpuQueue
from storage.gpu_workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetAccess:
    """What the fleet's backend takes from the running service: its database (the worker
    registry) and the channel its workers' results are announced on."""

    db: Database
    listen: Listen


def uses_fleet(settings: Settings) -> bool:
    """Whether BACKEND or FALLBACK_BACKEND names the GPU fleet: `local` on PostgreSQL (then
    `choose_backend` needs the service's `FleetAccess`)."""
    postgres = settings.effective_database_url.startswith("postgresql")
    return postgres and "local" in (settings.backend, settings.fallback_backend)


def choose_backend(
    settings: Settings,
    *,
    quick_provider_failure: bool = False,
    fleet: FleetAccess | None = None,
    on_provider_call: CallListener | None = None,
) -> Backend:
    """The configured generator (not started yet), wrapped with its fallback when one is set.

    `quick_provider_failure`: a provider that cannot be reached at all fails after one short
    try instead of the retry schedule (the command line, where a person waits). `fleet`: the
    service's database and channel, wanted where `uses_fleet`. `on_provider_call` hears how
    each call to ModelsLab ended (the metrics, and whether it is in an outage).
    """
    if uses_fleet(settings) and fleet is None:
        raise ValueError("the GPU fleet's backend is built with the service's FleetAccess")
    name = settings.backend
    if name == "auto":
        # auto looks for a GPU on this machine: a child worker, as ever, not the fleet.
        name = _auto(settings)
        primary = _build(name, settings, quick_provider_failure, None, on_provider_call)
    else:
        primary = _build(name, settings, quick_provider_failure, fleet, on_provider_call)
    fallback = settings.fallback_backend
    if fallback == "none":
        return primary
    if fallback == name:
        if settings.backend == "auto":
            log.info("BACKEND=auto chose %s, which is also FALLBACK_BACKEND: no fallback", name)
            return primary
        raise ConfigError(f"invalid setting FALLBACK_BACKEND: it is the same as BACKEND ({name})")
    return FallbackBackend(
        primary, _build(fallback, settings, quick_provider_failure, fleet, on_provider_call)
    )


def _auto(settings: Settings) -> str:
    models = _model_paths(settings)
    missing = models.missing(local_operations(settings), face_analyser=settings.local_face_analyser)
    if not missing and local_extra_installed() and _device_ready(settings):
        log.info("BACKEND=auto: the local models are present and a GPU is visible: local")
        return "local"
    if settings.api_key:
        reason = missing[0].message if missing else "no GPU is visible to torch"
        log.info("BACKEND=auto: ModelsLab (local not possible: %s)", reason)
        return "modelslab"
    raise ConfigError(
        "invalid setting BACKEND: auto found neither a GPU with the local models in "
        f"{settings.local_models_dir} (`headshot-bot models download`) nor MODELSLAB_API_KEY: "
        "set one (or use --demo)"
    )


def _device_ready(settings: Settings) -> bool:
    # auto never picks a CPU: LOCAL_DEVICE=cpu is for BACKEND=local, on purpose.
    return settings.local_device != "cpu" and gpu_visible()


def _build(
    name: str,
    settings: Settings,
    quick_provider_failure: bool,
    fleet: FleetAccess | None,
    on_call: CallListener | None,
) -> Backend:
    if name == "modelslab":
        key = settings.api_key
        if not key:
            raise ConfigError("invalid setting MODELSLAB_API_KEY: it is not set (or use --demo)")
        return ModelsLabClient(
            key,
            str(settings.modelslab_base_url),
            timeout=settings.modelslab_timeout,
            quick_unreachable=quick_provider_failure,
            on_call=on_call,
        )
    if fleet is not None:
        return _fleet(settings, fleet)
    if not local_extra_installed():
        raise ConfigError(
            "invalid setting BACKEND: the local backend needs torch and diffusers: "
            "pip install 'headshot-bot[local]'"
        )
    config = worker_config(settings)
    check_local_models(config)
    return LocalBackend(
        config, capacity=settings.local_capacity, start_timeout=settings.local_start_timeout
    )


def worker_config(settings: Settings) -> WorkerConfig:
    """What a GPU worker is started with, from the LOCAL_* settings: the bot's child worker and
    the fleet's `headshot-bot gpu-worker` alike."""
    return WorkerConfig(
        models_root=settings.local_models_dir,
        overrides=settings.local_model_overrides,
        operations=local_operations(settings),
        runtime=Runtime(
            device=settings.local_device,
            dtype=settings.local_dtype,
            compile=settings.local_compile,
            fuse_qkv=settings.local_fuse_qkv,
            channels_last=settings.local_channels_last,
        ),
        face_analyser=settings.local_face_analyser,
    )


def check_local_models(config: WorkerConfig) -> None:
    """Every model folder of the worker's operations there: a ConfigError (one line) naming
    LOCAL_MODELS_DIR otherwise."""
    missing = config.models.missing(config.operations, face_analyser=config.face_analyser)
    if missing:
        raise ConfigError(f"invalid setting LOCAL_MODELS_DIR: {missing[0].message}")


def local_operations(settings: Settings) -> tuple[Operation, ...]:
    """LOCAL_OPERATIONS, in order, each once."""
    names = [part.strip() for part in settings.local_operations.split(",") if part.strip()]
    return tuple(Operation(name) for name in dict.fromkeys(names))


def _fleet(settings: Settings, fleet: FleetAccess) -> FleetBackend:
    timeout = settings.gpu_worker_timeout_seconds
    return FleetBackend(
        GpuQueue(settings.effective_database_url, worker_timeout=timeout),
        WorkerRegistry(fleet.db),
        worker_timeout=timeout,
        listen=fleet.listen,
    )


def _model_paths(settings: Settings) -> ModelPaths:
    return ModelPaths(settings.local_models_dir, settings.local_model_overrides)
