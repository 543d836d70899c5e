"""Small shared helpers: user errors, optional imports, workspace paths, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class CatalogtuneError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line."""


def require(module: str, extra: str, package: str | None = None) -> Any:
    """Import an optional dependency, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = package or module.split(".")[0]
        raise CatalogtuneError(
            f"{pkg} is needed for this command: pip install 'catalogtune[{extra}]' ({exc})"
        ) from exc


def home() -> Path:
    """The catalogtune cache folder (models converted from GGUF live here).

    ``CATALOGTUNE_HOME`` overrides it; tests point it at a temporary folder.
    """
    path = Path(os.environ.get("CATALOGTUNE_HOME") or Path.home() / ".cache" / "catalogtune")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write a file via a temporary sibling and ``os.replace``: readers never see half a file.

    A full disk, a read-only folder or a missing permission is a ``CatalogtuneError`` naming
    ``path`` (the temporary file is removed first).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise (write_failure(exc, path) or exc) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        err = write_failure(exc, path) if isinstance(exc, Exception) else None
        if err is None or err is exc:
            raise
        raise err from exc


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Dump ``obj`` as JSON atomically."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=indent, ensure_ascii=False, default=str)
        fh.write("\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling folder, then swap it in place of ``path``.

    A kill at any moment leaves either the old folder or the new one, never a mix; a write
    failure (full disk, read-only) is a ``CatalogtuneError`` naming the file under ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the swap: a folder like mkdir's
    except OSError as exc:
        raise (write_failure(exc, path) or exc) from None
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_failure(exc, path, tmp) if isinstance(exc, Exception) else None
        if err is None or err is exc:
            raise
        raise err from exc


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- temporary names ---------------------------------------------------------------------------
# Temporary siblings are named ".NAME.PID.RANDOM.tmp": a later write of NAME removes those whose
# process is gone (killed mid-write), and never those of a writer still running.


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _remove_dead_temps(path: Path) -> None:
    """Delete temporary siblings of ``path`` left by killed processes."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and not _pid_alive(int(m.group(1))):
            remove_path(Path(entry.path))


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; a path that is already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _exchange(a: Path, b: Path) -> bool | None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    True when swapped, False when ``b`` does not exist, None when this system cannot do it.
    """
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return False
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return None  # the file system (or a seccomp filter) does not support it
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder ``tmp`` at ``path``; the old folder (if any) is deleted afterwards.

    An atomic exchange means ``path`` always exists: a kill between two renames would
    otherwise leave neither the old output nor the new one in place.
    """
    for _ in range(100):  # only loops while another process swaps the same path
        try:
            os.rename(tmp, path)  # no folder (or an empty one) at path
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        swapped = _exchange(tmp, path)
        if swapped:
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
            return
        if swapped is None:
            break
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# --- write failures ----------------------------------------------------------------------------

