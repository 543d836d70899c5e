"""`catalogtune bench generate`: batched Generator tokens/s against plain `generate`, one prompt at a time.

Both paths get the same prompts (real titles from the shared sample, the project's prompt
template), greedy decoding, the same max_new_tokens and the same stop tokens; each counts the
tokens it generated before the stop token. The anchor is transformers' ``model.generate`` on one
prompt at a time with the model as loaded (fp32), measured in the same process, interleaved with
the batched path batch by batch. The machine is shared, so CPU seconds are reported beside wall
seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.infer.generate import auto_threads
from catalogtune.core.util import CatalogtuneError, shared_sample


@dataclass
class BenchGenerateConfig:
    """Options of `catalogtune bench generate`."""

    model: str = "smollm2-135m"
    """Base model name or path."""
    prompts: int = 32
    """How many titles (prompts) both paths generate for."""
    max_new_tokens: int = 64
    """Most tokens per prompt (same for both paths)."""
    batch_size: int = 32
    """Prompts per batch on the batched path."""
    sample: Path | None = None
    """JSONL file with a "title" per line (default: the shared real sample)."""
    bf16: bool | None = None
    """bf16 autocast on the batched path (default: on where the CPU runs bf16 natively)."""
    threads: int | None = None
    """torch threads (default: one per core, or 1 when the machine is already busier than its cores)."""
    same_precision_anchor: bool = False
    """Also time the Generator itself one prompt at a time (separates batching from bf16)."""

    def __post_init__(self) -> None:
        for name in ("prompts", "max_new_tokens", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError("threads must be >= 1")
        if self.max_new_tokens > 1024:
            raise ValueError("max_new_tokens must be <= 1024 (the generator's hard cap)")


@dataclass
class BenchGenerateResult:
    """The figures printed as the benchmark's JSON line."""

    figures: dict[str, Any]
    """batched/sequential tokens per second, speedup, and the run's settings."""


def load_titles(path: Path | None, n: int) -> list[str]:
    """The first ``n`` non-empty titles of a JSONL file (the shared sample by default)."""
    path = path or shared_sample()
    if path is None or not Path(path).is_file():
        raise CatalogtuneError(f"title sample not found: {path or 'shared/data/amazon_titles_sample.jsonl'}"
                               " (give --sample FILE.jsonl)")
    titles: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                title = json.loads(line).get("title")
            except (ValueError, AttributeError):
                continue  # a bad line is skipped: the bench needs titles, not every record
            if isinstance(title, str) and title.strip():
                titles.append(title)
            if len(titles) == n:
                break
    if len(titles) < n:
        raise CatalogtuneError(f"{path} has only {len(titles)} usable titles, {n} asked")
    return titles


def _plain_generate(gen: Any, prompts: list[str], max_new_tokens: int) -> tuple[int, list[str]]:
    """The anchor: ``model.generate`` on one prompt at a time, greedy, no batching, no autocast."""
    import torch

    stops = set(gen.stop_ids)
    total, texts = 0, []
    for p in prompts:
        ids = torch.tensor([gen.encode(p)])
        with torch.inference_mode():
            out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=gen.stop_ids,
                                     pad_token_id=gen.tok.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(new) if t in stops), len(new))
        total += cut
        texts.append(gen.tok.decode(new[:cut], skip_special_tokens=True).strip())
    return total, texts


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - w, time.process_time() - c


