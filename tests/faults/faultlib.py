"""Helpers of the fault-injection suite: child processes, kills, small file systems, comparisons.

Two kinds of child: ``spawn`` starts ``python faultchild.py COMMAND ...`` (a real CLI process,
for the stages whose imports are cheap: prepare, analyze, index); ``fork_cli`` forks this test
process and runs ``cli.main`` there (train, evaluate: torch and transformers are already loaded
here, a fresh interpreter would spend 15 s importing them on a busy 2-core machine). Either
child can be SIGKILLed at any moment; its stderr goes to a file the test reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
CHILD = HERE / "faultchild.py"
QUIET_ENV = {"TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "OMP_NUM_THREADS": "1", "ANONYMIZED_TELEMETRY": "False"}


@dataclass
class Child:
    """A running child: its pid, where its stderr goes, and (for spawned ones) the Popen."""

    pid: int
    stderr_path: Path
    popen: subprocess.Popen | None = None
    rc: int | None = None

    def wait(self, timeout: float = 120.0) -> int:
        """Exit status (negative: killed by that signal); kills the child when it overruns."""
        if self.rc is not None:
            return self.rc
        if self.popen is not None:
            try:
                self.rc = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.rc = self.popen.wait()
                pytest.fail(f"child {self.pid} ran past {timeout} s; stderr: {self.stderr()[-2000:]}")
            return self.rc
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
                return self.rc
            if time.monotonic() > deadline:
                self.kill()
                os.waitpid(self.pid, 0)
                pytest.fail(f"child {self.pid} ran past {timeout} s; stderr: {self.stderr()[-2000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as ``kill -9`` would."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def alive(self) -> bool:
        """Still running (not yet waited for)."""
        if self.rc is not None:
            return False
        if self.popen is not None:
            return self.popen.poll() is None
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.rc = os.waitstatus_to_exitcode(status)
            return False
        return True

    def stderr(self) -> str:
        """What the child wrote to stderr."""
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def spawn(args: list[str], stderr_path: Path, env: dict[str, str] | None = None) -> Child:
    """Start ``catalogtune ARGS`` as a fresh interpreter (faultchild.py arms the faults in ``env``)."""
    full = {**os.environ, **QUIET_ENV, **(env or {})}
    with open(stderr_path, "wb") as err:
        p = subprocess.Popen([sys.executable, str(CHILD), *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, env=full)
    return Child(p.pid, stderr_path, popen=p)


def fork_cli(args: list[str], stderr_path: Path, setup: Callable[[], None] | None = None) -> Child:
    """Fork this process and run ``cli.main(ARGS)`` in the child, stderr to ``stderr_path``.

    The child uses one thread (OpenMP and a fork do not mix) and no progress bars, so its
    stderr holds only what the CLI itself prints.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return Child(pid, stderr_path)
    rc = 1
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        _quiet_child(train=bool(args) and args[0] == "train")
        if setup is not None:
            setup()
        from catalogtune import cli

        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happens, the child must end here
        import traceback

        traceback.print_exc()
        rc = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(rc)


def _quiet_child(train: bool) -> None:
    import warnings

    os.environ.update(QUIET_ENV)
    warnings.simplefilter("ignore")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if train:
        from catalogtune.train import loop

        real_bar = loop._bar
        loop._bar = lambda total, initial, enabled: real_bar(total, initial, False)


def kill_at(spec: str) -> Callable[[], None]:
    """A ``fork_cli`` setup that SIGKILLs the child at a call (``faultchild.arm_kill`` syntax)."""
    def setup() -> None:
        sys.path.insert(0, str(HERE))
        import faultchild

        faultchild.arm_kill(spec)
    return setup


def fake_eval(delay: float = 0.0, plot: bool = False) -> Callable[[], None]:
    """A ``fork_cli`` setup: evaluate with faultchild's deterministic fake generator.

    Without ``plot`` the metrics PNG is skipped: drawing it is 80 % of such a run (2 s here),
    and report.json, which the tests compare, does not depend on it.
    """
    def setup() -> None:
        sys.path.insert(0, str(HERE))
        import faultchild
        from catalogtune.evaluate import report, stage

        gen = faultchild.FakeGenerator(delay)
        stage._open_generator = lambda cfg: (gen, "fake-model", "fake-adapter" if cfg.run is not None else None)
        if not plot:
            report.plot_metrics = lambda path, rep: None
    return setup


def both(*setups: Callable[[], None]) -> Callable[[], None]:
    """Run several setups in order."""
    def setup() -> None:
        for s in setups:
            s()
    return setup


