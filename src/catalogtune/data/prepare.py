"""`catalogtune prepare INPUT... --out DIR`: clean, deduplicate and split raw catalogue records.

Inputs are streamed in chunks (read and inflated by a background thread); two worker
processes parse and clean them (bounded queue, results consumed in input order) while the main
process deduplicates and writes Parquet row groups, so memory does not grow with the input. Each record's split comes from a seeded hash
of its title's group key (``clean.group_key``): duplicates and near-identical titles always
land in the same split, whatever the input order. Everything is written into a temporary
sibling folder that replaces ``DIR`` only when complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

from catalogtune.core import config
from catalogtune.data.io import SPLITS, SourceInfo, check_readable, detect_format, iter_chunks, prefetch
from catalogtune.core.locks import folder_lock
from catalogtune.core.util import CatalogtuneError, atomic_dir, atomic_write_json, peak_rss_mb

OUTPUT_FILES = {f"{s}.parquet" for s in SPLITS} | {"quality_report.json", "raw_lengths.parquet", "config.yaml"}
SMALL_INPUT_BYTES = 8 << 20
"""Inputs smaller than this in total are processed in this process (workers cost more)."""


@dataclasses.dataclass
class PrepareConfig:
    inputs: list[Path]
    """Raw files: trn.json(.gz), JSON lines, Parquet or CSV with title and content fields."""
    out: Path
    """Output folder (replaced as a whole; must be empty or a previous prepare output)."""
    seed: int = 0
    """Seed of the split assignment (same seed and inputs -> identical splits)."""
    val_fraction: float = 0.1
    """Share of title groups assigned to the validation split."""
    test_fraction: float = 0.1
    """Share of title groups assigned to the test split."""
    min_content_chars: int = 20
    """Descriptions shorter than this (after cleaning) are dropped as too short."""
    english_only: bool = False
    """Drop descriptions that do not look English (fast ASCII/stop-word heuristic)."""
    max_records: int | None = None
    """Stop after this many input records (lines or rows); None reads everything."""
    workers: int = 2
    """Worker processes for parsing and cleaning; 0 works in this process."""
    chunk_mb: float = 4.0
    """Size of the blocks of input handed to a worker, in MiB."""
    row_group_rows: int = 65536
    """Rows per Parquet row group in the split files."""
    progress: bool = False
    """Print progress lines to stderr every few seconds."""
    drop_kinds: list[str] = dataclasses.field(default_factory=list)
    """Description kinds dropped from the train split only (reviews, boilerplate, author_bio; see data.kinds);
    val and test keep every kind, so evaluation sees the real mix. Counted as train_*_only drops."""

    def __post_init__(self) -> None:
        if isinstance(self.inputs, (str, Path)):
            self.inputs = [self.inputs]
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)
        if not self.inputs:
            raise ValueError("at least one input file is needed")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave room for training")
        if self.min_content_chars < 0:
            raise ValueError("min_content_chars must be >= 0")
        if self.max_records is not None and self.max_records <= 0:
            raise ValueError("max_records must be positive")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if not 0.01 <= self.chunk_mb <= 1024:
            raise ValueError("chunk_mb must be between 0.01 and 1024")
        if self.row_group_rows < 1:
            raise ValueError("row_group_rows must be positive")
        from catalogtune.data.clean import KIND_REASONS

        self.drop_kinds = [str(k).strip() for k in self.drop_kinds if str(k).strip()]
        bad = [k for k in self.drop_kinds if k not in KIND_REASONS]
        if bad:
            raise ValueError(f"unknown drop_kinds {bad}; known: {', '.join(KIND_REASONS)}")


@dataclasses.dataclass
class PrepareResult:
    """What prepare wrote and the headline counts of its quality report."""

    out: Path
    records_read: int
    kept: int
    malformed: int
    dropped: dict[str, int]
    splits: dict[str, int]
    wall_s: float
    records_per_s: float
    report: dict[str, Any]


def _rule_options(cfg: PrepareConfig) -> Any:
    from catalogtune.data.records import RuleOptions

    return RuleOptions(cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.min_content_chars,
                       cfg.english_only)


def _results(chunks: Iterable[Any], opts: Any, workers: int, chunk_bytes: int) -> Iterator[Any]:
    """Process chunks in order: inline, or in a process pool with a bounded number in flight.

    Line chunks travel through a ring of shared-memory slots (one copy each way) rather than
    being pickled through a pipe (four copies of every input byte).
    """
    from catalogtune.data import records
    from catalogtune.data.records import process_chunk

    if workers == 0:
        for ch in chunks:
            yield process_chunk(ch, opts)
        return
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import shared_memory

    from catalogtune.data.io import LineChunk

    import pyarrow as pa

    # pyarrow imports pandas on its first conversion (~0.25 CPU s): do it once here, so that
    # forked workers inherit it instead of each paying for it
    pa.array([], pa.string())
    # fork is cheapest, but forking a process that runs other threads (the app) can deadlock
    methods = multiprocessing.get_all_start_methods()
    method = "fork" if "fork" in methods and threading.active_count() == 1 else "spawn"
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                             initializer=records.die_with_parent, initargs=(os.getpid(),))
    reader = prefetch(chunks, 2)  # its thread starts on the first next()
    in_flight = 2 * workers  # at most 2 chunks per worker queued: bounded memory, no idle worker
    slots, slot_bytes = in_flight + 2, 2 * chunk_bytes
    shm = shared_memory.SharedMemory(create=True, size=slots * slot_bytes)
    pending: deque = deque()
    try:
        # start the workers now, before the reader thread exists (never fork a threaded process)
        ex.submit(os.getpid).result()
        for k, ch in enumerate(reader):
            if isinstance(ch, LineChunk) and len(ch.data) <= slot_bytes:
                # slot k % slots was last used by chunk k - slots, whose result is consumed
                off = (k % slots) * slot_bytes
                shm.buf[off: off + len(ch.data)] = ch.data
                ch = LineChunk(ch.source, ch.first_line, b"", (shm.name, off, len(ch.data)))
            pending.append(ex.submit(process_chunk, ch, opts))
            if len(pending) > in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise CatalogtuneError(f"a prepare worker process died ({exc}); try --workers 0") from None
    finally:
        reader.close()  # stops the reader thread
        ex.shutdown(wait=True, cancel_futures=True)
        shm.close()
        shm.unlink()


def _workers(cfg: PrepareConfig) -> int:
    total = sum(p.stat().st_size for p in cfg.inputs)
    return 0 if total < SMALL_INPUT_BYTES else cfg.workers


def _check_inputs(cfg: PrepareConfig) -> list[SourceInfo]:
    infos = []
    for p in cfg.inputs:
        check_readable(p)
        infos.append(SourceInfo(str(p), detect_format(p)))
    return infos


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that holds anything but a previous prepare output."""
    if out.exists() and not out.is_dir():
        raise CatalogtuneError(f"output {out} exists and is not a folder")
    if out.is_dir():
        extra = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
        if extra:
            raise CatalogtuneError(
                f"output folder {out} holds other files ({', '.join(extra[:3])}); "
                "choose an empty folder or a previous prepare output"
            )


