"""`catalogtune train`: LoRA fine-tuning of a base model on the catalogue (title -> description).

``run(TrainConfig(data=DIR, out=RUN_DIR))`` checks every input first (data splits, model name,
CUDA-only options), then trains with ``train_loop`` and writes RUN_DIR: ``adapter/``,
``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``progress.json``, ``tb/``,
``checkpoints/step-N/``. The same command runs under ``accelerate launch`` / ``torchrun``.
Without ``--config`` the preset ``configs/cpu-smollm2.yaml`` applies (equal to the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, budget_seconds, read_json

# OpenMP threads wait for the next parallel region by spinning a bounded time, then sleep.
# A training step is thousands of short parallel ops a few microseconds apart: threads that
# sleep at once (OMP_WAIT_POLICY=PASSIVE) pay a wake-up on each, 15 % of a SmolLM2 step on 2
# cores; spinning without bound (ACTIVE) burns the cores other jobs share. libgomp reads this
# when torch loads, so it is set here, before any torch import of the `train` command; a
# user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_PRESET = CONFIGS / "cpu-smollm2.yaml"


@dataclass
class TrainConfig:
    """Options of one fine-tuning run (YAML preset keys and `--flags` alike)."""

    data: Path
    """Prepared data folder with train.parquet and val.parquet."""
    out: Path
    """Run folder: adapter/, checkpoints/, metrics.jsonl, summary.json, tb/."""
    model: str = "smollm2-135m"
    """Base model: a registered name (see `catalogtune models`) or a model folder."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    epochs: float = 2.0
    """Passes over the training split when max_steps is not given."""
    budget: str | None = None
    """Wall-time budget for the steps (90s, 30m, 2h): when the plan projects more, the run keeps the
    steps that fit (the seeded schedule's first ones, a random subset of the data) and says so."""
    batch_size: int = 8
    """Examples per micro-batch (length-grouped, so little padding)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with linear warmup before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0 = no clipping)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0 = off: measured 2x faster on CPU; early stopping guards overfitting)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get LoRA; "all-linear" = every linear layer of the decoder."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): a bit better, slower."""
    load_in_4bit: bool = False
    """QLoRA: load the base model in 4-bit NF4 (CUDA and bitsandbytes only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30% slower (off on CPU)."""
    memory_probe: bool = True
    initial_val_loss: float | None = None
    """The untrained model's validation loss when it is already known (``tune`` passes the study's:
    every trial starts from the same base model and validation records, and LoRA starts as a no-op),
    so the step-0 validation is not run again; None: measure it."""
    """Run the longest micro-batch once (forward + backward, nothing updated) before the first step: a batch too big for memory fails in seconds."""
    max_length: int = 256
    """Tokens per example (prompt + description); longer descriptions are cut."""
    max_samples: int | None = None
    """Use only the first N training records."""
    max_val_samples: int | None = 200
    """Use only the first N validation records for the validation loss."""
    eval_every: int = 20
    """Validation loss every N steps (and at the start and the end); 0 = never."""
    save_every: int = 50
    """Checkpoint every N steps (and at the end, and on Ctrl-C/SIGTERM)."""
    patience: int = 3
    """Stop after this many validations without a better loss; 0 = never stop early."""
    seed: int = 0
    """Seed for data order, LoRA initialisation and dropout."""
    bf16: str = "auto"
    """bf16 autocast: auto (when the CPU/GPU supports it), true or false."""
    backend: str = "torch"
    """torch, or unsloth (CUDA only)."""
    fast_kernels: bool = True
    """Under bf16: frozen weights in bf16; on CPU also matmul attention, fused LoRA q/k/v and gate/up, fast RMS norms and LoRA dropout (train_fast)."""
    merge: bool = False
    """Also write RUN_DIR/merged/: the base model with the adapter merged in."""
    rag_index: Path | None = None
    """RAG index of the training split: a share of the prompts get retrieved records, as at inference (retrieval-aware fine-tuning)."""
    rag_k: int = 3
    """Records put in a retrieval-aware prompt (the product itself excluded)."""
    rag_share: float = 0.5
    """Share of training and validation examples whose prompt holds retrieved records (the rest: the title alone)."""
    rag_noise: float = 0.25
    """Chance that each retrieved record is swapped for a random one, so the model learns to ignore irrelevant references."""
    ground_targets: bool = False
    """Train on the sentences of each description whose names and numbers its prompt holds (train.grounding); drop targets left under 40 characters."""
    mask_unsupported: bool = False
    """No loss on the training description tokens inside a name or number the prompt does not hold (train.batches); the text around them still trains. Validation loss stays on whole descriptions."""
    mask_scope: str = "plain"
    """Which examples --mask-unsupported masks: plain (only prompts without retrieved records: retrieval-aware examples keep their whole loss; the better one on validation and test), or all."""
    kind_prompts: bool = False
    """Train each description under the instruction of its kind (data.kinds): review quotes, author biographies and publisher boilerplate get their own instruction, product descriptions the one every front end asks with; so a split that keeps every kind (prepare --drop-kinds '') teaches what the product instruction means."""
    resume: bool = False
    """Continue from the last checkpoint in RUN_DIR."""
    overwrite: bool = False
    """Start afresh in a RUN_DIR that already holds a run (its checkpoints are deleted)."""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.budget is not None:
            budget_seconds(self.budget)  # a bad budget fails here, not after loading the model
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "lora_r": self.lora_r,
                    "lora_alpha": self.lora_alpha, "max_length": self.max_length, "save_every": self.save_every}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive (got {value})")
        for name in ("max_steps", "max_samples", "max_val_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or empty (got {value})")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive (got {self.epochs})")
        if not (self.lr > 0):
            raise ValueError(f"lr must be positive (got {self.lr})")
        if not 0 <= self.warmup_ratio < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("warmup_ratio and lora_dropout must be in [0, 1)")
        if self.eval_every < 0 or self.patience < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("eval_every, patience, weight_decay and max_grad_norm may not be negative")
        if self.max_length < 16:
            raise ValueError(f"max_length must be at least 16 tokens (got {self.max_length})")
        self.bf16 = str(self.bf16).lower()
        if self.mask_scope not in ("all", "plain"):
            raise ValueError(f"mask_scope must be all or plain (got {self.mask_scope!r})")
        if self.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"bf16 must be auto, true or false (got {self.bf16!r})")
        if self.backend not in ("torch", "unsloth"):
            raise ValueError(f"backend must be torch or unsloth (got {self.backend!r})")
        if not self.target_modules:
            raise ValueError("target_modules may not be empty")
        if self.rag_index is not None:
            self.rag_index = Path(self.rag_index)
        if self.rag_k < 1 or not 0 <= self.rag_share <= 1 or not 0 <= self.rag_noise <= 1:
            raise ValueError("rag_k must be positive; rag_share and rag_noise in [0, 1]")


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    """The run folder."""
    summary: dict[str, Any]
    """The content of summary.json."""

    @property
    def adapter_dir(self) -> Path:
        """RUN_DIR/adapter (PEFT adapter)."""
        return self.run_dir / "adapter"


