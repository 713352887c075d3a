"""The hot path keeps file I/O out of the event loop: from request to re-hosted image, nothing
on the loop's thread opens, lists or removes a file, or imports a module it has to search the
disk for (a missing optional module, looked for again on every call)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

# Run in a process of its own: an audit hook, once added, stays for the process's life.
SCRIPT = """
import asyncio, contextlib, json, sys, tempfile, threading
from pathlib import Path
import bench.throughput as throughput

seen = set()
watching = False
loop_thread = threading.main_thread()

def hook(event, args):
    if not watching or threading.current_thread() is not loop_thread:
        return
    if event == "import" and args[0] not in sys.modules:
        seen.add(f"import {args[0]}")
    elif event == "open" or event.startswith(("os.", "shutil.", "glob.")):
        seen.add(f"{event} {args[0]}")

@contextlib.contextmanager
def watched():
    global watching
    watching = True
    try:
        yield
    finally:
        watching = False

async def main():
    for jobs, around in ((10, contextlib.nullcontext), (40, watched)):
        with tempfile.TemporaryDirectory() as tmp, throughput.simulator_process(10) as port:
            await throughput.run(jobs, 4, 10, port, Path(tmp), metrics=False, around=around)

sys.addaudithook(hook)
asyncio.run(main())
print(json.dumps(sorted(seen)))
"""


def test_no_file_io_in_the_event_loop_from_request_to_rehosted_image() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
