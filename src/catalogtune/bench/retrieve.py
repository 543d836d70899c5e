"""`catalogtune bench retrieve`: ChromaDB HNSW query latency and recall@10 vs exact search.

Synthetic vectors shaped like sentence embeddings (a Gaussian mixture in a 32-dimensional
latent space, projected to ``dim`` dimensions with a little isotropic noise, L2-normalised) are
added to one persistent collection in growing prefixes, so the 100k figures come from the first
100k rows of the 1M set. Queries are stored points plus noise. The anchor is exact numpy brute
force (one matrix-vector product per query), timed in the same run on the same vectors.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalogtune.core import config
from catalogtune.bench import emit
from catalogtune.rag.index import client, hnsw_settings
from catalogtune.core.util import CatalogtuneError, atomic_write_json, peak_rss_mb, read_json

GEN_CHUNK = 10_000
"""Rows generated per random stream: any prefix of the data set is the same for every size."""
LATENT_DIM = 32
"""Intrinsic dimension of the synthetic vectors (real sentence embeddings have a low one)."""
TARGET_P95_MS = 20.0


@dataclass
class RetrieveBenchConfig:
    """Options of `catalogtune bench retrieve`."""

    sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    """Stored vector counts to measure, built up in one collection (ascending)."""
    queries: int = 200
    """Queries per size (single-query latency is measured for each)."""
    dim: int = 384
    """Vector size (384 = all-MiniLM-L6-v2)."""
    k: int = 10
    """Neighbours per query (recall@k)."""
    clusters: int = 1000
    """Gaussian mixture components of the synthetic vectors."""
    latent_dim: int | None = None
    """Intrinsic dimension of the synthetic vectors (None = min(32, dim); = dim: near-isotropic,
    the hardest case for HNSW)."""
    ef_search: list[int] = field(default_factory=lambda: [64])
    """HNSW ef_search values to try (the first is the headline figure)."""
    hnsw_m: int = 16
    """HNSW max_neighbors (M), as in the RAG index."""
    hnsw_ef_construction: int = 128
    """HNSW ef_construction, as in the RAG index."""
    batch: int = 5000
    """Vectors per Chroma add call."""
    embedder: str = "minilm"
    """Embedder timed for the query-embedding and index-build-rate figures (real queries and
    the real index pay this on top of the vector search)."""
    embed_queries: int = 50
    """Shared-sample titles embedded one at a time, and records embedded in a batch (0 = skip)."""
    workdir: Path | None = None
    """Keep the Chroma collection here and resume an interrupted build (default: a temp dir)."""
    seed: int = 0
    """Random seed of vectors and queries."""

    def __post_init__(self) -> None:
        self.sizes = sorted(int(s) for s in self.sizes)
        if not self.sizes or self.sizes[0] < max(self.k, 10):
            raise ValueError("sizes must be given and each at least max(k, 10)")
        if self.queries < 1 or self.dim < 2 or not 1 <= self.k <= 100 or self.clusters < 1:
            raise ValueError("queries >= 1, dim >= 2, 1 <= k <= 100 and clusters >= 1 are required")
        if self.latent_dim is None:
            self.latent_dim = min(LATENT_DIM, self.dim)
        if self.embed_queries < 0 or not 1 <= self.latent_dim <= self.dim:
            raise ValueError("embed_queries must be >= 0 and latent_dim from 1 to dim")
        if not self.ef_search or min(self.ef_search) < 1 or self.hnsw_m < 2 or self.batch < 1:
            raise ValueError("ef_search values >= 1, hnsw_m >= 2 and batch >= 1 are required")
        if self.workdir is not None:
            self.workdir = Path(self.workdir)


@dataclass
class RetrieveBenchResult:
    """The figures printed as the benchmark's JSON line."""

    figures: dict


def _mixture(dim: int, clusters: int, seed: int, latent: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0xC1])
    centres = rng.standard_normal((clusters, latent)).astype(np.float32)
    proj = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    return centres, proj


