"""`generate --out`: the folder the images go to, checked before anything is submitted."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bot.cli.common import CliError


def check_out_folder(path: Path) -> None:
    """Refuse at once a folder the images could not be written to: a file, a path inside a
    file, or a place this process may not write. Nothing is made yet."""
    if path.exists() and not path.is_dir():
        raise CliError(f"--out {path} is a file: name a folder for the images")
    existing = next(place for place in (path, *path.absolute().parents) if place.exists())
    if not existing.is_dir():
        raise CliError(f"--out {path} is inside {existing}, which is a file: name a folder")
    try:
        # Writing is what is asked of it: permissions, a read-only disk and the like all show.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise CliError(f"--out {path}: cannot write in {existing} ({exc.strerror})") from None


def make_out_folder(path: Path) -> Path | None:
    """Make the folder; the outermost folder made, for `unmake_out_folder`."""
    missing = [place for place in (path, *path.parents) if not place.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {path}: cannot make the folder ({exc.strerror})") from None
    return missing[-1] if missing else None


def unmake_out_folder(path: Path, made: Path | None) -> None:
    """Take away the folders `make_out_folder` made, while they are empty (a refused job)."""
    if made is None:
        return
    for place in (path, *path.parents):
        try:
            place.rmdir()
        except OSError:
            return
        if place == made:
            return
