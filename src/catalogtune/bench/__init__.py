"""Benchmarks: each prints JSON figures next to an anchor measured in the same run."""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

BENCHES: dict[str, tuple[str, str]] = {
    "prepare": ("catalogtune.bench.prepare", "prepare on synthetic trn.json.gz vs a pandas baseline"),
    "train": ("catalogtune.bench.train", "LoRA training tokens/s vs TRL SFTTrainer and a bf16 matmul ceiling"),
    "generate": ("catalogtune.bench.generate", "batched generation vs one prompt at a time"),
    "score": ("catalogtune.bench.score", "the references' likelihood as evaluate scores it vs the plain path, float32 ceiling"),
    "engines": ("catalogtune.bench.engines", "generation engines: the project Generator vs CTranslate2 (float32/int8), same prompts"),
    "describe": ("catalogtune.bench.describe", "describe: chunked batched products/s vs one title at a time, 858k projection"),
    "index": ("catalogtune.bench.index", "index build: embedding and storing records/s vs SentenceTransformer defaults, 1.39M projection"),
    "retrieve": ("catalogtune.bench.retrieve", "retrieval latency and recall@10 vs exact search"),
    "serve": ("catalogtune.bench.serve", "loopback load test of `catalogtune serve`: requests/s, p50/p95 at 1/4/16 clients"),
}


def emit(result: dict) -> None:
    """Print one benchmark result as a single JSON line (the last line is the result)."""
    print(json.dumps(result, sort_keys=False), flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(``fn()``, wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    res = fn()
    return res, time.perf_counter() - w, time.process_time() - c


@contextlib.contextmanager
def workdir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created, kept after), or a temporary folder named ``prefix``... removed after."""
    tmp = None if path is not None else Path(tempfile.mkdtemp(prefix=prefix))
    work = tmp or Path(path)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`catalogtune bench NAME [options]`."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print("usage: catalogtune bench NAME [options]\n\nbenchmarks:")
        for name, (_, help_) in BENCHES.items():
            print(f"  {name:<9} {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(BENCHES[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
