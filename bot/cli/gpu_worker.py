"""`headshot-bot gpu-worker`: one GPU of the fleet, taking the cluster's jobs from PostgreSQL;
`headshot-bot gpu-worker-role NAME`: the database role the GPU machines log in with."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import sys
from urllib.parse import urlsplit

from backends.local.process import CHAT_AND_PROVIDER_SECRETS
from bot.cli.common import CliError, Commands, settings
from bot.cli.folders import write_problem
from bot.config import ConfigError
from bot.logs import setup_logging

NOT_POSTGRES = (
    "invalid setting DATABASE_URL: GPU workers use the cluster's PostgreSQL: set it to the "
    "database owner's postgresql+psycopg://… URL"
)
# A role name as written unquoted: PostgreSQL reserves the pg_ prefix.
_ROLE = re.compile(r"(?!pg_)[a-z_][a-z0-9_]{0,62}")


def register(commands: Commands) -> None:
    worker = commands.add_parser(
        "gpu-worker",
        help="serve the cluster's GPU jobs on this machine's GPU (LOCAL_DEVICE), from PostgreSQL",
    )
    worker.set_defaults(handler=_gpu_worker)
    role = commands.add_parser(
        "gpu-worker-role",
        help="make (or give a new password to) the database role GPU workers log in with; "
        "run it with the owner's DATABASE_URL",
    )
    role.add_argument("name", type=_role_name, help="the role's name, e.g. gpu_worker")
    role.set_defaults(handler=_gpu_worker_role)


async def _gpu_worker(args: argparse.Namespace) -> int:
    for name in CHAT_AND_PROVIDER_SECRETS:
        os.environ.pop(name, None)  # it needs none of them
    chosen = settings(data=False)
    # The worker's own password is a secret of its logs too.
    password = urlsplit(chosen.effective_database_url).password
    setup_logging(
        chosen.log_level,
        [*chosen.secrets(), *([password] if password else [])],
        log_format=chosen.log_format,
        replica=chosen.replica_name,
    )
    if not chosen.s3_bucket and (problem := write_problem(chosen.data_dir)):
        raise ConfigError(f"invalid setting DATA_DIR: {problem}")

    from bot.backends import local_operations
    from bot.fleet.worker import run_gpu_worker

    stop = asyncio.Event()
    ready = False

    def on_signal(signum: int) -> None:
        if not ready:
            # Nothing taken yet, nothing to drain: a model load is not worth waiting for.
            print("headshot-bot: gpu-worker stopped before taking any job", file=sys.stderr)
            os._exit(0)
        if stop.is_set():
            print("headshot-bot: gpu-worker stopped at once", file=sys.stderr)
            os._exit(128 + signum)
        print(
            "headshot-bot: gpu-worker draining: finishing its job (signal again to stop at once)",
            file=sys.stderr,
        )
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    def on_ready() -> None:
        nonlocal ready
        ready = True
        operations = ", ".join(local_operations(chosen))
        print(
            f"headshot-bot: gpu-worker ready: {operations} on {chosen.local_device}, "
            f"capacity {chosen.gpu_worker_capacity}",
            file=sys.stderr,
        )

    await run_gpu_worker(chosen, stop=stop, on_ready=on_ready)
    print("headshot-bot: gpu-worker stopped", file=sys.stderr)
    return 0


async def _gpu_worker_role(args: argparse.Namespace) -> int:
    chosen = settings(quiet=True, data=False)
    url = chosen.effective_database_url
    if not url.startswith("postgresql"):
        raise ConfigError(NOT_POSTGRES)
    owner = urlsplit(url).username
    if args.name in (owner, "postgres"):
        # Its password would change: the bot's own login, or the server's superuser.
        raise CliError(f"{args.name} is not a role for GPU workers: name another, e.g. gpu_worker")

    from storage.gpu_access import grant_worker_role, worker_url

    password = secrets.token_urlsafe(24)
    try:
        await grant_worker_role(url, args.name, password)
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:
        # Only the type: a driver's message may quote the connection's details.
        raise CliError(
            f"cannot make the role {args.name} ({type(exc).__name__}): DATABASE_URL must be "
            "the database owner's, on a server that is up"
        ) from None
    print(worker_url(url, args.name, password))
    print(
        f"headshot-bot: give the GPU machines the DATABASE_URL above, and keep it secret: it "
        f"holds {args.name}'s password, which can reach only the GPU queue, its results and the "
        "worker registry (running this again gives it a new password)",
        file=sys.stderr,
    )
    return 0


def _role_name(text: str) -> str:
    if not _ROLE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a role name: lowercase letters, digits and _, not starting with "
            "pg_ or a digit"
        )
    return text
