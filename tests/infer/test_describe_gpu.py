"""`describe --backend vllm` on a CUDA machine: SmolLM2 with a LoRA adapter served by vLLM.

Skipped without CUDA or without vLLM (`pip install vllm`); runs with `pytest -m gpu` where both are.
"""

from __future__ import annotations

import importlib.util

import pytest

from helpers import make_run

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install vllm)"),
]


def test_vllm_backend_describes_resumes_and_keeps_the_schema(tmp_path):
    import pyarrow.parquet as pq

    from catalogtune.core import models
    from catalogtune.infer import describe as D

    base = models.resolve("smollm2-135m")
    run_dir = make_run(tmp_path / "run", base)
    data = tmp_path / "in.jsonl"
    titles = [f"Stainless steel {w} pan, {i} inch" for i, w in enumerate(["frying", "sauce", "saute"] * 4)]
    data.write_text("".join(f'{{"uid": "G{i}", "title": "{t}", "content": ""}}\n' for i, t in enumerate(titles)))
    cfg = D.DescribeConfig(data=data, run=run_dir, out=tmp_path / "out", backend="vllm", chunk=5,
                           max_new_tokens=24, only_missing=True, progress=False)
    res = D.run(cfg)
    assert res.summary["rows_written"] == 12 and res.summary["chunks_written"] == 3
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["uid"] for r in rows) == sorted(f"G{i}" for i in range(12))
    assert all(0 <= r["new_tokens"] <= 24 and r["stopped"] in ("eos", "length") for r in rows)
    assert sum(bool(r["description"]) for r in rows) >= 10
    again = D.run(cfg)
    assert again.summary["rows_written"] == 0 and again.summary["chunks_skipped"] == 3
