"""What only the terminal says: its own commands and the files it reads and writes. Everything
else the operator reads is the command layer's wording, shown as it is."""

from __future__ import annotations

from pathlib import Path


def welcome(out_dir: Path, demo: bool) -> str:
    source = "the built-in simulator (demo: no API key, no charge)" if demo else "your backend"
    return (
        f"Headshot Bot chat: you are the operator; images come from {source} and are saved in "
        f"{out_dir}. Try /headshot examples/astronaut.jpg, /help for more, /quit to leave."
    )


def terminal_help(out_dir: Path) -> str:
    return "\n".join(
        [
            "In this terminal:",
            "• attach an image by its path: /headshot examples/astronaut.jpg [style] [prompt…]"
            " (or selfie=PATH, pose_image=PATH)",
            "• press a button with /press <number> (buttons are shown as [1] Re-roll)",
            f"• images are saved in {out_dir}; their paths are printed",
            "• /quit (or Ctrl-D) to leave; jobs still running are shown the next time",
        ]
    )


def no_such_file(path: Path) -> str:
    return f"No such file: {path}. Give the path of a JPEG, PNG, WebP or HEIC image."


def unreadable_file(path: Path, reason: str) -> str:
    return f"Can't read {path} ({reason}): check the path and its permissions."


def give_a_path() -> str:
    return "Here, give your selfie's path: /headshot examples/astronaut.jpg (or selfie=PATH)."


def lost_track(job: str) -> str:
    return f"Couldn't follow this job any more: type /show {job} to see how it ends."


def no_such_button(typed: str) -> str:
    return f"No button {typed.strip() or '(none given)'}: type /press and a number shown in [ ]."


def image_saved(path: Path) -> str:
    return f"  image: {path}"


def chart_saved(path: Path) -> str:
    return f"  chart: {path}"


def image_not_saved(folder: Path, reason: str) -> str:
    return f"Couldn't save the images in {folder} ({reason}): free some space or fix the folder."


def waiting_for(jobs: int) -> str:
    noun = "job" if jobs == 1 else "jobs"
    return f"Waiting for {jobs} {noun} to finish (Ctrl-C to leave now)…"


def leaving(running: int) -> str:
    if not running:
        return "Bye."
    noun = "job is" if running == 1 else "jobs are"
    return f"Bye. {running} {noun} still running: the results are shown the next time you chat."
