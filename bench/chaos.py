"""Chaos on the cluster: replicas SIGKILLed and restarted at random during a run, the provider
failing some jobs and answering some calls with 5xx. Prints whether every job ended, whether the
ledger holds (no credit lost or settled twice), and the duplicate provider submits and duplicate
deliveries with their causes.

    python -m tests.postgres -- python bench/chaos.py --jobs 500 --kills 20

(`tests.postgres` starts a throw-away PostgreSQL from Debian's package and sets
TEST_POSTGRES_URL; or set TEST_POSTGRES_URL to a server of your own: a new database is made on
it.) Three `headshot-bot run` replicas (`--replicas`) run behind a round-robin balancer, in
Telegram webhook mode against the fake Bot API of tests/, with the ModelsLab simulator (cap 5)
in this process. `--users` users send `--jobs` `/headshot` photos, all at the start; a replica is
killed every ~`--kill-every` seconds (0.5-1.5 times that, at random) and restarted at once, until
`--kills` kills; then the cluster gets up to `--settle` seconds to answer everything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

# `python bench/chaos.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos import ChaosPlan, describe, run_chaos
from tests.databases import fresh_postgres_database


async def main(args: argparse.Namespace) -> int:
    plan = ChaosPlan(
        jobs=args.jobs,
        users=args.users,
        replicas=args.replicas,
        kills=args.kills,
        kill_every_seconds=args.kill_every,
        failure_rate=args.failure_rate,
        processing_seconds=args.processing_seconds,
        lease_seconds=args.lease,
        settle_seconds=args.settle,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with fresh_postgres_database() as url:
            report = await run_chaos(plan, url, Path(tmp))
    for line in describe(report):
        print(line)
    sound = not report.unfinished and not report.ledger_problems and not report.unanswered
    return 0 if sound else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument("--processing-seconds", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(main(parser.parse_args())))