def assert_one_line_error(child: Child, stage: str, *needles: str) -> str:
    """rc 2 and exactly one stderr line, ``catalogtune STAGE: error: ...`` holding ``needles``."""
    rc = child.wait()
    err = child.stderr()
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, f"rc {rc}, stderr:\n{err[-3000:]}"
    assert lines[0].startswith(f"catalogtune {stage}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def temp_leftovers(folder: Path) -> list[str]:
    """Temporary names (``.x.tmp``, ``.x.old``) anywhere under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".old")))


def wait_for(pred: Callable[[], bool], timeout: float = 60.0, child: Child | None = None) -> None:
    """Poll ``pred`` until true; fails early when ``child`` ends first."""
    deadline = time.monotonic() + timeout
    while not pred():
        if child is not None and not child.alive():
            pytest.fail(f"child ended (rc {child.rc}) before the awaited moment: {child.stderr()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.02)


# --- stage command lines ------------------------------------------------------------------------


def train_args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    """`catalogtune train` on the tiny model: 6 steps of 4 records, checkpoints every 2."""
    return ["train", "--data", str(data), "--out", str(out), "--model", str(model), "--batch-size", "4",
            "--max-length", "48", "--lr", "0.01", "--eval-every", "2", "--save-every", "2", "--patience", "0",
            "--max-steps", "6", "--lora-r", "4", "--lora-alpha", "8", "--max-samples", "16",
            "--max-val-samples", "4", "--no-memory-probe", *extra]


def eval_args(prepared: Path, out: Path, run_dir: Path) -> list[str]:
    """`catalogtune evaluate` of base and finetuned on 8 test and 4 seen records (fake generator)."""
    return ["evaluate", "--data", str(prepared), "--run", str(run_dir), "--out", str(out), "--limit", "8",
            "--seen-limit", "4", "--batch-size", "2", "--embedder", "hash", "--max-new-tokens", "16",
            "--no-probes", "--bootstrap", "50", "--systems", "base,finetuned"]


def eval_report(out: Path) -> dict:
    """report.json without what differs between runs: timings, the plan (what this call had left to
    generate, and its rates), and its own folder named <out>."""
    from catalogtune.core.util import read_json

    rep = read_json(out / "report.json")
    rep.pop("timing", None)
    rep.pop("plan", None)
    return json.loads(json.dumps(rep, sort_keys=True).replace(str(out), "<out>"))


def eval_reference(prepared: Path, out: Path, run_dir: Path, monkeypatch) -> dict:
    """An uninterrupted evaluation in this process (it also warms the imports forks inherit)."""
    import faultchild
    from catalogtune.evaluate import report, stage

    gen = faultchild.FakeGenerator(0.0)
    with monkeypatch.context() as m:
        m.setattr(stage, "_open_generator", lambda cfg: (gen, "fake-model", "fake-adapter"))
        m.setattr(report, "plot_metrics", lambda path, rep: None)
        cfg = stage.EvalConfig(out=out, data=prepared, run=run_dir, limit=8, seen_limit=4, batch_size=2,
                               embedder="hash", max_new_tokens=16, probes=False, bootstrap=50,
                               systems=["base", "finetuned"])
        stage.run(cfg, log=lambda msg: None)
    return eval_report(out)


# --- invented data ------------------------------------------------------------------------------


WORDS = ("red blue green steel cotton wool oak maple kids travel garden kitchen vintage classic "
         "deluxe compact portable wireless solar leather ceramic glass bamboo linen").split()
NOUNS = ("kettle lamp chair backpack guitar novel puzzle scarf teapot blanket clock mug notebook "
         "speaker tent jacket bottle candle basket mirror").split()


def invent(n: int, seed: int = 0) -> list[dict]:
    """``n`` invented catalogue records with distinct titles and a few sentences each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, noun = rng.choice(WORDS), rng.choice(WORDS), rng.choice(NOUNS)
        title = f"{a.title()} {b.title()} {noun.title()} No {i}"
        sentences = [f"This {a} {noun} is made of {b} and suits everyday use.",
                     f"Model {i} ships with a {rng.choice(WORDS)} case and a two year warranty.",
                     f"Customers like its {rng.choice(WORDS)} finish and {rng.choice(WORDS)} details."]
        out.append({"uid": f"u{i}", "title": title, "content": " ".join(sentences[: 2 + i % 2])})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Records as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- small file systems ---------------------------------------------------------------------------


def _mount(target: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a full or read-only disk)")
    target.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")


@contextlib.contextmanager
def full_disk(target: Path, size_kb: int = 64, free_kb: int = 16) -> Iterator[Path]:
    """A ``size_kb`` tmpfs at ``target`` with a filler file leaving about ``free_kb`` free."""
    _mount(target, f"size={size_kb}k,mode=0755")
    try:
        with open(target / ".filler", "wb") as fh:
            fh.write(b"\0" * ((size_kb - free_kb) * 1024))
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextlib.contextmanager
def read_only_dir(target: Path) -> Iterator[Path]:
    """A folder nobody can write: a read-only tmpfs as root (root ignores modes), else mode 0555."""
    if os.geteuid() == 0:
        _mount(target, "size=64k,ro")
        try:
            yield target
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
    else:
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
