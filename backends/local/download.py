"""`headshot-bot models download`: fetch the local backend's model folders from the Hugging Face
hub, for operators whose machine has network. The bot itself never downloads at run time."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from pathlib import Path

from backends.local.components import DOWNLOAD_MARKER, Component, ModelPaths, components_for
from backends.params import Operation

# (repo_id, allow_patterns, folder) -> None; huggingface_hub's snapshot_download by default.
Fetch = Callable[[str, tuple[str, ...], Path], None]


class DownloadUnavailable(Exception):
    """huggingface_hub is not installed. The message says how to install it."""


class DownloadIncomplete(Exception):
    """A fetch returned without every file it was for (the hub unreachable, say)."""


def licence_line(component: Component) -> str:
    warning = "  NON-COMMERCIAL" if component.non_commercial else ""
    return f"{component.name}: {component.repo_id} (licence: {component.licence}){warning}"


def download(
    models: ModelPaths,
    operations: Iterable[Operation],
    *,
    say: Callable[[str], None] = print,
    fetch: Fetch | None = None,
) -> list[Path]:
    """Fetch every component the operations need into its folder; the folders written.

    A folder is marked unfinished until its fetch returns: one interrupted (network, Ctrl-C)
    reads as PARTIAL, stops start-up with one line, and the same command resumes it."""
    fetch = fetch or _hub_fetch()
    written = []
    for component in components_for(operations):
        folder = models.folder(component.name)
        say(licence_line(component))
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / DOWNLOAD_MARKER
        marker.touch()
        fetch(component.repo_id, component.allow_patterns, folder)
        # Offline, huggingface_hub hands back what the folder already holds without an error:
        # the folder is complete only when every file asked for is there.
        absent = _patterns_without_files(folder, component.allow_patterns)
        if absent:
            raise DownloadIncomplete(
                f"{component.name}: nothing in {folder} matches {', '.join(absent)} after the "
                "download (is the Hugging Face hub reachable?); run the same command again"
            )
        marker.unlink()
        say(f"  -> {folder}")
        written.append(folder)
    return written


def status(models: ModelPaths, operations: Iterable[Operation]) -> list[str]:
    """One line per component: present, PARTIAL (a download stopped) or MISSING, where, and
    its licence."""
    return [
        f"{state(models, c.name):8} {models.folder(c.name)}  {licence_line(c)}"
        for c in components_for(operations)
    ]


def state(models: ModelPaths, name: str) -> str:
    """present, PARTIAL (a download stopped) or MISSING."""
    if models.present(name):
        return "present"
    return "PARTIAL" if models.unfinished(name) else "MISSING"


def _patterns_without_files(folder: Path, patterns: tuple[str, ...]) -> list[str]:
    files = [
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != DOWNLOAD_MARKER and ".cache" not in path.parts
    ]
    return [p for p in patterns if not any(fnmatch.fnmatchcase(f, p) for f in files)]


def _hub_fetch() -> Fetch:
    """huggingface_hub's snapshot_download, checked for before any folder is touched."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadUnavailable(
            "downloading needs huggingface_hub: pip install 'headshot-bot[local]'"
        ) from None

    def fetch(repo_id: str, allow_patterns: tuple[str, ...], folder: Path) -> None:
        snapshot_download(repo_id=repo_id, allow_patterns=list(allow_patterns), local_dir=folder)

    return fetch
