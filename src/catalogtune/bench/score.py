"""`catalogtune bench score`: the references' likelihood as `evaluate` scores it, against the plain path.

``evaluate`` scores each reference description's likelihood given its prompt (the perplexity
column) for every model system, in float32. Both paths here score the same records (real titles
and descriptions from the shared sample, the project's prompt template; ``--references 3`` puts
three other records in each prompt, as the +rag systems do) with the same model:

- the anchor: batches in input order (each padded to its longest row), the model's own float32
  ``nn.Linear`` layers (MKL's GEMM), as ``Generator.score`` did before 2026-12-03;
- ours: ``Generator.score`` (batches of similar length, oneDNN-packed float32 weights,
  ``core.kernels.fp32_packed``).

The two alternate ``--repeats`` times in one process; each row's summed negative log-likelihood
must agree (``max_nll_diff_per_token``), and the perplexities are printed side by side. The limit
is the FLOPs of the real (unpadded) tokens, 2 per decoder weight per token and 2 per output-layer
weight per scored token, at the float32 matmul ceiling measured in the same run (the faster of
MKL's GEMM and oneDNN's packed kernel on 1024-square products); attention is left out, so the
real limit is a little lower. CPU seconds are printed beside wall seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from catalogtune.bench import timed
from catalogtune.core import config
from catalogtune.core.util import torch_threads


@dataclass
class BenchScoreConfig:
    """Options of `catalogtune bench score`."""

    model: str = "smollm2-135m"
    """Base model name or path (its likelihoods are scored; a run's adapter does not change the speed)."""
    records: int = 64
    """How many records (title, description) both paths score in one call: 64 is what evaluate hands
    ``Generator.score`` at a time (``CHUNK_BATCHES`` x its batch size), and the length sort gains more
    the more records it can sort (1.45x at 32, 1.94x at 48, 2.16x at 64 on plain prompts here)."""
    batch_size: int = 16
    """Pairs per forward pass on both paths (evaluate's --batch-size)."""
    references: int = 0
    """Other records in each prompt (3: the +rag systems' prompt length)."""
    repeats: int = 2
    """Alternations of the two paths (each figure is the fastest of its repeats)."""
    sample: Path | None = None
    """JSONL file with "title" and "content" per line (default: the shared real sample)."""
    threads: int | None = None
    """torch threads (default: one per core, or 1 when the machine is already busier than its cores)."""

    def __post_init__(self) -> None:
        for name in ("records", "batch_size", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if int(self.references) < 0:
            raise ValueError("references may not be negative")


def _anchor_score(gen: Any, prompts: list[str], refs: list[str], batch_size: int) -> tuple[list, list]:
    """``Generator.score`` as it was: input-order batches on the model's own float32 layers;
    (the (NLL, tokens) per pair, the (prompt ids, description ids) pairs)."""
    import contextlib

    from catalogtune.infer import generate as G

    pairs = gen.score_pairs(prompts, refs)
    out: list[tuple[float, int]] = []
    with mock.patch.object(G, "fp32_packed", lambda net: contextlib.nullcontext(net)):
        for start in range(0, len(pairs), batch_size):
            out += gen._score_batch(pairs[start : start + batch_size], True)
    return out, pairs


def run(cfg: BenchScoreConfig) -> dict[str, Any]:
    """Score the same records on both paths, alternating; the figures of the JSON line."""
    from catalogtune.bench.ceiling import matmul_ceiling
    from catalogtune.bench.generate import load_records, rag_contexts
    from catalogtune.infer.generate import Generator

    records = load_records(cfg.sample, int(cfg.records))
    with torch_threads(int(cfg.threads) if cfg.threads is not None else None) as threads:
        gen = Generator.from_model(cfg.model)
        contexts = rag_contexts(records, int(cfg.references)) if cfg.references else [None] * len(records)
        prompts = [gen.prompt(r["title"], context=c) for r, c in zip(records, contexts)]
        refs = [r["content"] for r in records]
        bs = int(cfg.batch_size)
        gen.score(prompts[:2], refs[:2], batch_size=bs)  # warm-up: allocator, oneDNN kernel choice
        runs: dict[str, list[dict[str, float]]] = {"anchor": [], "ours": []}
        for _ in range(int(cfg.repeats)):
            (anchor, pairs), wall_a, cpu_a = timed(lambda: _anchor_score(gen, prompts, refs, bs))
            ours, wall_o, cpu_o = timed(lambda: gen.score(prompts, refs, batch_size=bs))
            runs["anchor"].append({"wall_s": wall_a, "cpu_s": cpu_a})
            runs["ours"].append({"wall_s": wall_o, "cpu_s": cpu_o})
        # the faster of MKL's GEMM (torch.mm) and oneDNN's packed fp32 kernel, ours' own
        tflops_wall = max(matmul_ceiling(n=1024, dtype="float32")[0],
                          matmul_ceiling(n=1024, dtype="float32", packed=True)[0])
    scored = sum(n for _, n in ours)
    diff = max(abs(a[0] - b[0]) / max(1, b[1]) for a, b in zip(anchor, ours))
    decoder, head = _params(gen.model)
    flops = sum(2.0 * decoder * (len(p) + len(c)) + 2.0 * head * len(c) for p, c in pairs)
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    best_cpu = {k: min(r["cpu_s"] for r in v) for k, v in runs.items()}
    limit_s = flops / (tflops_wall * 1e12)
    return {
        "bench": "score", "model": cfg.model, "records": len(records), "references": int(cfg.references),
        "batch_size": bs, "threads": threads, "repeats": int(cfg.repeats),
        "tokens": sum(len(p) + len(c) for p, c in pairs), "scored_tokens": scored,
        "anchor_s": round(best["anchor"], 3), "ours_s": round(best["ours"], 3),
        "speedup": round(best["anchor"] / best["ours"], 2),
        "speedup_cpu": round(best_cpu["anchor"] / max(best_cpu["ours"], 1e-9), 2),
        "anchor_ppl": round(math.exp(sum(a for a, _ in anchor) / scored), 4),
        "ours_ppl": round(math.exp(sum(a for a, _ in ours) / scored), 4),
        "max_nll_diff_per_token": diff,
        "fp32_matmul_ceiling_tflops": round(tflops_wall, 3), "limit_s": round(limit_s, 4),
        "ceiling_fraction": round(limit_s / best["ours"], 3),
        "runs": runs,
    }


def _params(model: Any) -> tuple[int, int]:
    """(weights of the decoder's linear layers, weights of the output layer)."""
    import torch

    head = model.get_output_embeddings()
    head_n = head.weight.numel() if head is not None else 0
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return total - head_n, head_n


def main(argv: list[str]) -> int:
    """`catalogtune bench score [options]`."""
    from catalogtune.bench import emit

    cfg = config.parse(BenchScoreConfig, argv, "catalogtune bench score", __doc__.splitlines()[0])
    emit(run(cfg))
    return 0
