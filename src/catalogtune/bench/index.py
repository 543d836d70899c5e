"""`catalogtune bench index`: RAG index build speed, embedding and storing apart, and its projection.

Synthetic records in the real ``trn.json`` format (``data/synthetic.py``) are cleaned by the
prepare rules (empty descriptions dropped, as in the real 1.39M-record index), then:

- embedding: our build path (``--embedder``, default minilm-onnx, in its own batch size, with the
  text recipe ``--text``: title+content, or title only, whose recall is then against the
  anchor's title+content neighbours) and the
  anchor, ``SentenceTransformer.encode`` with its defaults, on the same ``--embed-sample``
  records (evenly spread over the set), in the same run; with their agreement (cosine per
  record) and recall@k of the anchor's neighbours (title queries, nearest records by each path);
- storing: every record into a fresh Chroma collection, our path (the index's chunked add with
  titles and descriptions as metadata, after the resume check), the same chunks with the
  descriptions as Chroma documents (the path before 2026-12-03: full-text indexed) and a bare
  ``add`` of the vectors alone in Chroma's largest batches; the vectors are synthetic ones shaped like sentence embeddings
  (``bench.retrieve.synthetic``), since only their number and size matter to the store;
- the projection to the real catalogue: 1.39M records x (seconds per record embedding + storing),
  both from records per CPU second (storing at the bench's size: HNSW inserts slow as it grows) (a shared machine's other jobs do not count),
  and the same divided by ``--cores`` for the embedding part (linear scaling assumed); and the
  pipelined build's limit, every CPU second of both parts spread over ``--cores`` (the build
  embeds the next chunk while the last is stored).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from catalogtune.bench import emit, timed
from catalogtune.core import config
from catalogtune.core.util import peak_rss_mb

REAL_RECORDS = 1_390_000
"""Training records with a description in the real catalogue (what the index holds)."""
TARGET_H = 2.0
"""The build must finish within this many hours on 2 CPU cores."""
ANCHOR = "st-default"
"""The anchor embedding path: SentenceTransformer.encode with its defaults (batch 32)."""


@dataclass
class IndexBenchConfig:
    """Options of `catalogtune bench index`."""

    records: int = 100_000
    """Synthetic raw records generated (about 60% keep a description and are indexed)."""
    embed_sample: int = 2000
    """Records embedded by each path (0 or more than kept = all kept records)."""
    embedder: str = "minilm-onnx"
    """Our build path's embedder (minilm-onnx, minilm-onnx-int8, minilm, or hash for tests)."""
    text: str = "title+content"
    """Our build path's text recipe (index --text: title+content or title); the anchor always
    embeds title+content, as a user's first build would."""
    anchor: str = ANCHOR
    """The anchor: st-default (SentenceTransformer.encode defaults) or an embedder name (tests)."""
    queries: int = 200
    """Title queries for recall@k (taken from the embedded sample)."""
    k: int = 10
    """Neighbours per query for recall@k."""
    cores: int = 2
    """Cores the projection assumes for the embedding (the real build machine has 2)."""
    seed: int = 0
    """Seed of the synthetic records."""
    workdir: Path | None = None
    """Keep the generated file and collections here (default: a temporary folder, removed)."""

    def __post_init__(self) -> None:
        if self.records < 10 or self.embed_sample < 0 or self.queries < 1 or not 1 <= self.k <= 100:
            raise ValueError("records >= 10, embed_sample >= 0, queries >= 1 and 1 <= k <= 100 are required")
        if self.cores < 1:
            raise ValueError("cores must be at least 1")
        from catalogtune.rag.index import text_recipe

        text_recipe(self.text)
        if self.workdir is not None:
            self.workdir = Path(self.workdir)


def make_records(n: int, seed: int, work: Path) -> list[dict]:
    """``n`` synthetic raw records, cleaned by the prepare rules and validated as the index does."""
    from catalogtune.data import synthetic
    from catalogtune.data.prepare import clean_file
    from catalogtune.rag.index import valid_records

    path = synthetic.generate(work / "trn.jsonl", n, seed=seed)
    return valid_records(clean_file(path))[0]


