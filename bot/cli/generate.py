"""`headshot-bot generate`: one job from the command line, its images written to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from backends.params import Operation
from bot.cli.common import Commands, add_demo_flag, read, service, settings
from bot.generation import GenerationRequest
from bot.jobs.events import Completed, Failed
from storage.imagestore import extension_for_content_type

DEFAULT_PROMPT = "professional corporate headshot, studio lighting, sharp focus, business attire"
LOCAL_USER = ("local", "operator")


def register(commands: Commands) -> None:
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
    add_demo_flag(gen)
    gen.set_defaults(handler=_generate)


async def _generate(args: argparse.Namespace) -> int:
    # No re-roll from the command line: the selfie goes as soon as the job ends.
    chosen = settings(quiet=True).model_copy(update={"selfie_retention_seconds": 0.0})
    selfie = read(args.selfie, "selfie")
    pose = read(args.pose, "pose image") if args.pose else None
    option_names = ("negative_prompt", "seed", "width", "height", "num_inference_steps")
    option_names += ("guidance_scale", "s_scale")
    options: dict[str, Any] = {"prompt": args.prompt, "samples": args.samples}
    options |= {name: getattr(args, name) for name in option_names if getattr(args, name)}
    async with service(chosen, demo=args.demo, web_port=0, service=False) as app:
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
