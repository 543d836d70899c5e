"""Start ``catalogtune app`` on a free 127.0.0.1 port, wait until it answers, stop it again.

Used by the walkthrough video (``app/video.py``) and the browser tests, so both serve the app
exactly as ``catalogtune app`` does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from catalogtune.core.util import CatalogtuneError

HOST = "127.0.0.1"
"""Loopback only: the app is never reachable from another machine."""


def free_port() -> int:
    """A TCP port nobody listens on at the moment."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the wrapper (it forwards to streamlit), then SIGKILL to whatever is left of its group."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(workspace: Path, log: Path, port: int | None = None, timeout_s: float = 90.0) -> Iterator[str]:
    """``catalogtune app --workspace WORKSPACE`` in the background; yields its URL; stops it on exit.

    The server's output goes to ``log`` (a file, not a pipe nobody reads); a server that does not
    answer within ``timeout_s`` is a one-line error quoting the end of that log.
    """
    port = port or free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "catalogtune", "app", "--host", HOST, "--port", str(port),
             "--workspace", str(workspace)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        url = f"http://{HOST}:{port}"
        try:
            _wait_healthy(proc, url, log, timeout_s)
            yield url
        finally:
            stop(proc)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise CatalogtuneError(f"the app did not answer on {url}: {tail or 'no output'}")
        time.sleep(0.3)
