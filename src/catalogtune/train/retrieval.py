"""Retrieval-aware fine-tuning: put retrieved training records in a share of the prompts.

At inference the "+rag" systems see the top-k records of the index in the prompt. A model
trained only on bare titles has never seen that layout: on the shared sample its answers got
shorter and worse with references in the prompt. Here a seeded share of the training (and
validation) examples get their own top-k neighbours from the same index, laid out by the same
``build_prompt``, with the product itself excluded (else the model learns to copy its answer)
and some neighbours swapped for random records (so it learns that a reference can be
irrelevant and must then be ignored). The rest keep the bare prompt, so one adapter serves both
"fine-tuned" and "fine-tuned + RAG".
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from catalogtune.core.util import CatalogtuneError


def _rng(seed: int, rec_id: str) -> random.Random:
    # One generator per record: a record's context does not depend on the others' order.
    return random.Random(f"{seed}:{rec_id}")


def attach_contexts(
    rows: list[dict],
    index: Any,
    k: int,
    share: float,
    noise: float,
    seed: int,
    pool: Sequence[dict] | None = None,
) -> dict[str, int]:
    """Give a seeded ``share`` of ``rows`` a ``context`` list of ``k`` retrieved records, in place.

    ``index.query(titles, k)`` supplies neighbours (``{"id", "title", "content", "score"}``); the
    record itself (same id or same description) is dropped. Each kept neighbour is replaced with
    probability ``noise`` by a random record of ``pool`` (default ``rows``). Returns counts:
    ``with_context``, ``noise_swaps``, ``self_dropped``.
    """
    if not 0.0 <= share <= 1.0 or not 0.0 <= noise <= 1.0:
        raise CatalogtuneError("rag share and noise must be in [0, 1]")
    if k < 1:
        raise CatalogtuneError("rag k must be at least 1")
    pool = list(pool if pool is not None else rows)
    counts = {"with_context": 0, "noise_swaps": 0, "self_dropped": 0}
    chosen = [r for r in rows if _rng(seed, str(r.get("id", r.get("title")))).random() < share]
    if not chosen:
        return counts
    hits = index.query([str(r.get("title") or "") or "-" for r in chosen], k=k + 1)
    for rec, recs in zip(chosen, hits):
        rng = _rng(seed + 1, str(rec.get("id", rec.get("title"))))
        own = (str(rec.get("content") or "")).strip()
        kept = [h for h in recs if h.get("id") != rec.get("id") and str(h.get("content", "")).strip() != own]
        counts["self_dropped"] += len(recs) - len(kept)
        kept = kept[:k]
        for i in range(len(kept)):
            if pool and rng.random() < noise:
                other = pool[rng.randrange(len(pool))]
                if other.get("id") != rec.get("id"):
                    kept[i] = {"id": other.get("id"), "title": other.get("title", ""), "content": other.get("content", "")}
                    counts["noise_swaps"] += 1
        rec["context"] = [{"id": h.get("id"), "title": h.get("title", ""), "content": h.get("content", "")} for h in kept]
        counts["with_context"] += 1
    return counts


def add_retrieval(cfg: Any, train_rows: list[dict], val_rows: list[dict]) -> dict[str, Any]:
    """Open ``cfg.rag_index`` and attach contexts to the training and validation rows; the counts."""
    from catalogtune.rag.index import Index, is_address

    if not is_address(cfg.rag_index) and not Path(cfg.rag_index).exists():
        raise CatalogtuneError(f"rag_index not found: {cfg.rag_index} (build it: catalogtune index)")
    index = Index.open(cfg.rag_index)
    stats = {"train": attach_contexts(train_rows, index, cfg.rag_k, cfg.rag_share, cfg.rag_noise, cfg.seed),
             "val": attach_contexts(val_rows, index, cfg.rag_k, cfg.rag_share, cfg.rag_noise, cfg.seed,
                                    pool=train_rows)}
    return stats
