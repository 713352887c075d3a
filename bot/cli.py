"""`headshot-bot`: generate, run, migrate, models, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import HttpUrl, SecretStr

from backends.local.components import ModelPaths
from backends.local.download import DownloadIncomplete, DownloadUnavailable
from backends.local.download import download as download_models
from backends.local.download import status as model_status
from backends.params import Operation
from bot.app import HeadshotApp, Overrides
from bot.config import ConfigError, Settings, load_settings
from bot.generation import GenerationRequest, RequestRefused
from bot.jobs.events import Completed, Failed
from bot.logs import setup_logging
from storage.imagestore import extension_for_content_type
from storage.migrate import upgrade

DEFAULT_PROMPT = "professional corporate headshot, studio lighting, sharp focus, business attire"
DEMO_KEY = "demo-key"
DEMO_PROCESSING_SECONDS = 1.5
LOCAL_USER = ("local", "operator")


class CliError(Exception):
    """Ends the command with one line on stderr and a non-zero exit."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(args.handler(args))
    except (CliError, ConfigError, RequestRefused) as exc:
        print(f"headshot-bot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headshot-bot", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="turn a selfie into headshots, right here")
    gen.add_argument("selfie", type=Path, help="a JPEG, PNG or WebP selfie")
    gen.add_argument("--op", choices=[str(op) for op in Operation], default="headshot")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--negative-prompt")
    gen.add_argument("--samples", type=int, default=1)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--steps", type=int, dest="num_inference_steps")
    gen.add_argument("--guidance", type=float, dest="guidance_scale")
    gen.add_argument("--s-scale", type=float, dest="s_scale")
    gen.add_argument("--pose", type=Path, help="avatar only: a pose reference image")
    gen.add_argument("--out", type=Path, default=Path("out"), help="folder for the images")
    gen.add_argument("--demo", action="store_true", help="use the built-in simulator, no key")
    gen.set_defaults(handler=_generate)

    run = commands.add_parser("run", help="run the service: web server, dispatcher, poller")
    run.add_argument("--demo", action="store_true", help="use the built-in simulator, no key")
    run.set_defaults(handler=_run)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(handler=_migrate)

    models = commands.add_parser("models", help="the local GPU backend's model folders")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    ops = [str(op) for op in Operation]
    for name, handler, text in (
        ("download", _models_download, "fetch them from the Hugging Face hub"),
        ("list", _models_list, "show which are present, where, and their licences"),
    ):
        sub = models_commands.add_parser(name, help=text)
        sub.add_argument(
            "--op", action="append", choices=ops, help="only this operation's (repeatable)"
        )
        sub.set_defaults(handler=handler)

    sim = commands.add_parser("simulate", help="serve the ModelsLab simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--processing-seconds", type=float, default=0.0)
    sim.add_argument("--failure-rate", type=float, default=0.0)
    sim.add_argument("--max-queued", type=int, default=5, help="queued requests allowed per key")
    sim.set_defaults(handler=_simulate)
    return parser


async def _generate(args: argparse.Namespace) -> int:
    # No re-roll from the command line: the selfie goes as soon as the job ends.
    settings = _settings(quiet=True).model_copy(update={"selfie_retention_seconds": 0.0})
    selfie = _read(args.selfie, "selfie")
    pose = _read(args.pose, "pose image") if args.pose else None
    option_names = ("negative_prompt", "seed", "width", "height", "num_inference_steps")
    option_names += ("guidance_scale", "s_scale")
    options: dict[str, Any] = {"prompt": args.prompt, "samples": args.samples}
    options |= {name: getattr(args, name) for name in option_names if getattr(args, name)}
    async with _service(settings, demo=args.demo, web_port=0, service=False) as app:
        job = await app.generation.request(
            GenerationRequest(
                platform=LOCAL_USER[0],
                platform_user_id=LOCAL_USER[1],
                operation=args.op,
                options=options,
                selfie=selfie,
                pose_image=pose,
                metered=False,
            )
        )
        print(f"job {job.id[:8]}: queued", file=sys.stderr)
        async for event in app.events.watch(job.id):
            print(f"job {job.id[:8]}: {event.text}", file=sys.stderr)
            if isinstance(event, Failed):
                return 1
            if isinstance(event, Completed):
                args.out.mkdir(parents=True, exist_ok=True)
                for index, image in enumerate(event.images, start=1):
                    ext = extension_for_content_type(image.content_type)
                    path = args.out / f"{job.id[:8]}-{index}.{ext}"
                    path.write_bytes(await app.store.get(image.content_key))
                    print(path)
                return 0
    return 1