def check_environment(cfg: TrainConfig) -> None:
    """Refuse CUDA-only options on a machine without CUDA, before any long work."""
    import torch

    if (cfg.load_in_4bit or cfg.backend == "unsloth") and not torch.cuda.is_available():
        what = "load_in_4bit (QLoRA)" if cfg.load_in_4bit else "backend unsloth"
        raise CatalogtuneError(f"{what} needs a CUDA GPU, and none is available here")
    from catalogtune.train.model import bf16_supported

    if cfg.bf16 == "true" and not bf16_supported():
        raise CatalogtuneError("bf16 true: this machine has no bf16 support (use --bf16 auto or false)")


def run(cfg: TrainConfig, *, callback: Any = None) -> TrainResult:
    """Train LoRA on ``cfg.data`` and write ``cfg.out``; returns the summary.

    ``callback(step, loop)`` (optional) runs after each optimizer step; tests use it to
    interrupt a run. Bad input raises CatalogtuneError before the model is loaded. The run
    holds ``RUN_DIR/.lock`` throughout: a second start on the folder (``--resume`` included,
    or the app's) is refused at once with this run's pid.
    """
    with _run_lock(cfg):
        return _run(cfg, callback)


def _run(cfg: TrainConfig, callback: Any) -> TrainResult:
    check_environment(cfg)
    if cfg.backend == "unsloth":
        from catalogtune.train.unsloth import import_unsloth

        import_unsloth()  # before transformers and peft, so that all of Unsloth's patches apply
    from catalogtune.core import models
    from catalogtune.train.batches import read_split

    models.resolve(cfg.model)  # unknown name / bad folder -> one-line error now
    train_rows, pool = _budget_pool(cfg)
    if train_rows is None:
        train_rows = read_split(cfg.data, "train", limit=cfg.max_samples)
    val_rows = read_split(cfg.data, "val", limit=cfg.max_val_samples) if cfg.eval_every > 0 else []
    _check_run_dir(cfg)
    return _train(cfg, train_rows, val_rows, callback, pool)