_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
}
# Libraries that lose the errno (pyarrow, safetensors, SQLite under ChromaDB) keep its text.
_WRITE_TEXTS = (
    ("no space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC), ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS), ("readonly database", errno.EROFS),
    ("permission denied", errno.EACCES),
)
# torch.save reports a short write only as its zip writer's position check: the cause is
# found by looking at the file system (see _diagnose).
_TORCH_WRITE = re.compile(r"inline_container\.cc|PytorchStreamWriter failed|unexpected pos \d+ vs \d+")
_TEMP_PART = re.compile(r"\.(.+?)(?:\.\d+)?\.[A-Za-z0-9_]{8}\.tmp")


def _write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write hidden in ``exc`` or its causes; 0 = a write failed, cause unknown."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            return exc.errno
        text = str(exc).lower()
        for needle, code in _WRITE_TEXTS:
            if needle in text:
                return code
        if isinstance(exc, RuntimeError) and _TORCH_WRITE.search(str(exc)):
            return 0
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _public_path(path: Path, tmp: Path | None, target: Path | None) -> Path:
    """``path`` with temporary names replaced by the names they stand for."""
    if tmp is not None and target is not None:
        with contextlib.suppress(ValueError):
            return target / Path(path).relative_to(tmp)
    parts = [m.group(1) if (m := _TEMP_PART.fullmatch(p)) else p for p in Path(path).parts]
    return Path(*parts) if parts else Path(path)


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (its nearest existing folder)."""
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _diagnose(path: Path) -> int:
    """Why a write under ``path`` failed when the library did not say: read-only, full, or unknown."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return errno.EIO
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 1 << 20 or st.f_favail == 0:
        return errno.ENOSPC
    return errno.EIO


def human_bytes(n: int) -> str:
    """``12 KB``, ``3.4 MB``: sizes for one-line messages (1 KB = 1024 bytes)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 and unit != "KB" else f"{value:.0f} {unit}"
    return f"{n} B"


def write_failure(exc: BaseException, path: str | Path | None = None,
                  tmp: Path | None = None) -> CatalogtuneError | None:
    """A one-line error for ``exc`` when it is a failed write, else None.

    Recognises full disks, quotas, read-only file systems and missing permissions, also when a
    library wrapped them (pyarrow, safetensors, torch.save, SQLite). The message names the file
    (``exc.filename``, else ``path``; temporary names mapped back to the final ones) and, for a
    full disk, the space left there: ``no space left on device writing /x/y (free: 12 KB)``.
    """
    if isinstance(exc, CatalogtuneError):
        return exc
    code = _write_errno(exc)
    if code is None:
        return None
    filename = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    where = Path(os.fsdecode(filename)) if filename else (Path(path) if path is not None else None)
    if where is None:
        where = Path.cwd()
    where = _public_path(where, tmp, Path(path) if path is not None else None)
    if code == 0:
        code = _diagnose(where)
    reason = _WRITE_ERRNOS.get(code, "write failed")
    msg = f"{reason} writing {where}"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        free = free_bytes(where)
        if free is not None:
            msg += f" (free: {human_bytes(free)})"
    return CatalogtuneError(msg)


def read_json(path: str | Path) -> Any:
    """Load a JSON file."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (and waited-for children) in MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0  # ru_maxrss is KiB on Linux


SHARED_FILES = ("amazon_titles_sample.jsonl", "amazon_titles_more.jsonl")
"""The shared real records (400 + 396), read in place from ``../shared/data/``."""


def shared_data() -> list[Path]:
    """Every shared real file found beside the sample (``shared_sample``'s folder); [] without it."""
    first = shared_sample()
    if first is None:
        return []
    return [first] + [p for name in SHARED_FILES[1:] if (p := first.with_name(name)).is_file()]


def shared_sample() -> Path | None:
    """The shared real sample (``../shared/data/amazon_titles_sample.jsonl``), if present.

    ``CATALOGTUNE_SAMPLE`` overrides; otherwise look beside the current folder and beside the
    source checkout.
    """
    env = os.environ.get("CATALOGTUNE_SAMPLE")
    candidates = [Path(env)] if env else []
    rel = Path("shared/data/amazon_titles_sample.jsonl")
    candidates += [Path.cwd().parent / rel, Path(__file__).resolve().parents[4] / rel]
    for c in candidates:
        if c.is_file():
            return c
    return None


def auto_threads(load_avg: float, default: int) -> int:
    """torch's default thread count on a quiet machine, 1 on an oversubscribed one.

    Measured here (load ~13 on 2 cores, smollm2-135m, 16 prompts): 2 threads gave 2.5 batched
    tokens/s, 1 thread 15.9, because every multi-threaded matmul waits at a barrier for a thread
    the scheduler has parked (serve at load ~3.7: 8.1 s with 2 threads, 0.1 s with 1).
    """
    import os

    return 1 if load_avg > (os.cpu_count() or 1) else default


@contextlib.contextmanager
def torch_threads(threads: int | None = None, respect_env: bool = False) -> Iterator[int]:
    """Set torch's process-wide thread count for a block and give the old one back after.

    ``threads`` None: ``auto_threads`` of the load average (1 on an oversubscribed machine);
    ``respect_env`` leaves the count alone when ``OMP_NUM_THREADS`` is set. Yields the count used.
    """
    import os

    import torch

    old = torch.get_num_threads()
    if threads is None:
        threads = old if respect_env and "OMP_NUM_THREADS" in os.environ else auto_threads(os.getloadavg()[0], old)
    torch.set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        torch.set_num_threads(old)


def budget_seconds(text: str | int | float) -> float:
    """Seconds in a budget such as ``90s``, ``30m``, ``1.5h`` (a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"budget must look like 90s, 30m or 2h, not {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
