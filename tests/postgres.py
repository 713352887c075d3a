"""A throw-away PostgreSQL server for the tests, from Debian's `postgresql` package.

`python -m tests.postgres -- pytest -q` starts a cluster in a temporary folder on a free loopback
port, runs the command with `TEST_POSTGRES_URL` pointing at it, and removes the cluster after.
The test session starts one itself when `TEST_POSTGRES_URL` is not set (see `tests/conftest.py`).

PostgreSQL refuses to run as root: as root, the cluster is run as the `postgres` account that
the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ENV = "TEST_POSTGRES_URL"
USER = "headshot"
INSTALL_HINT = (
    "the PostgreSQL tests need a server: install Debian's package (apt-get install postgresql) "
    f"or set {ENV}=postgresql+psycopg://user@host:port/db"
)
# Speed over durability: the cluster lives for one test run.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=400 -c listen_addresses=127.0.0.1"
)


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise PostgresUnavailable(INSTALL_HINT)
        return Path(on_path).parent
    return found[0].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(command: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """A fresh cluster for as long as the block runs; yields its SQLAlchemy URL."""
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="headshot-pg-"))
    data = root / "data"
    port = _free_port()
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    run = _as_server_user
    try:
        subprocess.run(
            run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"{SERVER_OPTIONS} -p {port} -k {root}"
        subprocess.run(
            run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(root / "log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _wait_until_accepting(port)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise PostgresUnavailable(
            f"could not start PostgreSQL: {detail[-1] if detail else exc}"
        ) from None
    finally:
        subprocess.run(
            run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_accepting(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop_by_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str]) -> int:
    command = list(argv[1:] if argv and argv[0] == "--" else argv)
    if not command:
        print("usage: python -m tests.postgres -- COMMAND [ARG…]", file=sys.stderr)
        return 2
    # Stopped by a signal (`timeout`, Ctrl-C from another terminal), the server is stopped too:
    # the signal becomes an exception, so the context manager below cleans up.
    signal.signal(signal.SIGTERM, _stop_by_signal)
    signal.signal(signal.SIGHUP, _stop_by_signal)
    try:
        with running_server() as url:
            print(f"tests.postgres: a throw-away PostgreSQL at {url}", file=sys.stderr)
            return subprocess.run(command, env={**os.environ, ENV: url}).returncode
    except PostgresUnavailable as exc:
        print(f"tests.postgres: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
