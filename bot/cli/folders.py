"""Whether a folder can be written, made if missing, asked of the file system itself."""

from __future__ import annotations

import tempfile
from pathlib import Path


def write_problem(path: Path) -> str | None:
    """Why files could not be written in `path` (made if missing), or None. Nothing is made:
    a file is created and removed at once in the nearest folder that exists."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file: name a folder"
    existing = next(place for place in (path, *path.absolute().parents) if place.exists())
    if not existing.is_dir():
        return f"{path} is inside {existing}, which is a file: name a folder"
    try:
        # Permissions (root passes every check of them), a read-only disk, a file system that
        # takes no files: only writing tells.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror})"
    return None
