"""`catalogtune bench train`: our LoRA engine vs TRL SFTTrainer + PEFT, and a bf16 ceiling.

Both systems train the same model on the same prepared split of the shared sample, with the
same prompt text (`prompt.build_prompt` / `prompt.completion_text`), batch 8, LoRA r=16 on all
linear layers, bf16, for the same number of steps. Each runs in its own child process (so its
peak RSS is its own) and only the steps after the warm-up steps are timed. Useful tokens are
the label positions that carry loss; tokens are all non-pad tokens fed to the decoder.
The ceiling (a large bf16 matmul, median of several trials) is measured in the same run, before
and after the two systems; the higher of the two is used, which keeps the fraction conservative.
The last line printed is one JSON object (`catalogtune.bench.emit`).
On a machine with a CUDA GPU both systems train on it (as `catalogtune train` does), the ceiling
is a large bf16 matmul on the GPU, peak GPU memory is reported beside peak RSS, and
``--backend unsloth`` times our loop with Unsloth's model and kernels instead of ours.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_write_json, read_json, shared_sample

TARGETS = {"smollm2-135m": {"speedup": 4.0, "ceiling_fraction": 0.6}, "gemma3-270m": {"ceiling_fraction": 0.4}}
"""Issue 3's targets on 2 cores, reported beside the figures (never asserted here)."""


