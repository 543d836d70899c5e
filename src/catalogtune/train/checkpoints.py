"""Checkpoints and run-folder files of a training run: atomic, resumable, at most two kept.

``checkpoints/step-N/`` holds ``trainable.safetensors`` (LoRA weights), ``optimizer.pt``,
``state.json`` (counters, best validation loss) and ``best.safetensors`` (the LoRA weights of
the best validation loss). Each folder is filled aside and swapped in (``util.atomic_dir``),
so a kill at any moment leaves complete checkpoints only.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from catalogtune.core.util import CatalogtuneError, atomic_dir, atomic_write, read_json, remove_path

KEEP = 2
"""Checkpoints kept (the newest ones)."""
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoopState:
    """Counters that a checkpoint carries over to a resumed run."""

    step: int = 0
    tokens: int = 0
    useful_tokens: int = 0
    train_s: float = 0.0
    wall_s: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    initial_val_loss: float | None = None
    last_val_loss: float | None = None
    last_loss: float | None = None
    bad_evals: int = 0
    val_history: list[list[float]] = field(default_factory=list)
    total_steps: int | None = None
    """The run's step count once fixed by a budget: a resumed run keeps it (same lr schedule)."""
    sample_n: int | None = None
    """Records of the stratified sample a budget shorter than one epoch trains on (None: all); a resumed run draws the same."""


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / "state.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(run_dir: Path, state: LoopState, trainable: dict, optimizer_state: dict,
                    best: dict | None) -> Path:
    """Write ``checkpoints/step-N`` atomically and delete all but the newest ``KEEP``."""
    import torch
    from safetensors.torch import save_file

    target = run_dir / "checkpoints" / f"step-{state.step}"
    with atomic_dir(target) as tmp:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump(asdict(state), fh, indent=2)
    for _, old in checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Delete the temporary files and folders a killed run left in RUN_DIR and its checkpoints/.

    Only safe under the run's lock (``core.locks.run_lock``): then no other process writes here.
    Returns the names removed.
    """
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith((".tmp", ".old")):
                remove_path(p)
                removed.append(p.name)
    return removed


RESUME_FREE = frozenset({
    "max_steps", "epochs", "patience", "eval_every", "save_every", "merge", "resume", "overwrite",
    "memory_probe", "gradient_checkpointing", "out", "budget", "initial_val_loss",
})
"""TrainConfig fields a resumed run may change: when to stop, validate and save, what to write at
the end, and memory-only switches. Any other change (lr, LoRA shape, data, batch, seed...) would
silently mix two recipes in one run."""
_PATH_FIELDS = ("data", "rag_index", "model")


def _same(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return float(old) == float(new)
    if key in _PATH_FIELDS and isinstance(old, str) and isinstance(new, str):
        a, b = Path(old).expanduser(), Path(new).expanduser()
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def recipe_changes(saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``"lr 0.001 -> 0.005"`` for each field of ``new`` that differs from the ``saved`` config.

    Fields in ``RESUME_FREE`` may differ; a field missing from ``saved`` (an older run) counts
    as its default in ``defaults``.
    """
    changes = []
    for key, value in new.items():
        if key in RESUME_FREE:
            continue
        old = saved.get(key, defaults.get(key))
        if not _same(key, old, value):
            changes.append(f"{key} {old!r} -> {value!r}")
    return changes


def load_checkpoint(path: Path) -> tuple[LoopState, dict, dict, dict | None]:
    """(state, trainable weights, optimizer state, best weights or None) from a checkpoint."""
    import torch
    from safetensors.torch import load_file

    try:
        raw = read_json(path / "state.json")
        state = LoopState(**raw)
        trainable = load_file(str(path / "trainable.safetensors"))
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        best_file = path / "best.safetensors"
        best = load_file(str(best_file)) if best_file.is_file() else None
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise CatalogtuneError(f"checkpoint {path} is unreadable: {str(exc).splitlines()[0]}") from None
    return state, trainable, opt, best


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed every step."""

    def __init__(self, path: Path, keep_upto: int | None):
        self.path = path
        if keep_upto is None:
            path.unlink(missing_ok=True)
        elif path.is_file():
            self._truncate(keep_upto)
        self._fh = None

    def _truncate(self, step: int) -> None:
        # Steps after the checkpoint will be redone; a torn last line (killed mid-write) goes too.
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", step + 1) <= step:
                kept.append(line)
        with atomic_write(self.path) as fh:
            fh.write("".join(k + "\n" for k in kept))

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TensorBoard:
    """TensorBoard scalars under ``tb/``; a no-op when tensorboard cannot be imported."""

    def __init__(self, path: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._w = SummaryWriter(str(path))
        except ImportError:
            self._w = None

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Log the non-empty values at ``step``."""
        if self._w is not None:
            for k, v in values.items():
                if v is not None:
                    self._w.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close."""
        if self._w is not None:
            self._w.close()