def _anchor(name: str) -> tuple[str, Callable[[list[str]], np.ndarray], Callable[[], None]]:
    """(label, embed function, warm-up) of the anchor path."""
    from catalogtune.rag.embed import MiniLMEmbedder, get_embedder

    if name == ANCHOR:
        st = MiniLMEmbedder()
        return ("SentenceTransformer.encode (defaults)",
                lambda texts: np.asarray(st.model.encode(texts, show_progress_bar=False), dtype=np.float32),
                st.warm)
    emb = get_embedder(name)
    return emb.name, lambda texts: emb.embed(texts), lambda: emb.embed(["warm"])


def _rates(n: int, wall: float, cpu: float) -> dict:
    return {"records": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "records_per_s": round(n / wall, 2) if wall else None,
            "records_per_cpu_s": round(n / cpu, 2) if cpu else None}


def recall_at_k(q_ref: np.ndarray, d_ref: np.ndarray, q_new: np.ndarray, d_new: np.ndarray, k: int) -> float:
    """Share of the reference path's k nearest records that the new path also ranks in its k nearest."""
    k = min(k, len(d_ref))
    ref = np.argsort(-(q_ref @ d_ref.T), axis=1, kind="stable")[:, :k]
    new = np.argsort(-(q_new @ d_new.T), axis=1, kind="stable")[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, new)]))


