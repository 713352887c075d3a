"""Whether this machine can run the local backend, asked without importing torch here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

_COUNT_GPUS = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"


def gpu_visible(timeout: float = 120.0) -> bool:
    """True when torch is installed and sees at least one CUDA GPU (checked in a child
    process, so that the bot's own process never loads torch)."""
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
            [sys.executable, "-c", _COUNT_GPUS],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip().isdigit() and int(done.stdout) > 0


def local_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("torch", "diffusers", "transformers"))
