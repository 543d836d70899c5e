"""`catalogtune bench describe` with the tiny model: the JSON line's figures are consistent."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli
from catalogtune.bench import describe as BD


def test_bench_describe_json_line(tiny_model_dir, sample_path, capsys):
    import torch

    threads = torch.get_num_threads()
    argv = ["bench", "describe", "--model", str(tiny_model_dir), "--products", "5", "--chunk", "2",
            "--max-new-tokens", "5", "--sample", str(sample_path), "--no-bf16"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "describe" and res["products"] == 5 and res["chunk"] == 2
    assert 0 < res["new_tokens"] <= 5 * 5
    # fp32 greedy: the chunked path (the real stage, three part files) reproduces one title at a time
    assert res["new_tokens"] == res["one_at_a_time_new_tokens"] and res["same_text_as_anchor"] == 5
    ratio = res["chunked_products_per_s"] / res["one_at_a_time_products_per_s"]
    assert res["speedup"] == pytest.approx(ratio, rel=0.02, abs=0.006)  # speedup is rounded to 0.01
    proj = res["projection_858k"]
    assert proj["chunked_hours"] == pytest.approx(858_000 / res["chunked_products_per_s"] / 3600, rel=0.02, abs=0.1)
    assert proj["one_at_a_time_hours"] == pytest.approx(858_000 / res["one_at_a_time_products_per_s"] / 3600,
                                                        rel=0.02, abs=0.1)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("opt", [["--products", "0"], ["--chunk", "0"], ["--max-new-tokens", "5000"]])
def test_bad_options(opt):
    assert cli.main(["bench", "describe", *opt]) == 2


def test_listed_among_the_benches(capsys):
    assert cli.main(["bench", "--help"]) == 0
    assert "describe" in capsys.readouterr().out
    assert BD.MISSING_PRODUCTS == 858_000
