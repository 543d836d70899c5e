"""`catalogtune bench generate` with the tiny model: the JSON line's figures are consistent."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli
from catalogtune.bench import generate as BG
from catalogtune.core.decoding import DECODING
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
    # continuous batching (the default) against the static batches it replaced: the same tokens
    assert res["continuous_batching"] is True and res["same_tokens_as_static"] == 4
    assert res["speedup_over_static"] == pytest.approx(
        res["batched_tokens_per_s"] / res["static_batch_tokens_per_s"], rel=0.02, abs=0.006)
    ratio = res["batched_tokens_per_s"] / res["sequential_tokens_per_s"]
    assert res["speedup"] == pytest.approx(ratio, rel=0.02, abs=0.006)  # speedup is rounded to 0.01
    assert res["generator_bs1_tokens_per_s"] > 0
    assert torch.get_num_threads() == threads  # the bench gives the process-wide setting back
    # evaluate's settings by default: references in the prompt, the project's repetition rules
    assert res["settings"] == "evaluate" and res["decoding"]["no_repeat_ngram_size"] == 3
    assert res["mean_prompt_tokens"] > 60
    # ... and evaluate's title guidance on both paths (the anchor through transformers' processor)
    assert res["guidance"] == DECODING.guidance > 0 and 0 < res["mean_negative_prompt_tokens"] < res["mean_prompt_tokens"]
    # the roofline: weights read once per step, 2 FLOPs per weight per row (guidance: two rows each), whichever is slower...
    b, flop_s = res["batch_size"], res["matmul_ceiling_tflops"] * 1e12
    assert res["roofline_passes"] == 2
    step = max(res["weight_bytes_per_step"] / (res["memory_bandwidth_gb_s"] * 1e9), 2 * res["linear_weights"] * b * 2 / flop_s)
    assert res["decode_only_roofline_tokens_per_s"] == pytest.approx(b / step, rel=0.01)
    # ... after the prefill of each row's prompt and its negative's tail (the start it shares with its
    # prompt is computed once), which the measured tokens/s include
    assert 0 < res["mean_negative_tail_tokens"] <= res["mean_negative_prompt_tokens"]
    new = res["new_tokens"] / res["prompts"]
    prefill = 2 * res["linear_weights"] * b * (res["mean_prompt_tokens"] + res["mean_negative_tail_tokens"]) / flop_s
    assert res["roofline_new_tokens_per_row"] == pytest.approx(new, abs=0.06)
    assert res["roofline_tokens_per_s"] == pytest.approx(b * new / (prefill + new * step), rel=0.02)
    assert res["roofline_tokens_per_s"] < res["decode_only_roofline_tokens_per_s"]
    assert 0 < res["prefill_share_of_limit_time"] < 1
    assert res["share_of_roofline"] == pytest.approx(res["batched_tokens_per_s"] / res["roofline_tokens_per_s"], rel=0.02, abs=1e-4)


def test_bench_generate_plain_settings_with_a_run(tiny_model_dir, tmp_path, sample_path, capsys):
    from helpers import make_run

    run = make_run(tmp_path / "run", tiny_model_dir)
    argv = ["bench", "generate", "--run", str(run), "--prompts", "3", "--max-new-tokens", "5", "--batch-size", "3",
            "--sample", str(sample_path), "--no-bf16", "--settings", "plain", "--no-roofline"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["run"] == str(run) and res["settings"] == "plain" and "roofline_tokens_per_s" not in res
    # the merged copy (batched) and the adapter layers (anchor) give the same greedy texts
    assert res["same_text_as_anchor"] == 3 and res["decoding"]["repetition_penalty"] == 1.0
    assert res["guidance"] == 0.0
    assert res["mean_prompt_tokens"] < 60


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


@pytest.mark.parametrize("opt", [["--prompts", "0"], ["--max-new-tokens", "5000"], ["--batch-size", "0"],
                                 ["--settings", "fast"], ["--guidance", "-1"]])
def test_bad_options(opt, capsys):
    assert cli.main(["bench", "generate", *opt]) == 2


def test_auto_threads_backs_off_on_a_busy_machine(monkeypatch):
    import os

    import torch

    from catalogtune.core.util import auto_threads, torch_threads

    cores = os.cpu_count() or 1
    assert auto_threads(cores + 5.0, default=cores) == 1
    assert auto_threads(0.1, default=cores) == cores
    # torch_threads sets the count for a block and gives the old one back, even on an error
    old = torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 5.0, 0.0, 0.0))
    with torch_threads() as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == old
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with torch_threads(respect_env=True) as n:  # evaluate's setting: a user's OMP_NUM_THREADS wins
        assert n == old == torch.get_num_threads()
    try:
        with torch_threads(1):
            raise KeyError("x")
    except KeyError:
        pass
    assert torch.get_num_threads() == old
