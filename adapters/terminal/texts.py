"""What only the terminal says: its own commands and the files it reads and writes. Everything
else the operator reads is the command layer's wording, shown as it is."""

from __future__ import annotations

from pathlib import Path

from bot.i18n import _, ngettext


def welcome(out_dir: Path, demo: bool) -> str:
    if demo:
        return _(
            "Headshot Bot chat: you are the operator; images come from the built-in simulator "
            "(demo: no API key, no charge) and are saved in {folder}. Try /headshot "
            "examples/astronaut.jpg, /help for more, /quit to leave.",
            folder=out_dir,
        )
    return _(
        "Headshot Bot chat: you are the operator; images come from your backend and are saved "
        "in {folder}. Try /headshot examples/astronaut.jpg, /help for more, /quit to leave.",
        folder=out_dir,
    )


def terminal_help(out_dir: Path) -> str:
    return "\n".join(
        [
            _("In this terminal:"),
            _(
                "• attach an image by its path: /headshot examples/astronaut.jpg [style] "
                "[prompt…] (or selfie=PATH, pose_image=PATH)"
            ),
            _("• press a button with /press <number> (buttons are shown as [1] Re-roll)"),
            _("• images are saved in {folder}; their paths are printed", folder=out_dir),
            _("• /quit (or Ctrl-D) to leave; jobs still running are shown the next time"),
        ]
    )


def no_such_file(path: Path) -> str:
    return _("No such file: {path}. Give the path of a JPEG, PNG, WebP or HEIC image.", path=path)


def unreadable_file(path: Path, reason: str) -> str:
    return _(
        "Can't read {path} ({reason}): check the path and its permissions.",
        path=path,
        reason=reason,
    )


def not_a_file() -> str:
    return _("not a file")


def give_a_path() -> str:
    return _("Here, give your selfie's path: /headshot examples/astronaut.jpg (or selfie=PATH).")


def lost_track(job: str) -> str:
    return _("Couldn't follow this job any more: type /show {job} to see how it ends.", job=job)


def no_such_button(typed: str) -> str:
    if not typed.strip():
        return _("No button given: type /press and a number shown in [ ].")
    return _("No button {typed}: type /press and a number shown in [ ].", typed=typed.strip())


def image_saved(path: Path) -> str:
    return _("  image: {path}", path=path)


def chart_saved(path: Path) -> str:
    return _("  chart: {path}", path=path)


def image_not_saved(folder: Path, reason: str) -> str:
    return _(
        "Couldn't save the images in {folder} ({reason}): free some space or fix the folder.",
        folder=folder,
        reason=reason,
    )


def waiting_for(jobs: int) -> str:
    return ngettext(
        "Waiting for {count} job to finish (Ctrl-C to leave now)…",
        "Waiting for {count} jobs to finish (Ctrl-C to leave now)…",
        jobs,
    )


def leaving(running: int) -> str:
    if not running:
        return _("Bye.")
    return ngettext(
        "Bye. {count} job is still running: the result is shown the next time you chat.",
        "Bye. {count} jobs are still running: the results are shown the next time you chat.",
        running,
    )
