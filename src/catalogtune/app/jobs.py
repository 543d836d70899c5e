"""Background jobs (training, evaluation) and workspace paths for the app; no Streamlit here.

A job is a ``python -m catalogtune ...`` child started in its own session, so it outlives the
page and the app. Its record (pid, process start time, argv, log) lives in
``WORKSPACE/.jobs/KEY.json``; a start takes an ``fcntl`` lock on ``KEY.lock`` around
"is one alive? no -> spawn -> write record", so two concurrent starts of one target cannot both
win. Records sit outside the target folder because stages may swap their output folder
atomically. A training run also holds ``RUN/.lock`` for its whole life (``core.locks``, the
same lock the CLI takes), so a run started from a terminal counts as running here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from catalogtune.core.locks import LOCK_NAME, lock_holder
from catalogtune.core.util import CatalogtuneError, atomic_write_json, read_json

DEFAULT_WORKSPACE = "demo-out"
"""Where the demo writes; ``--workspace`` or ``CATALOGTUNE_WORKSPACE`` override it."""
LAUNCHER = [sys.executable, "-m", "catalogtune"]
"""What a job's arguments are appended to (tests point it at a fake stage)."""
LOG_TAIL_BYTES = 4000
"""How much of a job's log the pages show."""
SEARCH_FILES = ("study.db", "trials.json")
"""A folder holding either is a hyper-parameter search (``catalogtune tune --out``)."""
_NOT_CONTAINERS = {"prep", "eda", "eval"}
_RUN_PARTS = {"adapter", "checkpoints", "tb", "trials", "cache", "plots"}


class Workspace:
    """The folder the app reads and writes; every user-typed path must stay inside it."""

    def __init__(self, root: str | Path | None = None) -> None:
        root = root or os.environ.get("CATALOGTUNE_WORKSPACE") or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()

    def resolve(self, user_path: str | Path, must_exist: bool = False, what: str = "folder") -> Path:
        """A path typed by the user, relative to the workspace; refuses escapes and empty input."""
        text = str(user_path).strip()
        if not text or "\x00" in text:
            raise CatalogtuneError(f"the {what} path is empty")
        if len(text) > 1000:
            raise CatalogtuneError(f"the {what} path is too long ({len(text)} characters)")
        path = Path(text).expanduser()
        path = (path if path.is_absolute() else self.root / path).resolve()  # follows symlinks too
        if path != self.root and self.root not in path.parents:
            raise CatalogtuneError(f"{text!r} is outside the workspace {self.root}")
        if must_exist and not path.exists():
            raise CatalogtuneError(f"the {what} {self.rel(path)!r} does not exist in the workspace")
        return path

    def rel(self, path: Path) -> str:
        """``path`` relative to the workspace, for messages."""
        try:
            return str(Path(path).resolve().relative_to(self.root)) or "."
        except ValueError:
            return str(path)

    @property
    def prep(self) -> Path:
        """Prepared splits and the quality report."""
        return self.root / "prep"

    @property
    def eda(self) -> Path:
        """The analysis report."""
        return self.root / "eda"

    @property
    def index(self) -> Path:
        """The ChromaDB reference index."""
        return self.root / "index"

    @property
    def eval(self) -> Path:
        """The evaluation report."""
        return self.root / "eval"

    def runs(self) -> list[str]:
        """Training run folders (``run`` and ``runs/NAME``), relative to the workspace."""
        found = []
        if (self.root / "run").is_dir():
            found.append("run")
        if (self.root / "runs").is_dir():
            found += [f"runs/{p.name}" for p in sorted((self.root / "runs").iterdir()) if p.is_dir()]
        return found

    def _folders(self) -> Iterator[Path]:
        """Folders one and two levels down, where searches and indexes may live (heavy parts skipped)."""
        for top in sorted(self.root.iterdir()) if self.root.is_dir() else ():
            if top.is_dir() and not top.name.startswith(".") and top.name not in _NOT_CONTAINERS:
                yield top
                with contextlib.suppress(OSError):
                    yield from (p for p in sorted(top.iterdir()) if p.is_dir() and p.name not in _RUN_PARTS)

    def searches(self) -> list[str]:
        """Hyper-parameter search folders (``catalogtune tune --out``), relative to the workspace."""
        return [self.rel(p) for p in self._folders() if any((p / n).is_file() for n in SEARCH_FILES)]

    def indexes(self) -> list[str]:
        """RAG index folders (``index.json`` inside), ``index`` first."""
        found = [self.rel(p) for p in self._folders() if (p / "index.json").is_file()]
        return sorted(found, key=lambda r: (r != "index", r))

    def all_runs(self) -> list[str]:
        """Every training run: ``run``, ``runs/NAME`` and each search's ``trials/trial-NNN``."""
        searches = self.searches()
        found = [r for r in self.runs() if r not in searches]
        for search in searches:
            trials = self.root / search / "trials"
            if trials.is_dir():
                found += [f"{search}/trials/{p.name}" for p in sorted(trials.iterdir()) if p.is_dir()]
        return found

    def job_key(self, target: Path) -> str:
        """A file-name-safe key for a job's target folder (``runs/a`` -> ``runs__a``)."""
        return self.rel(target).replace(os.sep, "__")