def synthetic(n: int, dim: int, clusters: int = 1000, seed: int = 0, latent: int = LATENT_DIM) -> np.ndarray:
    """(n, dim) float32 unit rows: clustered, low intrinsic dimension; prefixes are stable."""
    centres, proj = _mixture(dim, clusters, seed, latent)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, GEN_CHUNK):
        # Always draw a whole chunk, then cut: the first rows never depend on n.
        rng = np.random.default_rng([seed, start // GEN_CHUNK])
        z = centres[rng.integers(0, clusters, GEN_CHUNK)]
        z += 0.6 * rng.standard_normal((GEN_CHUNK, latent), dtype=np.float32)
        block = z @ proj + 0.15 * rng.standard_normal((GEN_CHUNK, dim), dtype=np.float32)
        m = min(GEN_CHUNK, n - start)
        out[start : start + m] = (block / np.linalg.norm(block, axis=1, keepdims=True))[:m]
    return out


def make_queries(x: np.ndarray, count: int, seed: int = 0, noise: float = 0.35) -> np.ndarray:
    """Unit queries near random stored rows (cosine to their source about 1/sqrt(1+noise^2))."""
    rng = np.random.default_rng([seed, 0x9E])
    src = x[rng.integers(0, len(x), count)]
    q = src + noise * rng.standard_normal(src.shape, dtype=np.float32) / np.sqrt(x.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, block: int = 200_000) -> np.ndarray:
    """(len(q), k) row indices of the k largest dot products, best first (blocked over ``x``)."""
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(x), block):
        s = q @ x[start : start + block].T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def _time_exact(x: np.ndarray, q: np.ndarray, k: int) -> list[float]:
    times = []
    for row in q:
        t = time.perf_counter()
        s = x @ row
        top = np.argpartition(-s, k - 1)[:k]
        top[np.argsort(-s[top])]
        times.append(time.perf_counter() - t)
    return times


def _time_chroma(col: Any, q: np.ndarray, k: int) -> tuple[list[float], list[list[int]]]:
    for row in q[:5]:  # warm caches and lazily loaded index files
        col.query(query_embeddings=row[None, :], n_results=k, include=["distances"])
    times, ids = [], []
    for row in q:
        t = time.perf_counter()
        res = col.query(query_embeddings=row[None, :], n_results=k, include=["distances"])
        times.append(time.perf_counter() - t)
        ids.append([int(i[1:]) for i in res["ids"][0]])
    return times, ids


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def _ms(times: list[float], pct: float) -> float:
    return round(float(np.percentile(times, pct)) * 1000.0, 3)


def _extend(col: Any, x: np.ndarray, state_path: Path, state: dict, batch: int) -> None:
    """Add rows ``count..len(x)`` (ids ``v<row>``), recording cumulative build seconds."""
    start = col.count()
    for i in range(start, len(x), batch):
        j = min(len(x), i + batch)
        t = time.perf_counter()
        col.add(ids=[f"v{r}" for r in range(i, j)], embeddings=x[i:j])
        state["build_s"] += time.perf_counter() - t
        state["built"] = j
        atomic_write_json(state_path, state)  # a killed build resumes from the last add


def with_ef_search(col: Any, work: Path, ef: int) -> Any:
    """``col`` reopened with HNSW ``ef_search`` = ef.

    Chroma 1.5 persists ``modify(ef_search)`` but keeps using the loaded index's old value in
    this process, so the client cache is dropped and the collection opened again.
    """
    from chromadb.api.client import SharedSystemClient

    if (col.configuration_json or {}).get("hnsw", {}).get("ef_search") == ef:
        return col
    name = col.name
    with warnings.catch_warnings():  # "legacy embedding function config": we pass our own vectors
        warnings.simplefilter("ignore", DeprecationWarning)
        col.modify(configuration={"hnsw": {"ef_search": ef}})
    # Stop the old systems too: clearing the cache alone leaves their copy of the index in memory.
    for system in list(SharedSystemClient._identifier_to_system.values()):
        system.stop()
    SharedSystemClient.clear_system_cache()
    return client(work).get_collection(name, embedding_function=None)


def _measure(cfg: RetrieveBenchConfig, col: Any, work: Path, x: np.ndarray, n: int, state: dict) -> tuple[Any, dict]:
    q = make_queries(x[:n], cfg.queries, cfg.seed)
    truth = exact_topk(x[:n], q, cfg.k)
    exact_t = _time_exact(x[:n], q, cfg.k)
    sweep = []
    for ef in cfg.ef_search:
        col = with_ef_search(col, work, ef)
        t, found = _time_chroma(col, q, cfg.k)
        sweep.append({"ef_search": ef, "p50_ms": _ms(t, 50), "p95_ms": _ms(t, 95),
                      f"recall_at_{cfg.k}": round(_recall(found, truth), 4)})
    head = sweep[0]
    build_s = state.get("build_s")
    return col, {
        "n": n,
        "build_s": None if build_s is None else round(build_s, 2),
        "build_rate_per_s": round(n / build_s, 1) if build_s else None,
        "p50_ms": head["p50_ms"], "p95_ms": head["p95_ms"],
        "recall_at_10" if cfg.k == 10 else f"recall_at_{cfg.k}": head[f"recall_at_{cfg.k}"],
        "exact_p50_ms": _ms(exact_t, 50), "exact_p95_ms": _ms(exact_t, 95),
        "ef_search": head["ef_search"], "sweep": sweep,
        "peak_rss_mb": round(peak_rss_mb(), 1), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def run(cfg: RetrieveBenchConfig) -> RetrieveBenchResult:
    """Build the collection up to each size, then time queries and exact search at that size."""
    t0 = time.perf_counter()
    from catalogtune.bench import workdir

    with workdir(cfg.workdir, "ct-bench-retrieve-") as work:
        return _run_in(cfg, work, t0)


def _run_in(cfg: RetrieveBenchConfig, work: Path, t0: float) -> RetrieveBenchResult:
    key = {"dim": cfg.dim, "clusters": cfg.clusters, "seed": cfg.seed, "m": cfg.hnsw_m,
           "ef_construction": cfg.hnsw_ef_construction, "latent": cfg.latent_dim}
    state_path = work / "bench_state.json"
    state = read_json(state_path) if state_path.is_file() else {}
    cl = client(work)
    if state.get("key") != key:  # other vectors or settings: start this collection afresh
        try:
            cl.delete_collection("bench")
        except Exception:  # noqa: BLE001 - nothing to delete yet
            pass
        state = {"key": key, "build_s": 0.0, "built": 0}
    col = cl.get_or_create_collection(
        "bench", configuration=hnsw_settings(cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.ef_search[0]),
        embedding_function=None)
    if col.count() > cfg.sizes[-1]:
        raise CatalogtuneError(f"{work} holds {col.count()} vectors, more than the largest size")
    x = synthetic(cfg.sizes[-1], cfg.dim, cfg.clusters, cfg.seed, cfg.latent_dim)
    results = []
    for n in cfg.sizes:
        done = state.get("results", {}).get(str(n))
        if col.count() > n:
            # The collection has grown past n (an earlier run went on): its figures for n
            # are reused if they were saved; n cannot be measured again in it.
            results.append(dict(done, reused=True) if done else {"n": n, "skipped": (
                f"collection already holds {col.count()} vectors; use another --workdir")})
            continue
        if col.count() < n:
            _extend(col, x[:n], state_path, state, cfg.batch)
        build_s = _build_s_at(state, n)
        state.setdefault("at", {})[str(n)] = build_s
        atomic_write_json(state_path, state)
        col, figures = _measure(cfg, col, work, x, n, {"build_s": build_s})
        state.setdefault("results", {})[str(n)] = figures
        atomic_write_json(state_path, state)
        results.append(figures)
        print(f"n={n}: " + json.dumps({k: v for k, v in figures.items() if k != "sweep"}),
              file=sys.stderr, flush=True)
    largest = results[-1]
    figures = {
        "bench": "retrieve", "backend": f"chromadb {_chroma_version()} hnsw cosine",
        "dim": cfg.dim, "latent_dim": cfg.latent_dim, "clusters": cfg.clusters, "queries": cfg.queries, "k": cfg.k,
        "hnsw": {"M": cfg.hnsw_m, "ef_construction": cfg.hnsw_ef_construction, "ef_search": cfg.ef_search[0]},
        "cpus": os.cpu_count(), "anchor": "exact numpy brute force (x @ q, argpartition)",
        "results": results, "target_p95_ms": TARGET_P95_MS,
        "embedder": _embedder_figures(cfg.embedder, cfg.embed_queries) if cfg.embed_queries else None,
        "meets_target": bool(largest.get("p95_ms", float("inf")) < TARGET_P95_MS), "wall_s": round(time.perf_counter() - t0, 1),
    }
    return RetrieveBenchResult(figures)


def _sample_records(count: int) -> list[dict]:
    """Up to ``count`` real records from the shared sample (synthetic ones if it is absent)."""
    from catalogtune.core.util import shared_sample

    path, recs = shared_sample(), []
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                recs.append({"id": str(len(recs)), "title": rec.get("title", ""), "content": rec.get("content", "")})
                if len(recs) >= count:
                    break
    while len(recs) < count:
        recs.append({"id": str(len(recs)), "title": f"Product {len(recs)}", "content": "A product."})
    return recs


def _embedder_figures(name: str, count: int) -> dict:
    """Single-title embedding latency and batch embedding rate of ``name`` on real records."""
    from catalogtune.rag.embed import get_embedder
    from catalogtune.rag.index import embed_text, valid_records

    emb = get_embedder(name)
    recs, _ = valid_records(_sample_records(count))
    t = time.perf_counter()
    emb.embed([recs[0]["title"]])  # loads the model
    load_s = time.perf_counter() - t
    times = []
    for rec in recs:
        t = time.perf_counter()
        emb.embed([rec["title"]])
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    emb.embed([embed_text(r) for r in recs], batch_size=64)
    rate = len(recs) / (time.perf_counter() - t)
    return {"name": emb.name, "load_s": round(load_s, 2), "query_embed_p50_ms": _ms(times, 50),
            "query_embed_p95_ms": _ms(times, 95), "index_embed_rate_per_s": round(rate, 1),
            "records": len(recs)}


def _build_s_at(state: dict, n: int) -> float | None:
    """Build seconds up to ``n`` rows: recorded when that size was first measured, else the
    running total if the collection holds exactly ``n``; None when unknown (built past it)."""
    at = state.get("at", {})
    if str(n) in at:
        return at[str(n)]
    return float(state["build_s"]) if state.get("built") == n else None


def _chroma_version() -> str:
    import chromadb

    return chromadb.__version__


def main(argv: list[str]) -> int:
    """`catalogtune bench retrieve [--sizes 100000,1000000] [--queries 200] [--dim 384]`."""
    cfg = config.parse(RetrieveBenchConfig, argv, "catalogtune bench retrieve", __doc__.splitlines()[0])
    emit(run(cfg).figures)
    return 0
