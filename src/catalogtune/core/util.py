"""Small shared helpers: user errors, optional imports, workspace paths, atomic writes."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
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
    """Write a file via a temporary sibling and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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

    A kill at any moment leaves either the old folder or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