def _consume(cfg: PrepareConfig, infos: list[SourceInfo], collector: Any) -> None:
    """Stream every input through the workers into ``collector``, stopping at max_records."""
    chunk_bytes = int(cfg.chunk_mb * (1 << 20))

    def chunks() -> Iterator[Any]:
        for i, path in enumerate(cfg.inputs):
            for ch in iter_chunks(path, i, infos[i], chunk_bytes=chunk_bytes):
                yield ch
                if collector.full:
                    return

    start, last = time.perf_counter(), time.perf_counter()
    for res in _results(chunks(), _rule_options(cfg), _workers(cfg), chunk_bytes):
        collector.add(res)
        if cfg.progress and time.perf_counter() - last > 5:
            last = time.perf_counter()
            rate = collector.items / (last - start)
            print(f"prepare: {collector.items:,} records read, {collector.kept:,} kept ({rate:,.0f}/s)",
                  file=sys.stderr, flush=True)
        if collector.full:
            break


def _cpu(who: str) -> float:
    import resource

    ru = resource.getrusage(getattr(resource, who))
    return ru.ru_utime + ru.ru_stime


def _report(cfg: PrepareConfig, infos: list[SourceInfo], col: Any, wall: float,
            cpu0: tuple[float, float]) -> dict[str, Any]:
    reader_malformed = {}
    examples = list(col.examples)
    for info in infos:
        for k, v in info.malformed.items():
            reader_malformed[k] = reader_malformed.get(k, 0) + v
        examples += info.examples
    malformed = {**col.malformed(), **reader_malformed}
    dropped = col.dropped()
    n_bad = sum(malformed.values())
    records_read = col.items + sum(reader_malformed.values())
    return {
        "records_read": records_read,
        "parsed": col.items - sum(col.malformed().values()),
        "kept": col.kept,
        "kept_share": round(col.kept / records_read, 4) if records_read else 0.0,
        "dropped_total": sum(dropped.values()),
        "dropped": dropped,
        "malformed_total": n_bad,
        "malformed": malformed,
        "malformed_examples": sorted(examples, key=lambda e: (e["file"], e["line"] or 0))[:10],
        "invalid_utf8_lines": col.bad_utf8,
        "invalid_utf8_examples": col.bad_utf8_lines,
        "blank_lines": col.blank,
        # kept records changed by a cleaning rule worth knowing: a description cut to
        # clean.MAX_CONTENT_CHARS, bidi/invisible characters removed from the title or description
        "cleaned": {k: col.cleaned.get(k, 0) for k in ("content_truncated", "invisible_removed")},
        "splits": dict(zip(SPLITS, col.splits)),
        # kept descriptions by kind (data.kinds), per split: how much of the catalogue is only
        # review quotes, boilerplate or an author biography
        "content_kinds": {s: dict(sorted(col.kind_counts[i].items())) for i, s in enumerate(SPLITS)},
        "inputs": [
            {"path": info.path, "format": info.format, "records_read": col.per_source.get(i, 0),
             "truncated": info.truncated, "error": info.error}
            for i, info in enumerate(infos)
        ],
        "stopped_at_max_records": bool(col.full),
        "wall_s": round(wall, 3),
        "records_per_s": round(records_read / wall, 1) if wall > 0 else 0.0,
        "peak_rss_mb_main": round(peak_rss_mb(), 1),
        "cpu_s_main": round(_cpu("RUSAGE_SELF") - cpu0[0], 2),
        "cpu_s_workers": round(_cpu("RUSAGE_CHILDREN") - cpu0[1], 2),
        "config": {**config.to_dict(cfg), "inputs": [str(p) for p in cfg.inputs]},
    }