@dataclass
class JobStatus:
    """What a page shows about one job's target folder."""

    state: str
    """``none``, ``starting``, ``running``, ``finished``, ``cancelled``, ``failed`` or ``died``."""
    alive: bool = False
    """Whether the job's process is running now."""
    pid: int | None = None
    """The child's process id, if known."""
    progress: dict[str, Any] = field(default_factory=dict)
    """The target's progress.json (step, total_steps, eta_s, loss, val_loss), if any."""
    log_tail: str = ""
    """The end of the job's log."""
    argv: list[str] = field(default_factory=list)
    """The command the job was started with (never holds a token)."""


# --- process liveness -------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None if gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces or brackets
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when given, is the process started at ``start_time``."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if not Path("/proc").is_dir():
        return True
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


# --- records ------------------------------------------------------------------------------------


def _jobs_dir(ws: Workspace, create: bool = True) -> Path:
    path = ws.root / ".jobs"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(ws: Workspace, key: str) -> Iterator[None]:
    """Hold the job's start lock; a second starter waits at most a few seconds, then is refused."""
    fh = open(_jobs_dir(ws) / f"{key}.lock", "a+")
    try:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CatalogtuneError(f"another start of {key!r} is in progress") from None
                time.sleep(0.05)
        yield
    finally:
        fh.close()  # closing releases the lock


def _record(ws: Workspace, key: str) -> dict[str, Any]:
    path = _jobs_dir(ws, create=False) / f"{key}.json"  # looking must not create folders
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _progress(target: Path) -> dict[str, Any]:
    try:
        data = read_json(target / "progress.json")
    except (OSError, ValueError):
        return {}  # absent, or being replaced: the next refresh reads it
    return data if isinstance(data, dict) else {}