@dataclass
class BenchTrainConfig:
    """Options of the training benchmark."""

    model: str = "smollm2-135m"
    """Base model (registry name or folder), the same for both systems."""
    steps: int = 4
    """Timed optimizer steps per system (after the warm-up steps)."""
    warmup_steps: int = 1
    """Untimed steps first (allocator, oneDNN kernel choice, lazy inits)."""
    batch_size: int = 8
    """Samples per step for both systems (the anchor's per_device_train_batch_size)."""
    max_length: int = 256
    """Token limit per sample for both systems (longer descriptions are cut)."""
    lora_r: int = 16
    """LoRA rank for both systems (all linear layers)."""
    lora_alpha: int = 32
    """LoRA alpha for both systems."""
    lora_dropout: float = 0.0
    """LoRA dropout for both systems (0.0: PEFT's LoraConfig default and ours)."""
    lr: float = 2e-4
    """Learning rate for both systems (does not change the speed)."""
    data: Path | None = None
    """A prepared folder (train.parquet) or a raw JSON-lines file; default: the shared sample."""
    anchor: bool = True
    """Also run the TRL SFTTrainer anchor (off: only our engine and the ceiling)."""
    anchor_gradient_checkpointing: bool = True
    """The anchor's gradient checkpointing: on is TRL SFTConfig's default (what a user gets)."""
    repeats: int = 1
    """Alternate ours/anchor this many times and keep each system's best (shared, noisy cores)."""
    backend: str = "torch"
    """Our engine's backend: torch, or unsloth (CUDA only; the anchor stays TRL + PEFT)."""
    seed: int = 0
    """Seed for both systems."""
    timeout_s: int = 3600
    """Time limit for each child run."""
    work: Path | None = None
    """Folder for the prepared data and run folders (default: a temporary folder, removed)."""

    def __post_init__(self) -> None:
        # warmup_steps >= 1 too: the first step includes one-off set-up and is never timed
        for name in ("steps", "warmup_steps", "batch_size", "max_length", "lora_r", "repeats", "timeout_s"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError("lora_dropout must be in [0, 1)")
        if self.backend not in ("torch", "unsloth"):
            raise ValueError("backend must be torch or unsloth")


@dataclass
class BenchTrainResult:
    """The benchmark's figures (the JSON printed last)."""

    figures: dict[str, Any]


# ----------------------------------------------------------------------------- data


def prepare_data(src: Path | None, work: Path) -> Path:
    """A folder with train/val/test.parquet: ``src`` itself if prepared, else prepared into ``work``."""
    src = src or shared_sample()
    if src is None:
        raise CatalogtuneError("no data: pass --data (prepared folder or .jsonl); the shared sample was not found")
    src = Path(src)
    if src.is_dir():
        if not (src / "train.parquet").is_file():
            raise CatalogtuneError(f"{src} has no train.parquet (run `catalogtune prepare` first)")
        return src
    if not src.is_file():
        raise CatalogtuneError(f"data not found: {src}")
    out = work / "data"
    from catalogtune.data.prepare import PrepareConfig, run

    run(PrepareConfig(inputs=[src], out=out))
    return out


def sample_lengths(tok: Any, records: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(total tokens, completion tokens) per record, tokenised as prompt + completion, cut at max_length."""
    from catalogtune.core.prompt import build_prompt, completion_text

    totals, useful = [], []
    for rec in records:
        p = build_prompt(tok, rec["title"])
        n_p = len(tok(p, add_special_tokens=False)["input_ids"])
        n = min(len(tok(p + completion_text(tok, rec["content"]), add_special_tokens=False)["input_ids"]), max_length)
        totals.append(n)
        useful.append(max(n - n_p, 0))
    return totals, useful


# ----------------------------------------------------------------------------- workers (child processes)


def _anchor_worker(spec: dict) -> dict:
    """TRL SFTTrainer + PEFT LoRA, prompt-completion data, completion-only loss, bf16, batch 8."""
    import time

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from catalogtune.core import models
    from catalogtune.data.io import read_split
    from catalogtune.core.prompt import build_prompt, completion_text, end_token

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = models.load(spec["model"])
    rows = [
        {"prompt": build_prompt(tok, r["title"]), "completion": completion_text(tok, r["content"])}
        for r in read_split(spec["data"], "train")
    ]
    total_steps = spec["warmup_steps"] + spec["steps"]
    args = SFTConfig(
        output_dir=spec["out"], use_cpu=not torch.cuda.is_available(), bf16=True, per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, packing=False, max_length=spec["max_length"], max_steps=total_steps,
        learning_rate=spec["lr"], report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=spec["seed"], dataloader_num_workers=0,
        eos_token=end_token(tok),  # completion_text already ends with it: TRL must not add another
        gradient_checkpointing=bool(spec.get("anchor_gradient_checkpointing", True)),
    )
    peft_cfg = LoraConfig(
        r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=peft_cfg)
    counts: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting(features: list) -> dict:
        batch = collate(features)
        labels = batch["labels"]
        mask = batch.get("attention_mask")
        n_tok = int(mask.sum()) if mask is not None else int((batch["input_ids"] != tok.pad_token_id).sum())
        counts.append((n_tok, int((labels[:, 1:] != -100).sum())))
        return batch

    trainer.data_collator = counting
    stamps: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: D102 - a timing hook
            _sync()
            stamps.append((time.perf_counter(), time.process_time()))

    trainer.add_callback(Clock())
    trainer.train()
    return _timed(stamps, counts, spec)


def _sync() -> None:
    """Wait for the GPU's queued work (a step's stamp must include it); no-op on CPUs."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(stamps: list[tuple[float, float]], counts: list[tuple[int, int]], spec: dict) -> dict:
    """Figures of the steps after the warm-up: stamps are (wall, process CPU) after each step."""
    import torch

    from catalogtune.core.util import peak_rss_mb

    w, n = spec["warmup_steps"], spec["steps"]
    if len(stamps) < w + n or len(counts) < w + n:
        raise CatalogtuneError(f"only {len(stamps)} steps ran, {w + n} were asked for (too little data?)")
    (wall0, cpu0), (wall1, cpu1) = stamps[w - 1], stamps[w + n - 1]
    tokens = sum(c[0] for c in counts[w : w + n])
    useful = sum(c[1] for c in counts[w : w + n])
    # CPU seconds (all threads) are less sensitive than wall time to other people's jobs on
    # shared cores; reported beside the wall-time figures, which stay the headline.
    out = {"wall_s": wall1 - wall0, "cpu_s": cpu1 - cpu0, "tokens": tokens, "useful_tokens": useful,
           "steps": n, "peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _ours_worker(spec: dict) -> dict:
    """Our engine (`catalogtune.train.stage.run`) with the same settings, timed by its step callback."""
    import time

    from catalogtune.train.stage import TrainConfig, run

    total = spec["warmup_steps"] + spec["steps"]
    cfg = config.build(
        TrainConfig, data=spec["data"], out=spec["out"], model=spec["model"], max_steps=total,
        batch_size=spec["batch_size"], grad_accum=1, lr=spec["lr"], lora_r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"], max_length=spec["max_length"],
        target_modules=["all-linear"], seed=spec["seed"], bf16="auto", overwrite=True,
        backend=spec.get("backend", "torch"),
        eval_every=0, save_every=10**6,  # no validation or checkpoint inside the timed window
    )
    stamps: list[tuple[float, float]] = []
    cumulative: list[tuple[int, int]] = [(0, 0)]

    def clock(step: int, loop: Any) -> None:
        _sync()
        stamps.append((time.perf_counter(), time.process_time()))
        cumulative.append((int(loop.state.tokens), int(loop.state.useful_tokens)))

    run(cfg, callback=clock)
    counts = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(cumulative, cumulative[1:])]
    return _timed(stamps, counts, spec)


WORKERS = {"anchor": _anchor_worker, "ours": _ours_worker}


def _spawn(kind: str, spec: dict, work: Path, timeout_s: int) -> dict:
    spec_path, out_path = work / f"{kind}.spec.json", work / f"{kind}.result.json"
    atomic_write_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "catalogtune.bench.train", "--worker", kind, str(spec_path), str(out_path)]
    print(f"bench train: {kind} run, {spec['warmup_steps']} + {spec['steps']} steps ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CatalogtuneError(f"bench train: the {kind} run took longer than {timeout_s} s") from None
    if proc.returncode != 0 or not out_path.is_file():
        lines = [x for x in proc.stderr.replace("\r", "\n").splitlines() if x.strip()]
        tail = [x for x in lines if "Error" in x or "error:" in x][-1:] or lines[-1:] or ["no output"]
        raise CatalogtuneError(f"bench train: the {kind} run failed (exit {proc.returncode}): {tail[0][:300]}")
    return read_json(out_path)


# ----------------------------------------------------------------------------- the benchmark


def _rates(r: dict) -> dict:
    return {"tokens_per_s": r["tokens"] / r["wall_s"], "useful_tokens_per_s": r["useful_tokens"] / r["wall_s"]}


def run(cfg: BenchTrainConfig) -> BenchTrainResult:
    """Measure the ceiling, our engine and (optionally) the anchor; return the figures."""
    from catalogtune.core import models
    from catalogtune.bench.ceiling import avg_context, lora_flops, matmul_ceiling

    if cfg.backend == "unsloth":
        from catalogtune.train.unsloth import check_available

        check_available()  # one line, before any long work
    model_dir = models.resolve(cfg.model)  # convert once here, not inside the timed children
    with tempfile.TemporaryDirectory(prefix="ct-bench-train-") as tmp:
        work = Path(cfg.work) if cfg.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare_data(cfg.data, work)
        spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
        spec.update(data=str(data), model=str(cfg.model))
        import torch

        # The device both systems train on: the GPU when there is one (as `catalogtune train`).
        gpu = torch.cuda.is_available()
        if gpu:  # a CPU-second figure means nothing for GPU work: 0.0 leaves it out
            def measure() -> tuple[float, float]:
                return matmul_ceiling(n=8192, reps=10, device="cuda")[0], 0.0
        else:
            from catalogtune.train.model import bf16_supported

            # The dtype training computes in: bf16 where the CPU has it natively, else float32.
            # (An emulated bf16 2048^3 matmul takes minutes on an AVX2-only CPU, and it is not
            # the ceiling of a float32 run.)
            ceiling_dtype = "bfloat16" if bf16_supported() else "float32"

            def measure() -> tuple[float, float]:
                return matmul_ceiling(dtype=ceiling_dtype)
        ceilings = [measure()]
        runs: dict[str, list[dict]] = {"ours": [], "anchor": []}
        for i in range(cfg.repeats):
            for kind in ("ours", "anchor") if cfg.anchor else ("ours",):
                runs[kind].append(_spawn(kind, dict(spec, out=str(work / f"{kind}-{i}")), work, cfg.timeout_s))
        ceilings.append(measure())
        from transformers import AutoTokenizer

        from catalogtune.data.io import read_split

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        totals, _ = sample_lengths(tok, read_split(data, "train"), cfg.max_length)
    best = (max(c[0] for c in ceilings), max(c[1] for c in ceilings))
    figures = summarise(cfg, runs, best, lora_flops(model_dir, cfg.lora_r), avg_context(totals))
    figures["device"] = torch.cuda.get_device_name() if gpu else "cpu"
    figures["ceiling_dtype"] = "bfloat16" if gpu else ceiling_dtype
    return BenchTrainResult(figures)


def summarise(cfg: BenchTrainConfig, runs: dict[str, list[dict]], ceiling: tuple[float, float] | float,
              flops: Any, ctx: float) -> dict:
    """The JSON figures from the child runs (each system's best repeat by useful tokens/s).

    ``ceiling`` is (wall TFLOP/s, TFLOP per CPU-second) of the matmul, or just the first.
    """
    ceiling, ceiling_cpu = ceiling if isinstance(ceiling, tuple) else (ceiling, None)
    best = {k: max(v, key=lambda r: r["useful_tokens"] / r["wall_s"]) for k, v in runs.items() if v}

    def achieved(r: dict) -> float:
        return flops.flops(r["tokens"], r["useful_tokens"], ctx) / r["wall_s"] / 1e12

    ours = best["ours"]
    anc = best.get("anchor")
    out: dict[str, Any] = {"bench": "train", "model": cfg.model, "steps": cfg.steps, "batch_size": cfg.batch_size,
                           "max_length": cfg.max_length, "repeats": cfg.repeats,
                           "anchor_gradient_checkpointing": cfg.anchor_gradient_checkpointing, "backend": cfg.backend}
    out.update(_rates(ours))
    out["peak_rss_mb"] = round(ours["peak_rss_mb"], 1)
    if "peak_gpu_mb" in ours:
        out["peak_gpu_mb"] = round(ours["peak_gpu_mb"], 1)
    out["achieved_tflops"] = achieved(ours)
    out["ceiling_tflops"] = ceiling
    out["ceiling_fraction"] = out["achieved_tflops"] / ceiling
    if ceiling_cpu and ours.get("cpu_s"):
        # The same ratio over CPU seconds (training run and matmul both): less sensitive to
        # other jobs on shared cores than wall time, but only as good as the OS's CPU accounting.
        out["ceiling_tflops_per_cpu_s"] = ceiling_cpu
        out["ceiling_fraction_cpu"] = flops.flops(ours["tokens"], ours["useful_tokens"], ctx) / ours["cpu_s"] / 1e12 / ceiling_cpu
    if anc:
        ar = _rates(anc)
        out.update({f"anchor_{k}": v for k, v in ar.items()})
        out["anchor_peak_rss_mb"] = round(anc["peak_rss_mb"], 1)
        if "peak_gpu_mb" in anc:
            out["anchor_peak_gpu_mb"] = round(anc["peak_gpu_mb"], 1)
        out["anchor_achieved_tflops"] = achieved(anc)
        out["anchor_ceiling_fraction"] = out["anchor_achieved_tflops"] / ceiling
        out["speedup"] = out["useful_tokens_per_s"] / ar["useful_tokens_per_s"]
        out["speedup_total_tokens"] = out["tokens_per_s"] / ar["tokens_per_s"]
        if ours.get("cpu_s") and anc.get("cpu_s"):
            out["speedup_per_cpu_s"] = (ours["useful_tokens"] / ours["cpu_s"]) / (anc["useful_tokens"] / anc["cpu_s"])
    else:
        out.update(anchor_tokens_per_s=None, anchor_useful_tokens_per_s=None, anchor_peak_rss_mb=None, speedup=None)
    out["flops_per_token"] = {"decoder_params": flops.decoder_params, "head_params": flops.head_params,
                              "lora_params": flops.lora_params, "avg_attended_ctx": round(ctx, 1)}
    out["runs"] = {k: [{**_rates(r), "wall_s": r["wall_s"], "cpu_s": r.get("cpu_s"), "tokens": r["tokens"],
                        "useful_tokens": r["useful_tokens"]} for r in v] for k, v in runs.items()}
    out["targets"] = TARGETS.get(cfg.model, {})
    out["load_avg_1m"] = os.getloadavg()[0]
    return out


def main(argv: list[str]) -> int:
    """`catalogtune bench train [--model NAME] [--steps N] [...]`; prints the JSON figures last."""
    if argv[:1] == ["--worker"]:
        if len(argv) != 4 or argv[1] not in WORKERS:
            raise CatalogtuneError("usage: --worker anchor|ours SPEC.json OUT.json")
        atomic_write_json(argv[3], WORKERS[argv[1]](read_json(argv[2])))
        return 0
    cfg = config.parse(BenchTrainConfig, argv, "catalogtune bench train", __doc__.splitlines()[0])
    from catalogtune.bench import emit

    emit(run(cfg).figures)
    return 0


if __name__ == "__main__":  # the child processes: `python -m catalogtune.bench.train --worker ...`
    try:
        sys.exit(main(sys.argv[1:]))
    except CatalogtuneError as exc:
        print(f"catalogtune bench train: error: {exc}", file=sys.stderr)
        sys.exit(2)