def _model_paths_and_operations(
    args: argparse.Namespace,
) -> tuple[ModelPaths, list[Operation]]:
    settings = _settings(quiet=True)
    paths = ModelPaths(settings.local_models_dir, settings.local_model_overrides)
    return paths, [Operation(op) for op in (args.op or list(Operation))]


async def _models_download(args: argparse.Namespace) -> int:
    paths, operations = _model_paths_and_operations(args)
    try:
        await asyncio.to_thread(download_models, paths, operations)
    except (DownloadUnavailable, DownloadIncomplete) as exc:
        raise CliError(str(exc)) from None
    print("done: set BACKEND=local (or auto) to use them", file=sys.stderr)
    return 0


async def _models_list(args: argparse.Namespace) -> int:
    paths, operations = _model_paths_and_operations(args)
    for line in model_status(paths, operations):
        print(line)
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = _settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _service(settings, demo=args.demo, web_port=None) as app:
        print(f"headshot-bot: serving on {app.base_url}", file=sys.stderr)
        async with _chat_adapters(app):
            # What start-up made lives as long as the process: keep it out of the collector's
            # full passes, each of which would otherwise stall a burst of interactions.
            gc.freeze()
            await stop.wait()
    return 0


@contextlib.asynccontextmanager
async def _chat_adapters(app: HeadshotApp) -> AsyncIterator[None]:
    """Every chat platform whose token is set, connected for as long as the service runs."""
    # The launcher is where the layers are put together: the one place bot/ meets adapters/.
    from adapters import configured

    adapters = configured(app.commands, app.settings, app.chat_webhooks)
    started = []
    try:
        for adapter in adapters:
            await adapter.start()
            started.append(adapter)
            print(f"headshot-bot: connected to {adapter.name}", file=sys.stderr)
        if not adapters:
            print(
                "headshot-bot: no chat platform token set (DISCORD_TOKEN, TELEGRAM_BOT_TOKEN)",
                file=sys.stderr,
            )
        yield
    finally:
        for adapter in reversed(started):
            await adapter.stop()


async def _migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    await upgrade(settings.effective_database_url)
    print("headshot-bot: database is up to date", file=sys.stderr)
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    from backends.modelslab.simulator import SimulatorConfig, serve

    config = SimulatorConfig(
        processing_seconds=args.processing_seconds,
        failure_rate=args.failure_rate,
        max_queued=args.max_queued,
    )
    await serve(args.host, args.port, config)
    return 0


def _settings(*, quiet: bool = False) -> Settings:
    """Settings and logging. `quiet` commands print their own progress: warnings only."""
    settings = load_settings()
    level = "WARNING" if quiet and settings.log_level in ("DEBUG", "INFO") else settings.log_level
    setup_logging(level, settings.secrets())
    return settings


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"no such {what} file: {path}") from None
    except OSError as exc:
        raise CliError(f"cannot read the {what} file {path}: {exc.strerror}") from None


@contextlib.asynccontextmanager
async def _service(
    settings: Settings, *, demo: bool, web_port: int | None, service: bool = True
) -> AsyncIterator[HeadshotApp]:
    """The service (or, with `service=False`, only what one job needs), pointed at an
    in-process simulator in demo mode."""
    if not demo:
        async with HeadshotApp(settings, Overrides(web_port=web_port), service=service) as app:
            yield app
        return
    from backends.modelslab.simulator import Simulator, SimulatorConfig

    simulator = Simulator(SimulatorConfig(processing_seconds=DEMO_PROCESSING_SECONDS))
    sim_url = await simulator.start()
    demo_settings = settings.model_copy(
        update={
            "modelslab_base_url": HttpUrl(sim_url),
            "modelslab_api_key": SecretStr(DEMO_KEY),
            "backend": "modelslab",
            "fallback_backend": "none",
        }
    )
    # The simulator runs beside us, so its webhooks can reach our server on loopback.
    app = HeadshotApp(
        demo_settings, Overrides(web_port=web_port, local_webhooks=True), service=service
    )
    try:
        await app.start()
    except BaseException:
        await simulator.stop()
        raise
    try:
        yield app
    finally:
        # The simulator first: a webhook it still had to send must not meet a closed server.
        await simulator.stop()
        await app.stop()
