"""`catalogtune bench retrieve` on small sizes: synthetic data, exact anchor, recall, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalogtune.core import config
from catalogtune.bench import retrieve as br
from catalogtune.core.util import CatalogtuneError


def test_synthetic_vectors_are_unit_clustered_and_prefix_stable():
    x = br.synthetic(5000, 48, clusters=20, seed=3)
    assert x.dtype == np.float32 and x.shape == (5000, 48)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(br.synthetic(3000, 48, clusters=20, seed=3), x[:3000])
    assert not np.array_equal(br.synthetic(3000, 48, clusters=20, seed=4), x[:3000])
    sims = x[:200] @ x[200:].T
    # Clustered: each point's nearest neighbour is far closer than a typical other point.
    assert float(np.mean(sims.max(axis=1))) > float(np.mean(sims)) + 0.3
    q = br.make_queries(x, 50, seed=1)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert float(np.mean((q @ x.T).max(axis=1))) > 0.9  # queries lie near stored points


def test_exact_topk_matches_a_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((503, 16)).astype(np.float32)
    q = rng.standard_normal((9, 16)).astype(np.float32)
    got = br.exact_topk(x, q, 10, block=37)
    want = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert np.array_equal(got, want)


def test_ef_search_change_takes_effect(tmp_path):
    # Chroma keeps a loaded index's ef_search; the bench must reopen it for a sweep to mean anything.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = br.make_queries(x, 40, seed=2, noise=1.0)
    truth = br.exact_topk(x, q, 10)
    col = br.client(tmp_path).get_or_create_collection(
        "bench", configuration=br.hnsw_settings(4, 8, 1), embedding_function=None)
    col.add(ids=[f"v{i}" for i in range(len(x))], embeddings=x)
    low = br._recall(br._time_chroma(col, q, 10)[1], truth)
    col = br.with_ef_search(col, tmp_path, 300)
    high = br._recall(br._time_chroma(col, q, 10)[1], truth)
    assert col.configuration_json["hnsw"]["ef_search"] == 300
    assert high > low + 0.1


def test_run_reports_latency_recall_and_anchor(tmp_path, capsys):
    argv = ["--sizes", "3000,1000", "--queries", "20", "--dim", "32", "--clusters", "10",
            "--ef-search", "64,4", "--workdir", str(tmp_path / "w"), "--embedder", "hash",
            "--embed-queries", "5"]
    assert br.main(argv) == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["n"] for r in fig["results"]] == [1000, 3000]
    for r in fig["results"]:
        assert 0 < r["p50_ms"] <= r["p95_ms"] and 0 < r["exact_p50_ms"] <= r["exact_p95_ms"]
        assert r["build_s"] > 0 and r["build_rate_per_s"] > 0
        assert 0.0 <= r["recall_at_10"] <= 1.0 and r["recall_at_10"] >= 0.9
        assert [s["ef_search"] for s in r["sweep"]] == [64, 4] and r["ef_search"] == 64
    assert fig["results"][1]["build_s"] >= fig["results"][0]["build_s"]
    assert fig["meets_target"] == (fig["results"][-1]["p95_ms"] < br.TARGET_P95_MS)
    emb = fig["embedder"]
    assert emb["name"] == "hash" and emb["records"] == 5 and emb["index_embed_rate_per_s"] > 0
    assert 0 < emb["query_embed_p50_ms"] <= emb["query_embed_p95_ms"]

    # A second run on the same workdir reuses the built collection (resume), adding nothing.
    state = json.loads((tmp_path / "w" / "bench_state.json").read_text())
    assert state["built"] == 3000
    again = br.run(config.build(br.RetrieveBenchConfig, sizes=[1000, 3000], queries=5, dim=32,
                                clusters=10, workdir=tmp_path / "w", embed_queries=0))
    first, second = again.figures["results"]
    assert [first["build_s"], second["build_s"]] == [r["build_s"] for r in fig["results"]]
    # 1000 cannot be re-measured in a collection of 3000: the saved figures come back, marked.
    assert first.get("reused") is True and first["recall_at_10"] == fig["results"][0]["recall_at_10"]
    assert "reused" not in second
    odd = br.run(config.build(br.RetrieveBenchConfig, sizes=[2000, 3000], queries=5, dim=32,
                              clusters=10, workdir=tmp_path / "w", embed_queries=0))
    assert "already holds 3000" in odd.figures["results"][0]["skipped"]


def test_interrupted_build_resumes_from_the_last_batch(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_add = None

    def dying_extend(col, x, state_path, state, batch):
        # Add two batches, then die as a kill would.
        nonlocal real_add
        calls["n"] += 1
        if calls["n"] == 1:
            real_add(col, x[:1000], state_path, state, batch)
            raise KeyboardInterrupt
        return real_add(col, x, state_path, state, batch)

    real_add = br._extend
    monkeypatch.setattr(br, "_extend", dying_extend)
    kw = dict(sizes=[2000], queries=5, dim=16, clusters=5, batch=500, workdir=tmp_path / "w",
              embed_queries=0)
    with pytest.raises(KeyboardInterrupt):
        br.run(config.build(br.RetrieveBenchConfig, **kw))
    assert json.loads((tmp_path / "w" / "bench_state.json").read_text())["built"] == 1000
    res = br.run(config.build(br.RetrieveBenchConfig, **kw))
    assert res.figures["results"][0]["n"] == 2000 and res.figures["results"][0]["recall_at_10"] > 0.8


def test_bad_options_are_one_line_errors():
    with pytest.raises(CatalogtuneError, match="sizes"):
        config.build(br.RetrieveBenchConfig, sizes=[5])
    with pytest.raises(CatalogtuneError, match="cannot read"):
        config.build(br.RetrieveBenchConfig, sizes="lots")
    with pytest.raises(CatalogtuneError, match="ef_search"):
        config.build(br.RetrieveBenchConfig, ef_search=[0])