def _tail(path: Path, nbytes: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - nbytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _running_pid(ws: Workspace, target: Path) -> int | None:
    """The pid of a live job on ``target``: ours (record) or one started elsewhere (its lock, progress.json)."""
    rec = _record(ws, ws.job_key(target))
    if rec and pid_alive(rec.get("pid"), rec.get("start_time")):
        return int(rec["pid"])
    holder = lock_holder(target / LOCK_NAME)
    if holder is not None and holder > 0:
        return holder
    prog = _progress(target)
    if prog.get("state") == "running" and isinstance(prog.get("pid"), int) and pid_alive(prog["pid"]):
        return int(prog["pid"])
    return None


# --- public API ---------------------------------------------------------------------------------


def start(
    ws: Workspace,
    target: Path,
    argv: list[str],
    log: Path,
    token: str | None = None,
    kind: str = "job",
) -> int:
    """Start ``python -m catalogtune ARGV`` in the background for ``target``; return its pid.

    Refused with a one-line error when a job on ``target`` is alive. ``token`` reaches the child
    only through its environment (``HF_TOKEN``); it is never written anywhere.
    """
    key = ws.job_key(target)
    with _locked(ws, key):
        pid = _running_pid(ws, target)
        if pid is not None:
            raise CatalogtuneError(f"a {kind} is already running for {ws.rel(target)!r} (pid {pid})")
        env = dict(os.environ)
        if token:
            env["HF_TOKEN"] = token
        env["PYTHONUNBUFFERED"] = "1"  # the log shows progress as it happens
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [*LAUNCHER, *argv]
        with open(log, "ab") as out:
            out.write(f"\n$ catalogtune {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the page, the app and Ctrl-C in its terminal
                close_fds=True, env=env,
            )
        # Reap it when it ends so a finished child does not linger as a zombie of the app.
        threading.Thread(target=proc.wait, daemon=True).start()
        atomic_write_json(
            _jobs_dir(ws) / f"{key}.json",
            {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": argv,
             "log": str(log), "kind": kind, "target": ws.rel(target), "started": time.time()},
        )
        return proc.pid


def status(ws: Workspace, target: Path) -> JobStatus:
    """The state of the job on ``target`` from its record, its progress.json and its log."""
    rec = _record(ws, ws.job_key(target))
    prog = _progress(target)
    pid = _running_pid(ws, target)
    alive = pid is not None
    log = Path(rec["log"]) if rec.get("log") else target / "train.log"
    saved = str(prog.get("state") or "")
    if alive:
        # Until the new job writes progress.json, the file may be an earlier run's; a stage that
        # writes none (evaluation) is simply running.
        state = "running" if saved in ("running", "") else "starting"
    elif saved == "running":
        state = "died"  # says running but nobody is: killed without a chance to save
    elif saved:
        state = saved
    elif rec:
        cancelled = (rec.get("cancelled") or 0) >= rec.get("started", 0) > 0
        state = "cancelled" if cancelled else "finished" if _exit_ok(rec, target) else "failed"
    else:
        state = "none"
    return JobStatus(state=state, alive=alive, pid=pid or rec.get("pid"), progress=prog,
                     log_tail=_tail(log) if log.exists() else "", argv=list(rec.get("argv") or []))


REPORTS = ("report.json", "trials.json")
"""What a job without progress.json leaves when it ends well (evaluation, hyper-parameter search)."""


def _exit_ok(rec: dict[str, Any], target: Path) -> bool:
    """For jobs without progress.json (evaluation, search): did it leave its report?"""
    started = rec.get("started", 0)
    return any((target / n).is_file() and (target / n).stat().st_mtime >= started for n in REPORTS)


def cancel(ws: Workspace, target: Path, wait_s: float = 0.0) -> bool:
    """Ask the job on ``target`` to stop (SIGTERM: the trainer checkpoints, then exits).

    Returns whether a job was signalled; waits up to ``wait_s`` seconds for it to end.
    """
    pid = _running_pid(ws, target)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    key = ws.job_key(target)
    rec = _record(ws, key)
    if rec.get("pid") == pid:  # a job without progress.json then reads "cancelled", not "failed"
        with contextlib.suppress(CatalogtuneError):
            atomic_write_json(_jobs_dir(ws) / f"{key}.json", {**rec, "cancelled": time.time()})
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    return True


def read_metrics(target: Path, max_lines: int = 100_000) -> list[dict[str, Any]]:
    """The rows of ``target/metrics.jsonl``; a half-written or bad line is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        with open(target / "metrics.jsonl", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= max_lines:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the trainer may be writing this line right now
                if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
                    rows.append(row)
    except OSError:
        pass
    return rows