POOL_RECORDS_PER_S = {"cpu": 10.0, "cuda": 1000.0}
"""Records a second of budget can train on at most, by device: about 3x the fastest measured
(683 useful tokens/s on 2 CPU cores with ~200-token examples: ~3.4 records/s); on CUDA, a guess
for a 135M-1B model that no GPU run here has checked."""
MIN_POOL = 10_000
"""Fewest records a budgeted run reads before its own plan chooses the steps."""


def budget_pool_size(budget: str, device: str) -> int:
    """How many training records a run with ``budget`` reads at most (``POOL_RECORDS_PER_S``)."""
    return max(MIN_POOL, int(budget_seconds(budget) * POOL_RECORDS_PER_S.get(device, POOL_RECORDS_PER_S["cuda"])))


def _budget_pool(cfg: "TrainConfig") -> tuple[list[dict] | None, dict | None]:
    """With a budget and a split far larger than it can use: a stratified sample read in a stream
    (the loop's own plan then keeps the steps that fit); (None, None) when the whole split is read."""
    if cfg.budget is None or cfg.max_samples is not None:
        return None, None
    from catalogtune.data.io import read_split_sample, split_rows

    import torch

    n, size = split_rows(cfg.data, "train"), budget_pool_size(cfg.budget, "cuda" if torch.cuda.is_available() else "cpu")
    if n <= size:
        return None, None
    if _main_rank():
        print(f"train plan: budget {cfg.budget}: {n:,} training records are more than it can use; reading a "
              f"seeded sample of {size:,}, stratified by title length and inferred category", file=sys.stderr, flush=True)
    return read_split_sample(cfg.data, "train", size, cfg.seed), {"records": size, "of": n, "seed": cfg.seed}


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def _run_lock(cfg: TrainConfig) -> Iterator[None]:
    """RUN_DIR/.lock for the run's whole life (main process only: the other ranks share its run).

    Taken first, before torch loads, so a second start is refused in a second.
    """
    from catalogtune.core.locks import run_lock

    if not _main_rank():
        yield
        return
    if cfg.out.exists() and not cfg.out.is_dir():
        raise CatalogtuneError(f"--out {cfg.out} exists and is not a folder")
    created = not cfg.out.exists()
    try:
        with run_lock(cfg.out):
            yield
    finally:
        if created:  # a run refused on its input leaves no empty folder behind
            with contextlib.suppress(OSError):
                cfg.out.rmdir()


def _train(cfg: TrainConfig, train_rows: list[dict], val_rows: list[dict], callback: Any,
           pool: dict | None = None) -> TrainResult:
    from catalogtune.train.checkpoints import checkpoints, remove_stale_temps
    from catalogtune.train.loop import train

    if _main_rank():
        remove_stale_temps(cfg.out)  # a checkpoint or adapter save cut short by a kill
    if cfg.resume and checkpoints(cfg.out):
        check_resume(cfg)
    if cfg.rag_index is not None:
        from catalogtune.train.retrieval import add_retrieval

        stats = add_retrieval(cfg, train_rows, val_rows)
        print(f"retrieval-aware: {stats['train']['with_context']}/{len(train_rows)} training and "
              f"{stats['val']['with_context']}/{len(val_rows)} validation prompts hold {cfg.rag_k} records", flush=True)
    if cfg.ground_targets:
        from catalogtune.train.grounding import ground_rows

        for name, rows in (("training", train_rows), ("validation", val_rows)):
            g = ground_rows(rows)
            kept = g["chars_after"] / max(g["chars_before"], 1)
            print(f"grounded targets: {g['kept']} {name} targets kept ({kept:.0%} of their characters), "
                  f"{g['dropped']} dropped with no supported sentence", flush=True)
        if not train_rows:
            raise CatalogtuneError("ground_targets left no training target: every description states facts its prompt lacks")
    summary = train(cfg, train_rows, val_rows, callback=callback, pool=pool)
    return TrainResult(cfg.out, summary)