def _save_config(cfg: PrepareConfig, path: Path) -> None:
    """config.save, with the input paths as strings (to_dict leaves Paths inside lists)."""
    import yaml

    from catalogtune.core.util import atomic_write

    values = {**config.to_dict(cfg), "inputs": [str(p) for p in cfg.inputs]}
    with atomic_write(path) as fh:
        yaml.safe_dump(values, fh, sort_keys=False)


_OWNER = ".prepare.pid"


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary folders left by a killed prepare (their owner process is gone)."""
    import shutil

    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            pid = int((tmp / _OWNER).read_text())
            os.kill(pid, 0)  # raises when no such process
            continue
        except (OSError, ValueError):
            shutil.rmtree(tmp, ignore_errors=True)


def _umask_modes(folder: Path) -> None:
    """Give the folder and its files the usual modes (temporary files are created 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.iterdir():
        os.chmod(p, 0o666 & ~mask)


def _write(cfg: PrepareConfig, infos: list[SourceInfo], t0: float, cpu0: tuple[float, float]) -> tuple[Any, dict]:
    """Fill a temporary folder with every output and swap it in place of ``cfg.out``."""
    from catalogtune.data.collect import Collector, RawLengthsWriter, SplitWriters

    with atomic_dir(cfg.out) as tmp:
        (tmp / _OWNER).write_text(str(os.getpid()))
        writers = SplitWriters(tmp, cfg.row_group_rows)
        lengths = RawLengthsWriter(tmp / "raw_lengths.parquet")
        col = Collector(writers, cfg.max_records, lengths, drop_kinds=tuple(cfg.drop_kinds))
        col.paths = [str(p) for p in cfg.inputs]
        try:
            _consume(cfg, infos, col)
        finally:
            writers.close()
            lengths.close()
        col.check()
        report = _report(cfg, infos, col, time.perf_counter() - t0, cpu0)
        atomic_write_json(tmp / "quality_report.json", report)
        _save_config(cfg, tmp / "config.yaml")
        (tmp / _OWNER).unlink()
        _umask_modes(tmp)
    return col, report


def run(cfg: PrepareConfig) -> PrepareResult:
    """Prepare ``cfg.inputs`` into ``cfg.out`` (splits, raw lengths, quality report, config).

    One prepare at a time per output folder: a second is refused with the first one's pid.
    """
    t0 = time.perf_counter()
    cpu0 = (_cpu("RUSAGE_SELF"), _cpu("RUSAGE_CHILDREN"))
    infos = _check_inputs(cfg)
    _check_out(cfg.out)
    # the output folder is swapped as a whole, so its lock lives beside it
    with folder_lock(cfg.out.parent / f".{cfg.out.name}.lock", f"the output folder {cfg.out}", target=cfg.out):
        _remove_stale_temps(cfg.out)
        col, report = _write(cfg, infos, t0, cpu0)
    if col.kept == 0:
        raise CatalogtuneError(
            f"no usable records in {', '.join(map(str, cfg.inputs))} "
            f"(see {cfg.out / 'quality_report.json'})"
        )
    return PrepareResult(
        out=cfg.out, records_read=report["records_read"], kept=col.kept,
        malformed=report["malformed_total"], dropped=report["dropped"], splits=report["splits"],
        wall_s=report["wall_s"], records_per_s=report["records_per_s"], report=report,
    )


def clean_file(path: str | Path, min_content_chars: int = 20, english_only: bool = False) -> list[dict]:
    """Cleaned, kept records ``{"id", "title", "content"}`` of a raw file, in file order.

    The same reading, cleaning and deduplication rules as ``run`` (all splits together).
    Raises ``CatalogtuneError`` when the file is unreadable or nothing is kept.
    """
    from catalogtune.data.collect import Collector

    path = Path(path)
    cfg = PrepareConfig(inputs=[path], out=path.parent, min_content_chars=min_content_chars,
                        english_only=english_only, val_fraction=0.0, test_fraction=0.0)
    infos = _check_inputs(cfg)
    records: list[dict] = []

    def sink(split: int, table: Any) -> None:
        records.extend(table.to_pylist())

    col = Collector(sink)
    col.paths = [str(path)]
    _consume(cfg, infos, col)
    if not records:
        raise CatalogtuneError(f"no usable records in {path} after cleaning")
    return records


def main(argv: list[str] | None = None) -> int:
    """`catalogtune prepare INPUT... --out DIR [options]`."""
    parser = argparse.ArgumentParser(prog="catalogtune prepare", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="raw input file(s)")
    parser.add_argument("--config", metavar="YAML", help="a PrepareConfig preset")
    config.add_arguments(parser, PrepareConfig, skip=("inputs",))
    ns = parser.parse_args(argv)
    if ns.progress is None:
        ns.progress = sys.stderr.isatty()
    if ns.out is None and ns.config is None:
        raise CatalogtuneError("--out DIR is required")
    cfg = config.from_namespace(PrepareConfig, ns, ns.config, inputs=ns.inputs)
    res = run(cfg)
    bad = f", {res.malformed:,} malformed" if res.malformed else ""
    print(
        f"prepared {res.kept:,} of {res.records_read:,} records{bad} -> {res.out} "
        f"(train {res.splits['train']:,}, val {res.splits['val']:,}, test {res.splits['test']:,}; "
        f"{res.wall_s:.1f} s, {res.records_per_s:,.0f} records/s)"
    )
    for info in res.report["inputs"]:
        if info["truncated"]:
            print(f"warning: {info['path']}: {info['error']}; kept what was read", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
