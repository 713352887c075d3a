"""`headshot-bot models download|list`: the local GPU backend's model folders."""

from __future__ import annotations

import argparse
import asyncio
import sys

from backends.local.components import ModelPaths, components_for
from backends.local.download import DownloadIncomplete, DownloadUnavailable
from backends.local.download import download as download_models
from backends.local.download import state as model_state
from backends.local.download import status as model_status
from backends.params import Operation
from bot.cli.common import CliError, Commands, settings
from bot.cli.folders import write_problem


def register(commands: Commands) -> None:
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


def _model_paths_and_operations(
    args: argparse.Namespace,
) -> tuple[ModelPaths, list[Operation]]:
    chosen = settings(quiet=True, data=False)
    paths = ModelPaths(chosen.local_models_dir, chosen.local_model_overrides)
    return paths, [Operation(op) for op in (args.op or list(Operation))]


async def _models_download(args: argparse.Namespace) -> int:
    paths, operations = _model_paths_and_operations(args)
    for component in components_for(operations):
        # Each folder is checked before the first byte comes: a download is gigabytes.
        folder = paths.folder(component.name)
        problem = write_problem(folder)
        if problem:
            raise CliError(f"cannot download {component.name}: {problem}")
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
    # The list is stdout's, for scripts; what to do next is for the person reading it.
    states = [model_state(paths, c.name) for c in components_for(operations)]
    print(_summary(states, args.op or []), file=sys.stderr)
    return 0


def _summary(states: list[str], ops: list[str]) -> str:
    total, present = len(states), states.count("present")
    if present == total:
        return f"all {total} present: set BACKEND=local (or auto) to use them"
    absent = f"{states.count('MISSING')} missing"
    if "PARTIAL" in states:
        absent += f", {states.count('PARTIAL')} partly downloaded"
    command = " ".join(["headshot-bot models download", *(f"--op {op}" for op in ops)])
    return f"{present} of {total} present, {absent}: fetch them with {command}"