def check_resume(cfg: TrainConfig) -> None:
    """Refuse to resume RUN_DIR with a recipe other than the one its checkpoints were made with."""
    import dataclasses

    from catalogtune.train.checkpoints import recipe_changes

    path = cfg.out / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = config.load_yaml(path)
    except (OSError, ValueError, CatalogtuneError):
        raise CatalogtuneError(f"cannot resume {cfg.out}: {path.name} is unreadable") from None
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    defaults.update({f.name: f.default_factory() for f in dataclasses.fields(TrainConfig)
                     if f.default_factory is not dataclasses.MISSING})
    changes = recipe_changes(saved if isinstance(saved, dict) else {}, config.to_dict(cfg), defaults)
    if changes:
        raise CatalogtuneError(
            f"cannot resume {cfg.out} with a changed recipe ({'; '.join(changes)}); resume with the "
            "saved values, or start afresh with --overwrite or another --out"
        )


def _check_run_dir(cfg: TrainConfig) -> None:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise CatalogtuneError(f"--out {out} exists and is not a folder")
    used = out.is_dir() and ((out / "checkpoints").is_dir() or (out / "summary.json").is_file())
    if used and not cfg.resume and not cfg.overwrite:
        raise CatalogtuneError(f"{out} already holds a run: pass --resume to continue it or --overwrite")


def load_config(run_dir: str | Path) -> TrainConfig:
    """The resolved TrainConfig a run was started with (RUN_DIR/config.yaml)."""
    return config.build(TrainConfig, Path(run_dir) / "config.yaml")


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/summary.json."""
    return read_json(Path(run_dir) / "summary.json")


def main(argv: list[str]) -> int:
    """`catalogtune train --data DIR --out RUN_DIR [--model NAME] [--config FILE.yaml] [flags]`."""
    p = argparse.ArgumentParser(prog="catalogtune train", description=__doc__.splitlines()[0])
    p.add_argument("--config", dest="preset", default=None, metavar="FILE.yaml",
                   help=f"YAML preset; flags override it (default: {DEFAULT_PRESET.name} or, with "
                        "--resume, the run's own config.yaml)")
    config.add_arguments(p, TrainConfig)
    ns = p.parse_args(argv)
    preset: Any = ns.preset
    if preset is None and ns.resume and ns.out and (Path(ns.out) / "config.yaml").is_file():
        preset = config.load_yaml(Path(ns.out) / "config.yaml")
        # A resumed run is told explicitly what to change; these are per-invocation only.
        preset.pop("resume", None)
        preset.pop("overwrite", None)
    elif preset is None and DEFAULT_PRESET.is_file():
        preset = DEFAULT_PRESET
    if ns.data is None and not (isinstance(preset, dict) and "data" in preset):
        raise CatalogtuneError("--data DIR is required (a folder made by `catalogtune prepare`)")
    if ns.out is None:
        raise CatalogtuneError("--out RUN_DIR is required")
    cfg = config.from_namespace(TrainConfig, ns, preset)
    result = run(cfg)
    s = result.summary
    print(
        f"{s['stopped']} after {s['steps']} steps: loss {s.get('final_loss')}, "
        f"val {s.get('initial_val_loss')} -> best {s.get('best_val_loss')}, "
        f"{s['useful_tokens_per_s']:.0f} useful tokens/s; adapter in {result.adapter_dir}"
    )
    return 130 if s["stopped"] == "cancelled" else 0
