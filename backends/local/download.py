"""`headshot-bot models download`: fetch the local backend's model folders from the Hugging Face
hub, for operators whose machine has network. The bot itself never downloads at run time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from backends.local.components import Component, ModelPaths, components_for
from backends.params import Operation

# (repo_id, allow_patterns, folder) -> None; huggingface_hub's snapshot_download by default.
Fetch = Callable[[str, tuple[str, ...], Path], None]


class DownloadUnavailable(Exception):
    """huggingface_hub is not installed. The message says how to install it."""


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
    """Fetch every component the operations need into its folder; the folders written."""
    fetch = fetch or _snapshot
    written = []
    for component in components_for(operations):
        folder = models.folder(component.name)
        say(licence_line(component))
        fetch(component.repo_id, component.allow_patterns, folder)
        say(f"  -> {folder}")
        written.append(folder)
    return written


def status(models: ModelPaths, operations: Iterable[Operation]) -> list[str]:
    """One line per component: present or missing, where, and its licence."""
    lines = []
    for component in components_for(operations):
        state = "present" if models.present(component.name) else "MISSING"
        lines.append(f"{state:8} {models.folder(component.name)}  {licence_line(component)}")
    return lines


def _snapshot(repo_id: str, allow_patterns: tuple[str, ...], folder: Path) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DownloadUnavailable(
            "downloading needs huggingface_hub: pip install 'headshot-bot[local]'"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo_id, allow_patterns=list(allow_patterns), local_dir=folder)
