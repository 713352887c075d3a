"""`--out` of `generate` and `chat`: the folder the images go to, checked before anything is
submitted."""

from __future__ import annotations

from pathlib import Path

from bot.cli.common import CliError
from bot.cli.folders import write_problem


def check_out_folder(path: Path) -> None:
    """Refuse at once a folder the images could not be written to: a file, a path inside a
    file, or a place this process may not write. Nothing is made yet."""
    problem = write_problem(path)
    if problem is not None:
        # "--out shots is a file: …", "--out shots: cannot write in …"
        where = "" if problem.startswith(str(path)) else f"{path}: "
        raise CliError(f"--out {where}{problem}")


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
