"""`catalogtune bench prepare --records N [--keep]`: prepare throughput vs a pandas baseline.

Generates a synthetic ``trn.json.gz`` of N records in the real format (``data.synthetic``),
runs ``catalogtune prepare`` on it in a child process, then the anchor in another child: the
obvious pandas approach (``pd.read_json(..., lines=True)``, the same rules written as
``.map(html.unescape)``/``.str.replace(regex)`` passes and filters, ``drop_duplicates``, a
random split, ``to_parquet``; see ``baseline``) on the first ``min(N, baseline_records)``
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

from catalogtune.core import config
from catalogtune.bench import emit
from catalogtune.core.util import CatalogtuneError


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


# The baseline's rules, written the way a pandas user would (not ``clean``'s code).
_B_TAG = r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,300})?/?>"
_B_INLINE = r"(?i)</?(?:a|b|i|u|em|strong|span|font|small|big|sup|sub|abbr|cite|code|q|s|tt)(?:\s[^<>]{0,300})?/?>"
_B_REFERS = r"-*This text refers to (?:an? |the)?[^.]{0,80}?edition(?: of this title)?\.?"
_B_COPYRIGHT = (
    r"Copyright\s*(?:\u00a9|\(c\))?\s*(?:\d{4}(?:\s*[-,]\s*\d{4})?)?,?\s*"
    r"(?:Reed Business Information|Cahners Business Information|American Library Association"
    r"|Reed Elsevier)(?:,?\s*(?:a division of Reed Elsevier)?\s*Inc)?\.?(?:\s*All rights reserved\.?)?"
)
_B_GLUED = r"([a-z]{2})\.([A-Z][a-z])"
_B_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd\u200b\ufeff]"
_B_PLACEHOLDER = (
    r"^(?:text: [a-z ,;()]+(?:original language: [a-z ,;()]+)?"
    r"|n/?a|none|null|nil|tbd|tba|todo|coming soon|no description(?: available)?"
    r"|description(?: not available| coming soon)?|product description|not available"
    r"|see (?:above|below|title)|[-.,;:_*#?!\s]*)$"
)


def _b_clean(s: Any, boilerplate: bool) -> Any:
    """Obvious column-wise cleaning: unescape twice, strip tags (and boilerplate), squeeze spaces."""
    import html
    import unicodedata

    s = s.map(html.unescape).map(html.unescape)  # some records are double-escaped
    s = s.str.replace(_B_INLINE, "", regex=True).str.replace(_B_TAG, " ", regex=True)
    if boilerplate:
        s = s.str.replace(_B_REFERS, " ", regex=True).str.replace(_B_COPYRIGHT, " ", regex=True)
        s = s.str.replace(_B_GLUED, r"\1. \2", regex=True)
    s = s.map(lambda t: unicodedata.normalize("NFC", t))
    # " ".join(t.split()) squeezes and strips whitespace: cheaper than .str.replace(r"\s+")
    return s.str.replace(_B_CONTROL, " ", regex=True).map(lambda t: " ".join(t.split()))


def _b_key(s: Any) -> Any:
    """Comparison key: lower case, punctuation runs to one space."""
    import unicodedata

    s = s.map(lambda t: unicodedata.normalize("NFKD", t)).str.casefold()
    return s.str.replace(r"[\W_]+", " ", regex=True).str.strip()


def _b_echo(tkey: str, ckey: str) -> bool:
    if not ckey or ckey in tkey:
        return True
    if tkey and tkey in ckey:
        return sum(ch.isalnum() for ch in ckey.replace(tkey, "")) < 10
    return False


def baseline(path: Path, n: int, out: Path, seed: int = 0) -> int:
    """The anchor: what a pandas user would write, on the first ``n`` lines.

    ``pd.read_json(lines=True, nrows=n)`` (the whole line, label arrays included), then the
    same rules as ``prepare`` expressed the obvious way, each a pass over a column:
    ``.map(html.unescape)`` (twice, for double escapes), ``.str.replace`` with regexes for tags,
    "This text refers to ...edition" and publisher notices, glued sentences, control
    characters, then ``" ".join(t.split())`` for whitespace; boolean filters for empty title/content,
    placeholders, too short (< 20 chars) and title echo; ``drop_duplicates`` on the normalised
    title; a seeded random 80/10/10 split; ``to_parquet`` per split. It does not: give reasons
    or a quality report, stream (memory grows with ``n``), handle malformed lines (read_json
    fails), keep near-identical titles in one split (the split is per row), or apply prepare's
    exact details (glued-sentence rule is ASCII-only, only hyphens before "This text refers"
    are removed, keys use ``[\\W_]+``). Its kept count equals prepare's on synthetic data.
    """
    import numpy as np
    import pandas as pd

    df = pd.read_json(path, lines=True, compression="infer", nrows=n, dtype=False)
    df = df[["uid", "title", "content"]]
    df = df[df["title"].map(lambda v: isinstance(v, str)) & df["content"].map(lambda v: isinstance(v, str))]
    df = df.astype({"title": "str", "content": "str"})
    raw_empty = df["content"].str.strip() == ""
    df["title"] = _b_clean(df["title"], boilerplate=False)
    df["content"] = _b_clean(df["content"], boilerplate=True)
    df = df[(df["title"] != "") & ~raw_empty]
    clen = df["content"].str.len()
    placeholder = (df["content"] == "") | ((clen < 120) & df["content"].str.lower().str.match(_B_PLACEHOLDER))
    df = df[~placeholder & (clen >= 20)]
    df["tkey"] = _b_key(df["title"])
    ckey = _b_key(df["content"])
    echo = [_b_echo(t, c) for t, c in zip(df["tkey"], ckey)]
    df = df[~np.array(echo, dtype=bool)]
    df["tkey"] = df["tkey"].where(df["tkey"] != "", df["title"])  # punctuation-only titles
    df = df.drop_duplicates(subset=["tkey"])
    u = np.random.default_rng(seed).random(len(df))
    df["split"] = np.where(u < 0.1, 2, np.where(u < 0.2, 1, 0))
    out.mkdir(parents=True, exist_ok=True)
    df = df.rename(columns={"uid": "id"})
    for i, name in enumerate(("train", "val", "test")):
        df.loc[df["split"] == i, ["id", "title", "content"]].to_parquet(out / f"{name}.parquet", index=False)
    return len(df)


def run(cfg: BenchPrepareConfig) -> dict[str, Any]:
    """Generate (or reuse) the input, time prepare and the pandas baseline, return the figures."""
    from catalogtune.data import synthetic
    from catalogtune.core.util import read_json

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
            "baseline": "pandas read_json(lines=True) + .map(html.unescape)/.str.replace(regex) cleaning + filters + drop_duplicates + random split + to_parquet",
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
