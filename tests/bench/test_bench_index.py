"""`catalogtune bench index` on a small synthetic set with the hash embedder: the JSON's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from catalogtune.bench import BENCHES
from catalogtune.bench import index as bi


def test_recall_at_k_is_one_for_the_same_vectors_and_lower_for_others():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((200, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    assert bi.recall_at_k(q, d, q, d, 10) == 1.0
    assert bi.recall_at_k(q, d, q, rng.standard_normal((200, 16)).astype(np.float32), 10) < 0.5


def test_bench_index_prints_both_paths_quality_and_projection(tmp_path, capsys):
    assert "index" in BENCHES
    argv = ["--records", "400", "--embed-sample", "100", "--embedder", "hash-384", "--anchor", "hash-384",
            "--queries", "20", "--workdir", str(tmp_path / "w")]
    assert bi.main(argv) == 0
    fig = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fig["bench"] == "index" and 0 < fig["records"] < 400  # empty descriptions dropped
    emb = fig["embedding"]
    assert emb["sample"] == 100 and emb["ours"]["records_per_cpu_s"] > 0 and emb["anchor"]["records_per_s"] > 0
    assert emb["quality"]["cosine_min"] > 0.9999 and emb["quality"]["recall_at_10"] == 1.0
    for side in ("ours", "documents", "anchor"):
        assert fig["storing"][side]["records"] == fig["records"] and fig["storing"][side]["records_per_s"] > 0
    proj = fig["projection"]
    assert proj["records"] == bi.REAL_RECORDS and proj["ours_2_cores_h"] <= proj["ours_1_thread_h"]
    # every CPU second of both parts over 2 cores, from the same rates
    e, s = emb["ours"]["records_per_cpu_s"], fig["storing"]["ours"]["records_per_cpu_s"]
    assert proj["ours_2_cores_pipelined_limit_h"] == pytest.approx(bi.REAL_RECORDS * (1 / e + 1 / s) / 2 / 3600, abs=0.006)
    assert isinstance(proj["meets_target"], bool) and "OMP_NUM_THREADS" in fig["threads"]


def test_bench_index_title_recipe_embeds_shorter_texts_and_reports_recall_only(tmp_path, capsys):
    argv = ["--records", "400", "--embed-sample", "100", "--embedder", "hash-384", "--anchor", "hash-384",
            "--queries", "20", "--text", "title", "--workdir", str(tmp_path / "w")]
    assert bi.main(argv) == 0
    emb = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["embedding"]
    assert emb["ours"]["text"] == "title" and emb["ours"]["mean_chars"] < emb["mean_chars"]
    # other texts than the anchor's: no vector agreement to report, and its neighbours differ
    assert "cosine_min" not in emb["quality"] and emb["quality"]["recall_at_10"] < 1.0
    with pytest.raises(ValueError, match="title\\+content, title"):
        bi.IndexBenchConfig(text="content")
