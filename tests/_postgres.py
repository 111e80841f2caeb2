"""A throwaway PostgreSQL server for tests: its own data folder, port and socket.

``make test`` installs the server binaries (Debian's ``postgresql``) when they are
missing; a test that needs the server fails (never skips) when they are not there.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: `make test` installs the server (apt-get install postgresql)")
    return found


@dataclass
class PostgresServer:
    """A running test server: its URL, and a restart as an operator does one."""

    url: str
    restart: Callable[[], None]


@contextmanager
def postgres_server():
    """Yield the URL of a fresh database on a server of its own (removed afterwards)."""
    with postgres_instance() as server:
        yield server.url


@contextmanager
def postgres_instance():
    """A fresh database on a server of its own (removed afterwards).

    Its folder is not under pytest's tmp_path: that is private to root, and the server
    runs as the ``postgres`` user."""
    folder = Path(tempfile.mkdtemp(prefix="ccsearch-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, timeout=120)

    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    run(_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "start", "-o", options)

    def restart() -> None:  # every connection is cut; the server is back when this returns
        run(_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-m", "fast",
            "restart", "-o", options)

    try:
        run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "ccsearch")
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/ccsearch", restart)
    finally:
        run(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)
