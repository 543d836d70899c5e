"""`catalogtune bench prepare --records N [--keep]`: prepare throughput vs a pandas baseline.

Generates a synthetic ``trn.json.gz`` of N records in the real format (``data.synthetic``),
runs ``catalogtune prepare`` on it in a child process, then the anchor in another child: the
obvious pandas approach (``pd.read_json(..., lines=True)``, the same cleaning functions mapped
over columns, ``drop_duplicates``, ``to_parquet``) on the first ``min(N, baseline_records)``
records. Peak RSS is the sum over each child's process tree, sampled every 50 ms (workers
share pages with their parent, so it is an upper bound). The last line is the JSON result.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from catalogtune import config
from catalogtune.bench import emit
from catalogtune.util import CatalogtuneError


@dataclasses.dataclass
class BenchPrepareConfig:
    records: int = 200_000
    """Synthetic records to generate and prepare."""
    baseline_records: int = 200_000
    """The pandas baseline reads at most this many records (its memory grows with them)."""
    workers: int = 2
    """Worker processes for prepare."""
    input: Path | None = None
    """Reuse this synthetic file instead of generating one (its record count is then N)."""
    workdir: Path | None = None
    """Folder for the synthetic input and outputs (default: a temporary folder, deleted after)."""
    keep: bool = False
    """Keep the generated input and outputs (printed) instead of deleting them."""
    seed: int = 0
    """Seed of the synthetic generator."""

    def __post_init__(self) -> None:
        if self.records <= 0 or self.baseline_records <= 0:
            raise ValueError("records and baseline_records must be positive")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.input is not None and not Path(self.input).is_file():
            raise ValueError(f"input not found: {self.input}")


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _measure(cmd: list[str], log: Path) -> tuple[float, float, float, int]:
    """(wall s, peak RSS MiB of the process tree, CPU s of the tree, exit code) of a command.

    CPU seconds come from the kernel's accounting of waited-for children (workers included),
    so they hold even when other jobs share the cores and stretch the wall time.
    """
    import psutil

    cpu0 = _children_cpu()
    with open(log, "wb") as fh:
        start = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                peak = max(peak, rss)
            except psutil.Error:
                pass  # a worker ended between listing and reading it
            time.sleep(0.05)
        wall = time.perf_counter() - start
    return wall, peak / (1 << 20), _children_cpu() - cpu0, proc.returncode


def _tail(log: Path, lines: int = 5) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def baseline(path: Path, n: int, out: Path) -> int:
    """The anchor: pandas reads ``n`` lines whole, then cleans and splits column by column."""
    import pandas as pd

    from catalogtune.data import clean

    df = pd.read_json(path, lines=True, compression="infer", nrows=n, dtype=False)
    df = df[["uid", "title", "content"]]
    df = df[df["title"].map(lambda v: isinstance(v, str)) & df["content"].map(lambda v: isinstance(v, str))]
    df["raw"] = df["content"]
    df["title"] = df["title"].map(clean.clean_title)
    df["content"] = df["content"].map(clean.clean_text)
    df["tkey"] = df["title"].map(clean.norm_key)
    reasons = [clean.drop_reason(t, r, c, 20, False, k)
               for t, r, c, k in zip(df["title"], df["raw"], df["content"], df["tkey"])]
    df = df[[r is None for r in reasons]]
    df = df.drop_duplicates(subset=["tkey"])
    df["split"] = df["title"].map(lambda t: clean.split_of(clean.group_key(t), 0, 0.1, 0.1))
    out.mkdir(parents=True, exist_ok=True)
    df = df.rename(columns={"uid": "id"})
    for i, name in enumerate(("train", "val", "test")):
        df.loc[df["split"] == i, ["id", "title", "content"]].to_parquet(out / f"{name}.parquet", index=False)
    return len(df)


def run(cfg: BenchPrepareConfig) -> dict[str, Any]:
    """Generate (or reuse) the input, time prepare and the pandas baseline, return the figures."""
    from catalogtune.data import synthetic
    from catalogtune.util import read_json

    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="ct_bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    try:
        gen_s = 0.0
        if cfg.input is not None:
            src = Path(cfg.input)
        else:
            src = work / "trn.json.gz"
            t = time.perf_counter()
            synthetic.generate(src, cfg.records, seed=cfg.seed)
            gen_s = time.perf_counter() - t
        prep_out = work / "prepared"
        cmd = [sys.executable, "-m", "catalogtune", "prepare", str(src), "--out", str(prep_out),
               "--workers", str(cfg.workers), "--no-progress"]
        wall, rss, cpu, rc = _measure(cmd, work / "prepare.log")
        if rc != 0:
            raise CatalogtuneError(f"prepare failed (exit {rc}): {_tail(work / 'prepare.log')}")
        report = read_json(prep_out / "quality_report.json")
        n = report["records_read"]
        n_base = min(n, cfg.baseline_records)
        bcmd = [sys.executable, "-m", "catalogtune.bench.prepare", "--_baseline", str(src), str(n_base),
                str(work / "baseline")]
        bwall, brss, bcpu, brc = _measure(bcmd, work / "baseline.log")
        if brc != 0:
            raise CatalogtuneError(f"pandas baseline failed (exit {brc}): {_tail(work / 'baseline.log')}")
        rate, brate = n / wall, n_base / bwall
        return {
            "bench": "prepare",
            "records": n,
            "kept": report["kept"],
            "wall_s": round(wall, 2),
            "records_per_s": round(rate, 1),
            "peak_rss_mb": round(rss, 1),
            "cpu_s": round(cpu, 2),
            "records_per_cpu_s": round(n / cpu, 1) if cpu else None,
            "input_mb": round(src.stat().st_size / (1 << 20), 1),
            "generate_s": round(gen_s, 2),
            "workers": cfg.workers,
            "baseline": "pandas read_json(lines=True) + mapped cleaning + drop_duplicates + to_parquet",
            "baseline_records": n_base,
            "baseline_wall_s": round(bwall, 2),
            "baseline_records_per_s": round(brate, 1),
            "baseline_peak_rss_mb": round(brss, 1),
            "baseline_cpu_s": round(bcpu, 2),
            "baseline_records_per_cpu_s": round(n_base / bcpu, 1) if bcpu else None,
            "speedup": round(rate / brate, 2),
            # work per record, independent of how busy the shared cores were
            "cpu_speedup": round((n / cpu) / (n_base / bcpu), 2) if cpu and bcpu else None,
            "cpu_count": os.cpu_count(),
            "load_avg_1m_before": round(load, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "workdir": str(work) if cfg.keep or cfg.workdir else None,
        }
    finally:
        if cfg.workdir is None and not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`catalogtune bench prepare --records N [--keep]`; prints the JSON result last."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_baseline"]:  # the child process that runs the anchor
        kept = baseline(Path(argv[1]), int(argv[2]), Path(argv[3]))
        print(f"baseline kept {kept}")
        return 0
    parser = argparse.ArgumentParser(prog="catalogtune bench prepare", description=__doc__.splitlines()[0])
    config.add_arguments(parser, BenchPrepareConfig)
    cfg = config.from_namespace(BenchPrepareConfig, parser.parse_args(argv))
    result = run(cfg)
    if cfg.keep:
        print(f"kept inputs and outputs in {result['workdir']}", file=sys.stderr)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
