"""Fixtures of the fault-injection suite: invented data, a prepared folder, and the orphan check.

Every test here runs with this process as a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``):
a process orphaned by a kill -9 (a prepare worker, a resource tracker) is re-parented to the test
instead of PID 1, so ``psutil`` sees it, and the test fails if any is still running at its end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultlib import invent, write_jsonl  # noqa: E402

# Hypothesis keeps caches in ``.hypothesis/`` of the current folder; here, a cache in the temp
# folder instead (it is read while test modules are collected, before any fixture runs).
try:
    from hypothesis import configuration
except ImportError:  # test_properties.py then says what is missing
    configuration = None
if configuration is not None:
    configuration.set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "catalogtune-hypothesis"))


@pytest.fixture(scope="session")
def raw_small(tmp_path_factory) -> Path:
    """400 invented records (about 60 KB): prepare works in-process on them."""
    return write_jsonl(tmp_path_factory.mktemp("raw") / "small.jsonl", invent(400))


@pytest.fixture(scope="session")
def raw_big(tmp_path_factory) -> Path:
    """3,000 invented records (650 KB): prepare with 2 workers and 20 KB chunks takes about 1.5 s."""
    return write_jsonl(tmp_path_factory.mktemp("raw") / "big.jsonl", invent(3000, seed=1))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, raw_small) -> Path:
    """``raw_small`` prepared (train/val/test): the input of index, analyze, train and evaluate."""
    from catalogtune.data.prepare import PrepareConfig, run

    out = tmp_path_factory.mktemp("faults") / "prep"
    run(PrepareConfig(inputs=[raw_small], out=out))
    return out


@pytest.fixture(scope="session")
def warm_model(tiny_model_dir) -> Path:
    """The tiny model, loaded once here so forked children find transformers' modules imported."""
    from catalogtune.core import models

    models.load(tiny_model_dir)
    import catalogtune.train.loop  # noqa: F401

    return tiny_model_dir


def _subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _running(p: psutil.Process) -> bool:
    try:
        if p.status() == psutil.STATUS_ZOMBIE:
            if p.ppid() == os.getpid():
                os.waitpid(p.pid, os.WNOHANG)  # an orphan that ended: reap it
            return False
        return True
    except (psutil.NoSuchProcess, ChildProcessError):
        return False


@pytest.fixture(autouse=True)
def no_orphans():
    """No process started during the test (or orphaned by its kills) may outlive it."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    _subreaper(True)
    yield
    deadline = time.monotonic() + 10.0
    from multiprocessing import resource_tracker

    # this process's own resource tracker (an in-process prepare with workers starts it) lives as
    # long as this process, by design; a killed child's tracker is another pid
    before.add(getattr(resource_tracker._resource_tracker, "_pid", None))
    while True:
        left = [p for p in me.children(recursive=True) if p.pid not in before and _running(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    desc = []
    for p in left:
        try:
            desc.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
        except psutil.Error:
            pass
    _subreaper(False)
    assert not desc, f"processes outlived the test: {desc}"
