"""`catalogtune bench score` with the tiny model: both paths score the same likelihoods."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli


def test_bench_score_json_line(tiny_model_dir, sample_path, capsys):
    argv = ["bench", "score", "--model", str(tiny_model_dir), "--records", "6", "--batch-size", "4",
            "--references", "2", "--repeats", "1", "--sample", str(sample_path)]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "score" and res["records"] == 6 and res["references"] == 2
    # the same likelihoods on both paths: length-sorted batches and packed weights change the time only
    assert res["max_nll_diff_per_token"] < 1e-4
    assert res["anchor_ppl"] == pytest.approx(res["ours_ppl"], rel=1e-4)
    assert 0 < res["scored_tokens"] < res["tokens"]
    assert res["speedup"] == pytest.approx(res["anchor_s"] / res["ours_s"], rel=0.05, abs=0.02)
    # the limit: 2 FLOPs per weight per token at the float32 ceiling measured in the run
    assert res["fp32_matmul_ceiling_tflops"] > 0 and res["limit_s"] > 0
    assert res["ceiling_fraction"] == pytest.approx(res["limit_s"] / res["ours_s"], rel=0.05, abs=0.002)
    assert len(res["runs"]["anchor"]) == len(res["runs"]["ours"]) == 1


def test_bench_score_bad_option_is_one_line(capsys):
    assert cli.main(["bench", "score", "--records", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records" in err[0]
