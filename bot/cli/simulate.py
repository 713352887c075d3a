"""`headshot-bot simulate`: serve the ModelsLab simulator."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.cli.common import CliError, Commands, ranged, read


def register(commands: Commands) -> None:
    sim = commands.add_parser(
        "simulate",
        help="serve the ModelsLab simulator",
        description="Serve a stand-in for ModelsLab's API on this machine: point "
        "MODELSLAB_BASE_URL at the address it prints (any MODELSLAB_API_KEY will do).",
    )
    sim.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    sim.add_argument(
        "--port",
        type=ranged(int, 0, 65535),
        default=8765,
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )
    sim.add_argument(
        "--processing-seconds",
        type=ranged(float, 0, 3600),
        default=0.0,
        help="how long a job stays processing; 0 answers at once (default: %(default)s)",
    )
    sim.add_argument(
        "--failure-rate",
        type=ranged(float, 0, 1),
        default=0.0,
        help="the fraction of jobs that fail, 0 to 1 (default: %(default)s)",
    )
    sim.add_argument(
        "--max-queued",
        type=ranged(int, 1, 1000),
        default=5,
        help="queued requests allowed per key (default: %(default)s)",
    )
    sim.add_argument(
        "--stranger-image",
        type=Path,
        metavar="PATH",
        help="a photo of another person: some outputs show this face instead of the sender's, "
        "to try an identity check",
    )
    sim.add_argument(
        "--stranger-rate",
        type=ranged(float, 0, 1),
        default=0.0,
        metavar="R",
        help="the share of outputs, 0 to 1, that show the stranger, spread evenly over the "
        "outputs in the order they are made: output n (0, 1, 2, ... across all jobs) is a "
        "stranger when floor((n+1)*R) > floor(n*R), so 0.5 is every second one "
        "(default: %(default)s)",
    )
    sim.set_defaults(handler=_simulate)


async def _simulate(args: argparse.Namespace) -> int:
    from backends.modelslab.simulator import Simulator, SimulatorConfig, StrangerError

    stranger = None if args.stranger_image is None else read(args.stranger_image, "stranger image")
    config = SimulatorConfig(
        processing_seconds=args.processing_seconds,
        failure_rate=args.failure_rate,
        max_queued=args.max_queued,
        stranger_image=stranger,
        stranger_rate=args.stranger_rate,
    )
    try:
        simulator = Simulator(config)
    except StrangerError as exc:
        raise CliError(str(exc)) from None
    try:
        url = await simulator.start(args.host, args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    print(f"headshot-bot: ModelsLab simulator on {url}", file=sys.stderr)
    print(f"headshot-bot: use it with MODELSLAB_BASE_URL={url}", file=sys.stderr)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
    return 0
