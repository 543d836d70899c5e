"""`catalogtune describe`: write descriptions for catalogue products, chunk by chunk, resumably.

The input is streamed (``data.io.iter_chunks``: JSON lines plain or gzip, Parquet, CSV); the
selected products (all, or with ``--only-missing`` those with an empty description, at most
``--limit``) are cut into chunks of ``--chunk`` in file order. Chunk ``i`` becomes
``OUT/part-00000i.parquet``, written atomically, so ``OUT`` is a Parquet dataset folder
(``pandas.read_parquet(OUT)``); a kill loses at most the chunks in flight and a re-run skips
every part already complete. ``OUT/_describe.json`` holds the settings (also in each part's
schema metadata): a re-run with others is refused. ``OUT/_summary.json`` counts what was read,
selected, skipped (by reason) and written. ``OUT/.lock`` keeps a second describe out.

Engines: ``torch`` (the project's ``Generator``), ``vllm`` (CUDA; see ``VllmEngine``), and with
``--ray-workers N`` the torch engine in a pool of N Ray Data actors (``describe_ray``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from catalogtune.core.claims import unsupported_claims
from catalogtune.core import config
from catalogtune.core.decoding import DECODING
from catalogtune.core.locks import folder_lock
from catalogtune.core.util import CatalogtuneError, atomic_write, atomic_write_json, read_json
from catalogtune.infer.engines import (  # noqa: F401  (re-exported)
    RAY_CHUNKS_PER_WORKER, RayDescriber, TorchEngine, VllmEngine, _import_vllm, describe_ray, open_engine,
)

FORMAT = 1
MANIFEST, SUMMARY, LOCK = "_describe.json", "_summary.json", ".lock"
BACKENDS = ("torch", "vllm")
MAX_K = 20
ClaimCheck = Callable[[str, str, Sequence[str]], "tuple[int, int]"]
"""(output, title, reference texts) -> (claims, unsupported claims), e.g. evaluate.metrics.unsupported_claims."""


@dataclass
class DescribeConfig:
    """Options of `catalogtune describe`."""

    data: Path
    """Catalogue file: JSON lines (.json/.jsonl, optionally .gz), Parquet or CSV with uid, title, content."""
    out: Path
    """Output folder (a Parquet dataset: one part file per chunk, plus _describe.json and _summary.json)."""
    run: Path | None = None
    """Training run folder (config.yaml + adapter/); without it --model alone runs the base model."""
    model: str | None = None
    """Base model name or path (overrides the run's base)."""
    index: Path | None = None
    """RAG index folder: the top-k records of each title are written as its references."""
    k: int = 3
    """References per product (with --index)."""
    rag: bool = False
    """Also put the references in the prompt (the RAG prompt layout)."""
    only_missing: bool = False
    """Describe only products whose description is empty or missing."""
    limit: int | None = None
    """Stop after this many selected products (None = all)."""
    chunk: int = 256
    """Products per part file (a kill loses at most the chunks in flight)."""
    batch_size: int = 32
    """Prompts per generation batch inside a chunk."""
    max_new_tokens: int = DECODING.max_new_tokens
    """Most tokens generated per description."""
    backend: str = "torch"
    """Generation engine: torch (CPU or CUDA) or vllm (CUDA, pip install vllm)."""
    ray_workers: int = 0
    """Run the torch engine in this many Ray Data actors (0 = in this process; pip install 'catalogtune[scale]')."""
    bf16: bool | None = None
    """bf16 autocast on CPU (default: where the CPU runs bf16 natively)."""
    progress: bool = True
    """Print one progress line per chunk to stderr."""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.run is None and self.model is None:
            raise ValueError("give --run RUN_DIR (fine-tuned) or --model NAME (base model)")
        for name, lo in (("k", 1), ("chunk", 1), ("batch_size", 1), ("max_new_tokens", 1), ("ray_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}")
        if self.k > MAX_K:
            raise ValueError(f"k must be at most {MAX_K}")
        if self.limit is not None and (isinstance(self.limit, bool) or int(self.limit) < 1):
            raise ValueError("limit must be at least 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        if self.backend == "vllm" and self.ray_workers:
            raise ValueError("--ray-workers runs the torch engine; vLLM batches on one GPU by itself")
        if self.rag and self.index is None:
            raise ValueError("--rag needs --index INDEX_DIR")


@dataclass
class DescribeResult:
    """What `run` did (also written as OUT/_summary.json)."""

    summary: dict[str, Any]
    """Counts: read, selected, bad records by reason, chunks written and skipped, rows, timing."""
    out: Path
    """The output folder."""


# --- reading -------------------------------------------------------------------------------------


def _row(uid: Any, title: Any, content: Any, bad: dict[str, int]) -> tuple[str, str, bool] | None:
    """(uid, cleaned title, has a description) of one record, or None after counting why not."""
    from catalogtune.core.prompt import clean_title
    from catalogtune.data import clean

    reason = ("missing_title" if title is None else "wrong_type" if not isinstance(title, str)
              else "wrong_type" if content is not None and not isinstance(content, str) else None)
    if reason is None:
        try:
            cleaned = clean_title(clean.clean_title(title), max_chars=clean.MAX_TITLE_CHARS)
        except CatalogtuneError:
            reason = "empty_title"
    if reason is not None:
        bad[reason] = bad.get(reason, 0) + 1
        return None
    has = isinstance(content, str) and bool(content.strip())
    if isinstance(uid, bool) or not isinstance(uid, (str, int)) or not str(uid).strip():
        uid = clean.stable_id(title, content or "")
    return str(uid).strip(), cleaned, has


def iter_records(path: Path, bad: dict[str, int], source: dict[str, Any]) -> Iterator[tuple[int, str, str, bool]]:
    """Stream ``(line or row, uid, title, has_description)``; bad records are counted in ``bad``."""
    import orjson

    from catalogtune.data.io import LineChunk, SourceInfo, iter_chunks

    info = SourceInfo(str(path))
    for chunk in iter_chunks(Path(path), 0, info):
        if isinstance(chunk, LineChunk):
            for n, raw in enumerate(chunk.data.split(b"\n"), start=chunk.first_line):
                if not raw.strip():
                    continue
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    bad["invalid_json"] = bad.get("invalid_json", 0) + 1
                    continue
                if not isinstance(rec, dict):
                    bad["not_object"] = bad.get("not_object", 0) + 1
                    continue
                row = _row(rec.get("uid"), rec.get("title"), rec.get("content"), bad)
                if row is not None:
                    yield (n, *row)
        else:
            for j, (uid, title, content) in enumerate(zip(chunk.uids, chunk.titles, chunk.contents)):
                row = _row(uid, title, content, bad)
                if row is not None:
                    yield (chunk.first_row + j, *row)
    for kind, count in info.malformed.items():
        bad[kind] = bad.get(kind, 0) + count
    source.update(format=info.format, truncated=info.truncated, error=info.error)


def iter_chunks_of(cfg: DescribeConfig, counts: dict[str, Any]) -> Iterator[tuple[int, list[dict]]]:
    """``(chunk index, products)`` of the selection in file order; ``counts`` fills as it streams."""
    products: list[dict] = []
    index = 0
    for line, uid, title, has in iter_records(cfg.data, counts["bad"], counts["source"]):
        counts["read_ok"] += 1
        if cfg.only_missing and has:
            counts["skipped_has_description"] += 1
            continue
        if cfg.limit is not None and counts["selected"] >= int(cfg.limit):
            break
        products.append({"seq": counts["selected"], "line": line, "uid": uid, "title": title})
        counts["selected"] += 1
        if len(products) == cfg.chunk:
            yield index, products
            index, products = index + 1, []
    if products:
        yield index, products


# --- output folder -------------------------------------------------------------------------------


def part_path(out: Path, index: int) -> Path:
    """The part file of chunk ``index``."""
    return Path(out) / f"part-{index:06d}.parquet"


def part_rows(path: Path) -> int | None:
    """Rows of a part file, or None when it is missing or unreadable (then it is rewritten)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception:  # noqa: BLE001 - any unreadable part is simply redone
        return None


def settings_of(cfg: DescribeConfig, base: str) -> dict[str, Any]:
    """What the outputs depend on: a re-run must match these to resume (limit and workers do not count)."""
    data = cfg.data.resolve()
    run = Path(cfg.run).resolve() if cfg.run is not None else None
    from catalogtune.rag.index import is_address, parse_address

    index = None if cfg.index is None else (
        parse_address(cfg.index)[0] if is_address(cfg.index) else str(Path(cfg.index).resolve()))
    adapter = hashlib.sha256()
    if run is not None and not (run / "adapter" / "adapter_config.json").is_file():
        raise CatalogtuneError(f"run {run} has no adapter ({run}/adapter/adapter_config.json missing; train it first)")
    if run is not None:
        for f in sorted((run / "adapter").glob("adapter_*")):
            adapter.update(f.name.encode() + f.read_bytes())
    return {
        "format": FORMAT, "data": str(data), "data_bytes": data.stat().st_size, "model": str(base),
        "run": str(run) if run else None, "adapter_sha256": adapter.hexdigest() if run else None,
        "index": index, "k": cfg.k,
        "rag": cfg.rag, "only_missing": cfg.only_missing, "chunk": cfg.chunk, "backend": cfg.backend,
        # vLLM has no title guidance: say so rather than record a setting it did not use
        "decoding": DECODING.kwargs(max_new_tokens=cfg.max_new_tokens,
                                    **({"guidance": 0.0} if cfg.backend == "vllm" else {})),
    }


def claim_settings(settings: dict[str, Any], check: ClaimCheck | None) -> dict[str, Any]:
    """``settings`` plus which unsupported-claim check filled the claims columns (None: left empty)."""
    name = f"{check.__module__}.{check.__qualname__}" if check is not None else None
    return {**settings, "claims_check": name}


def open_output(out: Path, settings: dict[str, Any]) -> None:
    """Create ``out`` with its manifest, or check that an existing one was written with ``settings``."""
    out = Path(out)
    manifest = out / MANIFEST
    if manifest.is_file():
        old = read_json(manifest).get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise CatalogtuneError(f"{out} was written with other settings ({', '.join(diff)}); "
                                   f"use another --out or delete {out}")
        return
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise CatalogtuneError(f"{out} is not empty and holds no {MANIFEST}; use another --out")
    atomic_write_json(manifest, {"settings": settings})


def write_part(out: Path, index: int, rows: list[dict], settings: dict[str, Any]) -> None:
    """Write one chunk's rows as its part file, atomically (the settings in the schema metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("seq", pa.int64()), ("line", pa.int64()), ("uid", pa.string()), ("title", pa.string()),
        ("description", pa.string()), ("ref_ids", pa.list_(pa.string())), ("ref_scores", pa.list_(pa.float32())),
        ("claims", pa.int32()), ("unsupported", pa.int32()), ("unsupported_flag", pa.bool_()),
        ("new_tokens", pa.int32()), ("stopped", pa.string()),
    ], metadata={"catalogtune.describe": json.dumps(settings, sort_keys=True)})
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_write(part_path(out, index), "wb") as fh:
        pq.write_table(table, fh)


# --- one chunk -------------------------------------------------------------------------------------


def references(index: Any, products: list[dict], k: int) -> list[list[dict]]:
    """The top-k index records of each product's title (empty lists without an index)."""
    if index is None:
        return [[] for _ in products]
    return index.query([p["title"] for p in products], k)


def finish_rows(products: list[dict], refs: list[list[dict]], gens: list[dict],
                check: ClaimCheck | None) -> list[dict]:
    """Output rows: each product with its description, references and unsupported-claim counts."""
    rows = []
    for p, r, g in zip(products, refs, gens):
        claims = bad = None
        if check is not None:
            support = [f"{x.get('title', '')}. {x.get('content', '')}" for x in r]
            claims, bad = check(g["text"], p["title"], support)
        rows.append({**p, "description": g["text"], "ref_ids": [str(x.get("id", "")) for x in r],
                     "ref_scores": [float(x.get("score", 0.0)) for x in r], "claims": claims, "unsupported": bad,
                     "unsupported_flag": None if bad is None else bad > 0,
                     "new_tokens": int(g["new_tokens"]), "stopped": g["stopped"]})
    return rows


# --- the stage -----------------------------------------------------------------------------------


def _pending(cfg: DescribeConfig, counts: dict, index: Any, held: dict) -> Iterator[tuple[int, list[dict], list]]:
    """Chunks without a complete part file, with their references (kept in ``held`` until written)."""
    for i, products in iter_chunks_of(cfg, counts):
        if part_rows(part_path(cfg.out, i)) == len(products):
            counts["chunks_skipped"] += 1
            continue
        refs = references(index, products, cfg.k)
        held[i] = (products, refs)
        yield i, products, [r if cfg.rag else [] for r in refs]


def _results(cfg: DescribeConfig, jobs: Iterator, engine: Any) -> Iterator[tuple[int, list[dict]]]:
    """``(chunk index, generations)`` per pending chunk: Ray actors, or one engine loaded on first use."""
    if cfg.ray_workers:
        yield from describe_ray(cfg, jobs)
        return
    for i, products, ctx in jobs:
        engine = engine or open_engine(cfg)
        yield i, engine.describe([p["title"] for p in products], ctx, cfg.max_new_tokens, cfg.batch_size)


def run(cfg: DescribeConfig, check: ClaimCheck | None = unsupported_claims, engine: Any = None) -> DescribeResult:
    """Describe the selected products of ``cfg.data`` into ``cfg.out`` (resuming a previous run).

    ``check`` fills the claims columns (``core.claims.unsupported_claims``, the check
    ``evaluate`` uses; None leaves them empty); ``engine`` replaces the one ``cfg`` names.
    """
    from catalogtune.data.io import check_readable
    from catalogtune.infer.ask import open_index
    from catalogtune.infer.generate import base_model_of

    check_readable(cfg.data)
    if cfg.out.exists() and not cfg.out.is_dir():
        raise CatalogtuneError(f"--out {cfg.out} is a file; describe writes a folder of part files (choose another --out)")
    if cfg.backend == "vllm" and engine is None:
        _import_vllm()  # fail before reading anything
    base = cfg.model or base_model_of(Path(cfg.run))  # type: ignore[arg-type]
    settings = claim_settings(settings_of(cfg, base), check)
    index = open_index(cfg.index) if cfg.index is not None else None
    counts: dict[str, Any] = {"read_ok": 0, "selected": 0, "skipped_has_description": 0, "bad": {}, "source": {},
                              "chunks_written": 0, "chunks_skipped": 0, "rows_written": 0, "new_tokens": 0,
                              "unsupported_rows": 0, "chunk_work_s": 0.0, "complete": False}
    t0 = time.perf_counter()
    with folder_lock(cfg.out / LOCK, f"the describe output {cfg.out}", target=cfg.out):
        open_output(cfg.out, settings)
        held: dict[int, tuple[list[dict], list]] = {}
        results = _results(cfg, _pending(cfg, counts, index, held), engine)
        tick = time.perf_counter()
        for i, gens in results:
            products, refs = held.pop(i)
            rows = finish_rows(products, refs, gens, check)
            write_part(cfg.out, i, rows, settings)
            _count(counts, rows, time.perf_counter() - tick)
            tick = time.perf_counter()
            if counts["chunks_written"] == 1:
                counts["plan"] = _plan(cfg, counts, len(rows), counts["chunk_work_s"])
            atomic_write_json(cfg.out / SUMMARY, counts)
            if cfg.progress:
                print(f"describe: chunk {i} written ({counts['rows_written']} products this run, "
                      f"{counts['chunks_skipped']} chunks already done)", file=sys.stderr, flush=True)
        counts.update(complete=True, seconds=round(time.perf_counter() - t0, 2),
                      rows_in_output=sum(part_rows(p) or 0 for p in sorted(cfg.out.glob("part-*.parquet"))))
        gen_s = counts["chunk_work_s"]
        counts["products_per_s"] = round(counts["rows_written"] / gen_s, 3) if gen_s else None
        atomic_write_json(cfg.out / SUMMARY, counts)
    return DescribeResult(summary=counts, out=cfg.out)


MISSING_IN_CATALOGUE = 858_000
"""Products of AmazonTitles-1.3MM's trn.json with no description (the projection's default)."""


def _plan(cfg: DescribeConfig, counts: dict, n: int, seconds: float) -> dict[str, Any]:
    """The first chunk's rate and what it projects (the rest of --limit, and the catalogue's missing ones)."""
    from catalogtune.core.util import peak_rss_mb

    rate = n / seconds if seconds > 0 else None
    plan: dict[str, Any] = {"first_chunk": n, "seconds": round(seconds, 2), "products_per_s": rate and round(rate, 3),
                            "peak_rss_mb": round(peak_rss_mb(), 1)}
    left = cfg.limit - counts["selected"] if cfg.limit is not None else None
    if rate:
        plan["catalogue_missing_h"] = round(MISSING_IN_CATALOGUE / rate / 3600, 1)
        if left is not None:
            plan["limit_left_s"] = round(max(0, left) / rate, 1)
    if cfg.progress:
        if rate:
            what = (f"the {max(0, left):,} left of --limit -> about {plan['limit_left_s'] / 60:.0f} min; "
                    if left is not None else "")
            print(f"describe plan: first chunk of {n} in {seconds:.1f} s ({rate:.2f} products/s on this machine); "
                  f"{what}the catalogue's {MISSING_IN_CATALOGUE:,} missing descriptions -> about "
                  f"{plan['catalogue_missing_h']:,.1f} h here (see bench describe for GPU and Ray); peak memory "
                  f"{plan['peak_rss_mb']:,.0f} MB", file=sys.stderr, flush=True)
    return plan


def _count(counts: dict, rows: list[dict], seconds: float) -> None:
    counts["chunks_written"] += 1
    counts["rows_written"] += len(rows)
    counts["new_tokens"] += sum(r["new_tokens"] for r in rows)
    counts["unsupported_rows"] += sum(bool(r["unsupported_flag"]) for r in rows)
    counts["chunk_work_s"] = round(counts["chunk_work_s"] + seconds, 3)


def main(argv: list[str]) -> int:
    """`catalogtune describe --data FILE --run RUN --out OUT [--index IDX] [--only-missing] [--limit N] ...`."""
    cfg = config.parse(DescribeConfig, argv, "catalogtune describe", __doc__.splitlines()[0])
    res = run(cfg)
    s = res.summary
    print(f"described {s['rows_written']} products ({s['chunks_skipped']} chunks already done, "
          f"{sum(s['bad'].values())} bad records skipped); {s['rows_in_output']} rows in {res.out}")
    return 0
