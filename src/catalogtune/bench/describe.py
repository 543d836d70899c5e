"""`catalogtune bench describe`: the chunked, batched describe path against one title at a time.

Both paths describe the same titles (the shared sample's) with the same loaded model and
``DECODING``. The batched path is the real stage: ``describe.run`` on a JSON-lines file of one
chunk (streaming, parquet part, claim check, summary); the anchor calls the engine on one title
at a time (what a loop over ``ask`` does), measured in the same process, interleaved chunk by
chunk so that both see the same load on a shared machine. The projection for the catalogue's
858,000 products without a description is products / (products per second) on this machine.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogtune.core import config

MISSING_PRODUCTS = 858_000
"""Products of trn.json with an empty description (what `describe --only-missing` would write)."""


@dataclass
class BenchDescribeConfig:
    """Options of `catalogtune bench describe`."""

    model: str = "smollm2-135m"
    """Base model name or path (ignored with --run: the run's base is used)."""
    run: Path | None = None
    """Training run folder (its adapter is merged, as describe does); None = the base model."""
    products: int = 12
    """How many titles both paths describe."""
    chunk: int = 12
    """Products per chunk (and per generation batch) on the batched path."""
    max_new_tokens: int = 32
    """Most tokens per description (same for both paths)."""
    sample: Path | None = None
    """JSONL file with a "title" per line (default: the shared real sample)."""
    bf16: bool | None = None
    """bf16 autocast (default: on where the CPU runs bf16 natively)."""
    threads: int | None = None
    """torch threads (default: one per core, or 1 when the machine is busier than its cores)."""

    def __post_init__(self) -> None:
        for name in ("products", "chunk", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_new_tokens > 1024:
            raise ValueError("max_new_tokens must be <= 1024 (the generator's hard cap)")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError("threads must be >= 1")


def _batched(engine: Any, titles: list[str], cfg: BenchDescribeConfig, tmp: Path, n: int) -> tuple[list[dict], float]:
    """Run the describe stage on one chunk of titles; (its rows, wall seconds)."""
    from catalogtune.evaluate.metrics import unsupported_claims
    from catalogtune.infer import describe as D

    data = tmp / f"chunk{n}.jsonl"
    data.write_text("".join(json.dumps({"uid": f"b{n}-{i}", "title": t, "content": ""}) + "\n"
                            for i, t in enumerate(titles)), encoding="utf-8")
    dcfg = D.DescribeConfig(data=data, out=tmp / f"out{n}", model=None if cfg.run else str(cfg.model), run=cfg.run, only_missing=True,
                            chunk=int(cfg.chunk), batch_size=int(cfg.chunk), max_new_tokens=int(cfg.max_new_tokens),
                            progress=False)
    t0 = time.perf_counter()
    D.run(dcfg, check=unsupported_claims, engine=engine)
    wall = time.perf_counter() - t0
    import pyarrow.parquet as pq

    rows = [r for p in sorted(dcfg.out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return rows, wall


def _measure(engine: Any, titles: list[str], cfg: BenchDescribeConfig) -> dict[str, Any]:
    mnt, chunk = int(cfg.max_new_tokens), int(cfg.chunk)
    engine.describe(titles[:2], [[], []], 4, 2)  # warm both batch shapes (allocator, oneDNN kernels)
    engine.describe(titles[:1], [[]], 4, 1)
    rows: list[dict] = []
    one: list[dict] = []
    b_wall = s_wall = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-describe-") as tmp:
        for n, start in enumerate(range(0, len(titles), chunk)):
            part = titles[start:start + chunk]
            got, wall = _batched(engine, part, cfg, Path(tmp), n)
            rows, b_wall = rows + got, b_wall + wall
            t0 = time.perf_counter()
            one += [engine.describe([t], [[]], mnt, 1)[0] for t in part]
            s_wall += time.perf_counter() - t0
            print(f"bench describe: {start + len(part)}/{len(titles)} products "
                  f"(chunked {b_wall:.1f}s, one at a time {s_wall:.1f}s)", file=sys.stderr, flush=True)
    b_tok, s_tok = sum(r["new_tokens"] for r in rows), sum(g["new_tokens"] for g in one)
    b_pps, s_pps = len(rows) / b_wall, len(one) / s_wall
    return {
        "bench": "describe", "model": str(cfg.model), "run": str(cfg.run) if cfg.run else None,
        "products": len(titles), "chunk": chunk, "max_new_tokens": mnt, "bf16_autocast": engine.gen.bf16,
        "cpu_count": os.cpu_count(),
        "chunked_products_per_s": round(b_pps, 3), "one_at_a_time_products_per_s": round(s_pps, 3),
        "chunked_tokens_per_s": round(b_tok / b_wall, 2), "one_at_a_time_tokens_per_s": round(s_tok / s_wall, 2),
        "speedup": round(b_pps / s_pps, 2), "new_tokens": b_tok, "one_at_a_time_new_tokens": s_tok,
        "chunked_wall_s": round(b_wall, 2), "one_at_a_time_wall_s": round(s_wall, 2),
        "same_text_as_anchor": sum(r["description"] == g["text"] for r, g in zip(rows, one)),
        "stopped_at_eos": sum(r["stopped"] == "eos" for r in rows),
        "projection_858k": {"products": MISSING_PRODUCTS,
                            "chunked_hours": round(MISSING_PRODUCTS / b_pps / 3600, 1),
                            "one_at_a_time_hours": round(MISSING_PRODUCTS / s_pps / 3600, 1),
                            "note": "projected from this run's products/s at max_new_tokens; not measured"},
    }


def run(cfg: BenchDescribeConfig) -> dict[str, Any]:
    """Time both paths on the same titles; the figures of the JSON line."""
    from catalogtune.bench.generate import load_titles
    from catalogtune.infer.describe import TorchEngine
    from catalogtune.core.util import torch_threads

    titles = load_titles(cfg.sample, int(cfg.products))
    load_before = os.getloadavg()[0]
    # process-wide setting: torch_threads gives it back (tests call this in-process)
    with torch_threads(int(cfg.threads) if cfg.threads is not None else None) as threads:
        engine = TorchEngine(cfg.run, None if cfg.run else str(cfg.model), bf16=cfg.bf16)
        figures = _measure(engine, titles, cfg)
    figures.update(threads=threads, load_avg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    return figures


def main(argv: list[str]) -> int:
    """`catalogtune bench describe [--model NAME] [--run RUN] [--products 12] [--chunk 12] [--max-new-tokens 32]`."""
    from catalogtune.bench import emit

    cfg = config.parse(BenchDescribeConfig, argv, "catalogtune bench describe", __doc__.splitlines()[0])
    emit(run(cfg))
    return 0
