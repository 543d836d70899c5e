"""Folder locks: one ``fcntl.flock`` per output folder, shared by the CLI and the app's jobs.

A lock is held for a stage's whole life by the process doing the work, so a second start on
the same folder (another terminal, the app, a ``--resume``) is refused with the holder's pid.
flock locks belong to the open file: they vanish with the process, kill -9 included.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from catalogtune.core.util import CatalogtuneError, write_failure

LOCK_NAME = ".lock"
"""The lock file inside a run folder (``RUN/.lock``)."""
RETRY_S = 0.5
"""How long a start retries before refusing: a ``lock_holder`` probe holds the lock for microseconds."""


@contextlib.contextmanager
def folder_lock(lock_file: str | Path, what: str, target: str | Path | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_file`` (holding this process's pid) for a block.

    A second holder is refused at once with a one-line ``CatalogtuneError`` naming ``what`` and
    the holder's pid. The lock dies with its process (kill -9 included); the file is removed
    on release. A lock that cannot be written (read-only, full disk) is an error naming
    ``target`` (the folder the user chose), not the lock file.
    """
    lock_file = Path(lock_file)
    while True:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _failure(exc, target) from None
        if not _flock_within(fd, RETRY_S):
            os.close(fd)
            holder = lock_holder(lock_file)
            pid = f" (pid {holder})" if holder and holder > 0 else ""
            raise CatalogtuneError(f"{what} is in use by another process{pid}; wait for it or stop it")
        # the file may have been removed by the previous holder between our open and flock
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: better now than after an hour of work
            raise _failure(exc, target or lock_file) from None
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # before unlocking: a waiter that opened it sees another inode
        os.close(fd)


def lock_holder(lock_file: str | Path) -> int | None:
    """The pid holding ``folder_lock(lock_file)``, or None when nobody holds it.

    Probes with a shared lock, which an exclusive holder refuses; it never creates the file.
    """
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _failure(exc: OSError, target: str | Path | None) -> BaseException:
    if target is not None:
        exc.filename = str(target)
    return write_failure(exc) or exc


def _flock_within(fd: int, seconds: float) -> bool:
    import fcntl

    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def run_lock(run_dir: str | Path, what: str | None = None) -> contextlib.AbstractContextManager:
    """``folder_lock`` on ``RUN_DIR/.lock``: the lock of a training run (CLI and app alike)."""
    run_dir = Path(run_dir)
    return folder_lock(run_dir / LOCK_NAME, what or f"the run folder {run_dir}", target=run_dir)