def embedding_figures(cfg: IndexBenchConfig, recs: list[dict]) -> dict:
    """Both paths on the same sample: rates, cosine agreement, recall@k of the anchor's neighbours."""
    from catalogtune.rag.embed import get_embedder
    from catalogtune.rag.index import embed_text

    step = max(1, len(recs) // cfg.embed_sample) if cfg.embed_sample else 1
    sample = recs[::step][: cfg.embed_sample or None]
    texts = [embed_text(r) for r in sample]
    ours_texts = [embed_text(r, cfg.text) for r in sample]
    titles = [r["title"] or embed_text(r) for r in sample[: cfg.queries]]
    ours = get_embedder(cfg.embedder)
    label, anchor, warm = _anchor(cfg.anchor)
    warm()
    ref, wall_a, cpu_a = timed(lambda: anchor(texts))
    if hasattr(ours, "warm"):
        ours.warm()
    new, wall_o, cpu_o = timed(lambda: ours.embed(ours_texts, batch_size=ours.batch_size))
    out = {"sample": len(texts), "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
           "ours": {"path": ours.name, "text": cfg.text, "batch_size": ours.batch_size,
                    "mean_chars": round(float(np.mean([len(t) for t in ours_texts])), 1),
                    **_rates(len(texts), wall_o, cpu_o)},
           "anchor": {"path": label, **_rates(len(texts), wall_a, cpu_a)}}
    out["speedup_cpu"] = round(cpu_a / cpu_o, 3) if cpu_o else None
    if ref.shape == new.shape:
        ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        q_ref, q_new = anchor(titles), ours.embed(titles)
        q_ref = q_ref / np.maximum(np.linalg.norm(q_ref, axis=1, keepdims=True), 1e-12)
        out["quality"] = {f"recall_at_{cfg.k}": round(recall_at_k(q_ref, ref, q_new, new, cfg.k), 4),
                          "queries": len(titles)}
        if ours_texts == texts:  # the same texts: the vectors themselves must agree
            cos = np.sum(ref * new, axis=1)
            out["quality"].update(cosine_min=round(float(cos.min()), 6), cosine_mean=round(float(cos.mean()), 6))
    return out


def storing_figures(recs: list[dict], dim: int, work: Path, seed: int) -> dict:
    """Records/s into Chroma: the index's chunked upsert path vs a bare add of the vectors."""
    from catalogtune.bench.retrieve import synthetic
    from catalogtune.rag.index import IndexConfig, _missing, _store, client, hnsw_settings

    vecs = synthetic(len(recs), dim, seed=seed)
    default = IndexConfig(data=work, out=work)
    settings = hnsw_settings(default.hnsw_m, default.hnsw_ef_construction, default.hnsw_ef_search)
    cl = client(work / "chroma")
    step = min(default.chunk, cl.get_max_batch_size())

    def ours() -> None:
        col = cl.create_collection("ours", configuration=settings, embedding_function=None)
        for i in range(0, len(recs), step):
            todo = _missing(col, recs[i : i + step])
            _store(col, todo, vecs[i : i + len(todo)])

    def documents() -> None:  # the path before 2026-12-03: descriptions as Chroma documents
        col = cl.create_collection("documents", configuration=settings, embedding_function=None)
        for i in range(0, len(recs), step):
            part = recs[i : i + step]
            col.add(ids=[r["id"] for r in part], embeddings=vecs[i : i + len(part)],
                    documents=[r["content"] for r in part], metadatas=[{"title": r["title"]} for r in part])

    def bare() -> None:
        col = cl.create_collection("bare", configuration=settings, embedding_function=None)
        big = cl.get_max_batch_size()
        for i in range(0, len(recs), big):
            col.add(ids=[r["id"] for r in recs[i : i + big]], embeddings=vecs[i : i + big])

    _, wall_o, cpu_o = timed(ours)
    _, wall_d, cpu_d = timed(documents)
    _, wall_b, cpu_b = timed(bare)
    return {"ours": {"path": f"index add in chunks of {step} (ids checked; title and description as metadata)",
                     **_rates(len(recs), wall_o, cpu_o)},
            "documents": {"path": "the same chunks with the descriptions as Chroma documents (full-text indexed)",
                          **_rates(len(recs), wall_d, cpu_d)},
            "anchor": {"path": f"collection.add of vectors only, batches of {cl.get_max_batch_size()}",
                       **_rates(len(recs), wall_b, cpu_b)}}


def projection(embed: dict, store: dict, cores: int) -> dict:
    """Hours for REAL_RECORDS on one thread, and with the embedding spread over ``cores``."""
    def hours(e: dict, s: dict, n_cores: int) -> float | None:
        if not e.get("records_per_cpu_s") or not s.get("records_per_cpu_s"):
            return None
        return round(REAL_RECORDS * (1 / (e["records_per_cpu_s"] * n_cores) + 1 / s["records_per_cpu_s"]) / 3600, 2)

    out = {"records": REAL_RECORDS, "target_h": TARGET_H, "cores": cores}
    for side in ("ours", "anchor"):
        out[f"{side}_1_thread_h"] = hours(embed[side], store["ours"], 1)
        out[f"{side}_{cores}_cores_h"] = hours(embed[side], store["ours"], cores)
    # the build embeds the next chunk while Chroma stores the last: at best both keep every core busy
    e, s = embed["ours"].get("records_per_cpu_s"), store["ours"].get("records_per_cpu_s")
    out[f"ours_{cores}_cores_pipelined_limit_h"] = (
        round(REAL_RECORDS * (1 / e + 1 / s) / cores / 3600, 2) if e and s else None)
    best = out[f"ours_{cores}_cores_h"]
    out["meets_target"] = bool(best is not None and best <= TARGET_H)
    return out


def run(cfg: IndexBenchConfig) -> dict:
    """Generate, embed a sample both ways, store everything both ways; the figures as a dict."""
    t0 = time.perf_counter()
    from catalogtune.bench import workdir

    if cfg.workdir is not None:
        shutil.rmtree(Path(cfg.workdir) / "chroma", ignore_errors=True)
    with workdir(cfg.workdir, "ct-bench-index-") as work:
        recs, gen_s, _ = timed(lambda: make_records(cfg.records, cfg.seed, work))
        embed = embedding_figures(cfg, recs)
        from catalogtune.rag.embed import get_embedder

        store = storing_figures(recs, get_embedder(cfg.embedder).dim, work, cfg.seed)
    return {
        "bench": "index", "raw_records": cfg.records, "records": len(recs), "generate_clean_s": round(gen_s, 1),
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": _torch_threads(),
                    "cpus": os.cpu_count()},
        "anchor": "SentenceTransformer.encode with its defaults, same records, same run",
        "embedding": embed, "storing": store, "projection": projection(embed, store, cfg.cores),
        "peak_rss_mb": round(peak_rss_mb(), 1), "load_avg_1m": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


def main(argv: list[str]) -> int:
    """`catalogtune bench index [--records 100000] [--embed-sample 2000] [--embedder minilm-onnx]`."""
    cfg = config.parse(IndexBenchConfig, argv, "catalogtune bench index", __doc__.splitlines()[0])
    emit(run(cfg))
    return 0
