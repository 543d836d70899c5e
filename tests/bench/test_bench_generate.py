"""`catalogtune bench generate` with the tiny model: the JSON line's figures are consistent."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli
from catalogtune.bench import generate as BG
from catalogtune.core.util import CatalogtuneError


def test_bench_generate_json_line(tiny_model_dir, sample_path, capsys):
    import torch

    threads = torch.get_num_threads()
    argv = ["bench", "generate", "--model", str(tiny_model_dir), "--prompts", "4", "--max-new-tokens", "6",
            "--batch-size", "2", "--sample", str(sample_path), "--no-bf16", "--same-precision-anchor"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("batched_tokens_per_s", "sequential_tokens_per_s", "speedup", "model", "prompts", "new_tokens"):
        assert key in res
    assert res["prompts"] == 4 and res["model"] == str(tiny_model_dir) and res["bf16_autocast"] is False
    assert 0 < res["new_tokens"] <= 4 * 6
    # fp32 greedy on both paths: the batched path reproduces the plain one-at-a-time outputs
    assert res["new_tokens"] == res["sequential_new_tokens"] and res["same_text_as_anchor"] == 4
    ratio = res["batched_tokens_per_s"] / res["sequential_tokens_per_s"]
    assert res["speedup"] == pytest.approx(ratio, rel=0.02)
    assert res["generator_bs1_tokens_per_s"] > 0
    assert torch.get_num_threads() == threads  # the bench gives the process-wide setting back


def test_titles_from_sample(sample_path, tmp_path):
    titles = BG.load_titles(sample_path, 5)
    assert len(titles) == 5 and all(t.strip() for t in titles)
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"title": "a"}\nnot json\n{"title": ""}\n{"x": 1}\n{"title": "b"}\n', encoding="utf-8")
    assert BG.load_titles(bad, 2) == ["a", "b"]
    with pytest.raises(CatalogtuneError, match="only 2"):
        BG.load_titles(bad, 3)
    with pytest.raises(CatalogtuneError, match="missing.jsonl"):
        BG.load_titles(tmp_path / "missing.jsonl", 1)


@pytest.mark.parametrize("opt", [["--prompts", "0"], ["--max-new-tokens", "5000"], ["--batch-size", "0"]])
def test_bad_options(opt, capsys):
    assert cli.main(["bench", "generate", *opt]) == 2


def test_auto_threads_backs_off_on_a_busy_machine():
    import os

    cores = os.cpu_count() or 1
    assert BG.auto_threads(cores + 5.0, default=cores) == 1
    assert BG.auto_threads(0.1, default=cores) == cores
