"""`headshot-bot simulate`: serve the ModelsLab simulator."""

from __future__ import annotations

import argparse

from bot.cli.common import Commands


def register(commands: Commands) -> None:
    sim = commands.add_parser("simulate", help="serve the ModelsLab simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--processing-seconds", type=float, default=0.0)
    sim.add_argument("--failure-rate", type=float, default=0.0)
    sim.add_argument("--max-queued", type=int, default=5, help="queued requests allowed per key")
    sim.set_defaults(handler=_simulate)


async def _simulate(args: argparse.Namespace) -> int:
    from backends.modelslab.simulator import SimulatorConfig, serve

    config = SimulatorConfig(
        processing_seconds=args.processing_seconds,
        failure_rate=args.failure_rate,
        max_queued=args.max_queued,
    )
    await serve(args.host, args.port, config)
    return 0