def run(cfg: BenchGenerateConfig) -> BenchGenerateResult:
    """Time the batched path and the one-at-a-time anchor on the same prompts, batch by batch."""
    import torch

    from catalogtune.infer.generate import Generator

    titles = load_titles(cfg.sample, int(cfg.prompts))
    load_before = os.getloadavg()[0]
    old_threads = torch.get_num_threads()
    threads = int(cfg.threads) if cfg.threads is not None else auto_threads(load_before, old_threads)
    torch.set_num_threads(threads)
    try:  # the thread count is process-wide: give it back (tests call this in-process)
        gen = Generator.from_model(cfg.model, bf16=cfg.bf16)
        figures = _measure(gen, [gen.prompt(t) for t in titles], cfg)
    finally:
        torch.set_num_threads(old_threads)
    figures.update(threads=threads, load_avg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    return BenchGenerateResult(figures=figures)


def _measure(gen: Any, prompts: list[str], cfg: BenchGenerateConfig) -> dict[str, Any]:
    mnt = int(cfg.max_new_tokens)
    # Warm both paths (allocator, oneDNN kernels) so neither pays first-call costs in the timing.
    gen.generate(prompts[:2], max_new_tokens=4, batch_size=2)
    _plain_generate(gen, prompts[:1], 4)

    # Interleave the two paths batch by batch: on a shared machine the load drifts, and both paths
    # should see the same drift. The batched path still gets whole batches of ``batch_size``.
    bs = int(cfg.batch_size)
    outs: list[Any] = []
    s_texts: list[str] = []
    b_wall = b_cpu = s_wall = s_cpu = 0.0
    s_tokens = 0
    for start in range(0, len(prompts), bs):
        chunk = prompts[start : start + bs]
        res, w, c = _timed(partial(gen.generate, chunk, max_new_tokens=mnt, batch_size=bs))
        outs += res
        b_wall, b_cpu = b_wall + w, b_cpu + c
        (n, texts), w, c = _timed(partial(_plain_generate, gen, chunk, mnt))
        s_tokens, s_wall, s_cpu = s_tokens + n, s_wall + w, s_cpu + c
        s_texts += texts
        print(f"bench generate: {start + len(chunk)}/{len(prompts)} prompts "
              f"(batched {b_wall:.1f}s, one at a time {s_wall:.1f}s)", file=sys.stderr, flush=True)
    b_tokens = sum(g.new_tokens for g in outs)
    figures: dict[str, Any] = {
        "bench": "generate",
        "model": str(cfg.model),
        "prompts": len(prompts),
        "max_new_tokens": mnt,
        "batch_size": int(cfg.batch_size),
        "bf16_autocast": gen.bf16,
        # threads and load_avg_1m (before, after) are added by run(): with more runnable threads than
        # cores, multi-threaded matmuls stall at every barrier and the ratio says more about the load.
        "cpu_count": os.cpu_count(),
        "new_tokens": b_tokens,
        "sequential_new_tokens": s_tokens,
        "batched_tokens_per_s": round(b_tokens / b_wall, 2),
        "sequential_tokens_per_s": round(s_tokens / s_wall, 2),
        "speedup": round((b_tokens / b_wall) / (s_tokens / s_wall), 2) if s_tokens and b_tokens else None,
        "batched_wall_s": round(b_wall, 2),
        "sequential_wall_s": round(s_wall, 2),
        "speedup_cpu_time": round((b_tokens / b_cpu) / (s_tokens / s_cpu), 2) if s_tokens and b_tokens else None,
        "stopped_at_eos": sum(g.stopped == "eos" for g in outs),
        "same_text_as_anchor": sum(g.text == t for g, t in zip(outs, s_texts)),
    }
    if cfg.same_precision_anchor:
        one, o_wall, _ = _timed(lambda: gen.generate(prompts, max_new_tokens=mnt, batch_size=1))
        o_tokens = sum(g.new_tokens for g in one)
        figures["generator_bs1_tokens_per_s"] = round(o_tokens / o_wall, 2)
        figures["speedup_same_precision"] = round((b_tokens / b_wall) / (o_tokens / o_wall), 2) if o_tokens else None
    return figures


def main(argv: list[str]) -> int:
    """`catalogtune bench generate [--model NAME] [--prompts 32] [--max-new-tokens 64] [--batch-size 32]`."""
    from catalogtune.bench import emit

    cfg = config.parse(BenchGenerateConfig, argv, "catalogtune bench generate", __doc__.splitlines()[0])
    emit(run(cfg).figures)
    return 0
