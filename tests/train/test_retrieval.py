"""Retrieval-aware fine-tuning: references in a share of the prompts, never the product itself."""

from __future__ import annotations

import pytest

from catalogtune.core.util import CatalogtuneError
from catalogtune.train.retrieval import attach_contexts
from helpers import small_train_cfg, train_records, write_train_val


class FakeIndex:
    """Returns the record itself first (as a real index does for a training title), then others."""

    def __init__(self, rows):
        self.rows = rows
        self.queries = 0

    def query(self, titles, k):
        self.queries += 1
        out = []
        for t in titles:
            own = [r for r in self.rows if r["title"] == t]
            others = [r for r in self.rows if r["title"] != t]
            out.append([dict(r, score=1.0) for r in (own + others)[:k]])
        return out


def test_a_seeded_share_gets_references_without_itself():
    rows = train_records(40)
    counts = attach_contexts(rows, FakeIndex(train_records(40)), k=3, share=0.5, noise=0.0, seed=0)
    with_ctx = [r for r in rows if "context" in r]
    assert counts["with_context"] == len(with_ctx) and 10 <= len(with_ctx) <= 30
    for r in with_ctx:
        assert len(r["context"]) == 3
        assert all(c["id"] != r["id"] and c["content"].strip() != r["content"].strip() for c in r["context"])
    assert counts["self_dropped"] >= len(with_ctx)
    again = train_records(40)
    attach_contexts(again, FakeIndex(train_records(40)), k=3, share=0.5, noise=0.0, seed=0)
    assert [r.get("context") for r in again] == [r.get("context") for r in rows]  # reproducible


def test_share_and_noise_bounds():
    rows = train_records(20)
    assert attach_contexts(rows, FakeIndex(rows), k=2, share=0.0, noise=0.0, seed=1)["with_context"] == 0
    rows = train_records(20)
    counts = attach_contexts(rows, FakeIndex(train_records(20)), k=2, share=1.0, noise=1.0, seed=1)
    assert counts["with_context"] == 20 and counts["noise_swaps"] > 0
    with pytest.raises(CatalogtuneError, match="share and noise"):
        attach_contexts(rows, FakeIndex(rows), k=2, share=1.5, noise=0.0, seed=1)


def test_references_reach_the_training_prompts(tiny_model_dir):
    from catalogtune.core import models
    from catalogtune.train.batches import tokenize

    _, tok = models.load(tiny_model_dir)
    rows = train_records(8)
    bare = tokenize(rows, tok, 512).examples
    attach_contexts(rows, FakeIndex(train_records(8)), k=2, share=1.0, noise=0.0, seed=0)
    with_refs = tokenize(rows, tok, 512).examples
    assert all(b[1] < r[1] for b, r in zip(bare, with_refs))  # longer prompts, same descriptions
    assert [b[0][b[1]:] for b in bare] == [r[0][r[1]:] for r in with_refs]


def test_training_with_a_real_index(tmp_path, tiny_model_dir, capsys):
    from catalogtune.rag import index as rag
    from catalogtune.train.stage import run

    data = write_train_val(tmp_path)
    rag.run(rag.IndexConfig(data=data, out=tmp_path / "index", embedder="hash", progress=False))
    cfg = small_train_cfg(data, tiny_model_dir, tmp_path / "run", max_length=256, max_steps=2,
                          rag_index=tmp_path / "index", rag_k=2, rag_share=1.0)
    res = run(cfg)
    assert res.summary["steps"] == 2
    assert "retrieval-aware: 16/16 training" in capsys.readouterr().out
    with pytest.raises(CatalogtuneError, match="rag_index not found"):
        run(small_train_cfg(data, tiny_model_dir, tmp_path / "run2", rag_index=tmp_path / "nope"))
