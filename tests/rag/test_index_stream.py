"""The index build streams its split, prints a plan first, and accepts minilm-onnx vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catalogtune.rag import index as rag
from catalogtune.rag.embed import get_embedder


def _write(folder: Path, rows: list[dict], row_group: int = 7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    cols = {k: pa.array([r[k] for r in rows], pa.string()) for k in ("id", "title", "content")}
    pq.write_table(pa.table(cols), folder / "train.parquet", row_group_size=row_group)
    return folder


def _rows(n: int) -> list[dict]:
    rows = [{"id": f"r{i}", "title": f"Red kettle model {i}", "content": f"Boils water {i} times."} for i in range(n)]
    rows[30] = dict(rows[3])  # a duplicate id in a later chunk
    rows[31] = {"id": "blank", "title": "", "content": "  "}
    return rows


def test_streamed_chunks_match_the_whole_split(tmp_path):
    data = _write(tmp_path / "d", _rows(50))
    chunks = list(rag.iter_train(data, rows=8))
    assert [len(c) for c in chunks] == [8] * 6 + [2]
    assert [r for c in chunks for r in c] == rag.read_train(data)
    assert sum(len(c) for c in rag.iter_train(data, limit=13, rows=8)) == 13
    whole, bad = rag.valid_records(rag.read_train(data))
    found = rag.scan(data)
    # Deduplication works across chunks and the digest is the one of the whole list.
    assert (found.records, found.invalid) == (len(whole), bad) == (48, 2)
    assert found.fingerprint == rag.fingerprint(whole) and len(found.probe) == rag.PROBE_RECORDS


def test_build_prints_a_plan_and_streams(tmp_path, capsys, monkeypatch):
    data = _write(tmp_path / "d", _rows(50))
    monkeypatch.setattr(rag, "READ_ROWS", 8)  # many read chunks, one fill chunk of 20
    res = rag.run(rag.IndexConfig(data=data, out=tmp_path / "i", embedder="hash", chunk=20, progress=False))
    assert (res.added, res.skipped, res.total, res.invalid) == (48, 0, 48, 2)
    err = capsys.readouterr().err
    assert "index plan: 48 records, 48 to embed and store (hash)" in err and "peak memory about" in err
    man = json.loads((tmp_path / "i" / rag.MANIFEST).read_text())
    assert man["space"] == "hash" and man["data_fingerprint"] == rag.scan(data).fingerprint
    again = rag.run(rag.IndexConfig(data=data, out=tmp_path / "i", embedder="hash", progress=False))
    assert (again.added, again.skipped) == (0, 48) and "all already stored" in capsys.readouterr().err
    assert rag.Index.open(tmp_path / "i", data=data).count() == 48


def test_plan_line_projects_time_and_memory():
    line = rag.plan_line(1_390_000, 1_390_000, get_embedder("minilm-onnx"), 1 / 30, 1 / 900)
    assert line.startswith("index plan: 1,390,000 records") and "about 13 h 17 min" in line and "GB" in line


def test_minilm_index_opens_with_either_minilm_embedder():
    man = {"embedder": "minilm", "dim": 384}
    assert rag.space_of(man) == "minilm" == get_embedder("minilm-onnx").space == get_embedder("minilm").space
    assert rag.space_of({"embedder": "hash"}) == "hash"
    assert rag.IndexConfig(data=Path("d"), out=Path("o")).batch_size is None  # the embedder's own


@pytest.mark.integration
def test_onnx_vectors_equal_sentence_transformers(sample_path):
    rows = [json.loads(line) for line in sample_path.read_text(encoding="utf-8").splitlines()[:24]]
    texts = [rag.embed_text({"title": r["title"], "content": r["content"][:1000]}) for r in rows] + [""]
    ref = get_embedder("minilm").embed(texts)
    onnx = get_embedder("minilm-onnx")
    got = onnx.embed(texts)
    assert got.shape == ref.shape and float(np.min(np.sum(ref * got, axis=1))) > 0.9999
    # Batch size and order do not change a text's vector (no padding leaks into the mean).
    assert np.allclose(onnx.embed(texts[::-1], batch_size=1)[::-1], got, atol=1e-5)
