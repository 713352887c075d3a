"""`headshot-bot generate`: one job from the command line, its images written to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backends.params import LIMITS, GenerationParams, Operation, ParameterError
from bot.app import Overrides
from bot.cli.common import CliError, Commands, add_demo_flag, read, service, settings
from bot.cli.flags import FLAGS, flag_help, flag_name
from bot.cli.outdir import check_out_folder, make_out_folder, unmake_out_folder
from bot.generation import GenerationRequest
from bot.jobs import reasons
from bot.jobs.events import Completed, Failed, JobEvent
from storage.imagestore import extension_for_content_type

DEFAULT_PROMPT = "professional corporate headshot, studio lighting, sharp focus, business attire"
LOCAL_USER = ("local", "operator")
POSE_OPERATIONS = [str(op) for op, limits in LIMITS.items() if limits.pose_image]


def register(commands: Commands) -> None:
    gen = commands.add_parser(
        "generate",
        help="turn a selfie into headshots, right here",
        description="Turn a selfie into headshots and write them to a folder. Each option's "
        "range and default depend on the operation (--op): they are listed per operation.",
    )
    gen.add_argument("selfie", type=Path, help="a JPEG, PNG or WebP selfie")
    gen.add_argument(
        "--op",
        choices=[str(op) for op in Operation],
        default="headshot",
        help="the operation (default: headshot)",
    )
    gen.add_argument("--prompt", default=DEFAULT_PROMPT, help="what to make (default: %(default)s)")
    for flag in FLAGS:
        gen.add_argument(
            flag.flag, type=flag.kind, dest=flag.field, metavar=flag.metavar, help=flag_help(flag)
        )
    gen.add_argument(
        "--pose",
        type=Path,
        metavar="IMAGE",
        help=f"a photo whose pose to copy ({', '.join(POSE_OPERATIONS)} only)",
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=Path("out"),
        metavar="FOLDER",
        help="folder for the images, made if missing (default: out)",
    )
    add_demo_flag(gen)
    gen.set_defaults(handler=_generate)


async def _generate(args: argparse.Namespace) -> int:
    options = _checked_options(args)
    # No re-roll from the command line: the selfie goes as soon as the job ends.
    chosen = settings(quiet=True).model_copy(update={"selfie_retention_seconds": 0.0})
    selfie = read(args.selfie, "selfie")
    pose = read(args.pose, "pose image") if args.pose else None
    # Before anything is paid for: an image made and then not written would be lost.
    check_out_folder(args.out)
    # A person at a terminal is told at once that the generator cannot be reached.
    overrides = Overrides(quick_provider_failure=True)
    async with service(
        chosen, demo=args.demo, web_port=0, service=False, overrides=overrides
    ) as app:
        made = make_out_folder(args.out)
        try:
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
        except BaseException:
            unmake_out_folder(args.out, made)
            raise
        short = job.id[:8]
        print(f"job {short}: queued", file=sys.stderr)
        async for event in app.events.watch(job.id):
            print(f"job {short}: {_text(event)}", file=sys.stderr)
            if isinstance(event, Failed):
                return 1
            if isinstance(event, Completed):
                for index, image in enumerate(event.images, start=1):
                    ext = extension_for_content_type(image.content_type)
                    path = args.out / f"{short}-{index}.{ext}"
                    data = await app.store.get(image.content_key)
                    try:
                        path.write_bytes(data)
                    except OSError as exc:
                        raise CliError(f"cannot write {path}: {exc.strerror}") from None
                    print(path)
                return 0
    return 1


def _checked_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, checked against the operation's limits before anything starts; an
    error names the flag that was typed."""
    if args.pose and args.op not in POSE_OPERATIONS:
        ops = " or ".join(f"--op {op}" for op in POSE_OPERATIONS)
        raise CliError(f"--pose is for {ops} only: {args.op} takes no pose image")
    options: dict[str, Any] = {"prompt": args.prompt}
    for flag in FLAGS:
        value = getattr(args, flag.field)
        if value is not None:
            options[flag.field] = value
    try:
        GenerationParams.create(args.op, **options)
    except ParameterError as exc:
        raise CliError(exc.render(flag_name(exc.field))) from None
    return options


def _text(event: JobEvent) -> str:
    """The job's progress in a terminal's words: nobody here pays credits."""
    if isinstance(event, Failed):
        return f"failed: {reasons.shown(event.reason)}"
    if isinstance(event, Completed):
        count = len(event.images)
        noun = "image" if count == 1 else "images"
        return f"Done: {count} {noun} · seed {event.seed} · job {event.job.short_id}."
    return event.text
