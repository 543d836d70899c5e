"""bench train: the ceiling, the FLOP count, the anchor's token counting and the JSON figures."""

from __future__ import annotations

import json

import pytest

from catalogtune.core import config
from catalogtune.bench import ceiling
from catalogtune.bench import train as bt
from catalogtune.core.util import CatalogtuneError
from helpers import write_splits


def test_matmul_ceiling_is_a_positive_rate():
    assert ceiling.matmul_ceiling_tflops(n=128, reps=2, trials=1) > 0
    wall, per_cpu = ceiling.matmul_ceiling(n=128, reps=2, trials=2)
    assert wall > 0 and per_cpu > 0
    with pytest.raises(ValueError):
        ceiling.matmul_ceiling_tflops(n=8)


def test_lora_flops_counts_the_architecture(tiny_model_dir):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(tiny_model_dir))
    h, i, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * hd
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down
    f = ceiling.lora_flops(tiny_model_dir, lora_r=4)
    assert f.decoder_params == c.num_hidden_layers * sum(a * b for a, b in shapes)
    assert f.lora_params == c.num_hidden_layers * sum(4 * (a + b) for a, b in shapes)
    assert f.head_params == c.vocab_size * h and f.layers == c.num_hidden_layers and f.attn_width == h


def test_flops_take_the_output_layer_only_where_loss_is_taken():
    f = ceiling.LoraFlops(decoder_params=100, head_params=1000, lora_params=10, layers=2, attn_width=8)
    assert f.flops(50, 20, 3.0) - f.flops(50, 0, 3.0) == 20 * 4 * 1000
    assert f.flops(50, 0, 6.0) > f.flops(50, 0, 3.0)  # longer contexts cost attention FLOPs
    assert ceiling.avg_context([1, 2]) == pytest.approx((1 + 1 + 2) / 3)
    assert ceiling.avg_context([]) == 0.0


def test_config_checks():
    with pytest.raises(CatalogtuneError):
        config.build(bt.BenchTrainConfig, steps=0)
    with pytest.raises(CatalogtuneError):
        config.build(bt.BenchTrainConfig, warmup_steps=0)
    with pytest.raises(CatalogtuneError):
        config.build(bt.BenchTrainConfig, no_such_option=1)


def test_prepare_data_refuses_missing_inputs(tmp_path):
    with pytest.raises(CatalogtuneError, match="not found"):
        bt.prepare_data(tmp_path / "nope.jsonl", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogtuneError, match="train.parquet"):
        bt.prepare_data(tmp_path / "empty", tmp_path)


def test_timed_window_skips_the_warmup_steps():
    stamps = [(10.0, 1.0), (13.0, 2.0), (14.0, 4.0), (16.0, 8.0)]
    counts = [(999, 999), (100, 60), (110, 70), (120, 80)]
    got = bt._timed(stamps, counts, {"warmup_steps": 1, "steps": 3})
    assert got["wall_s"] == 6.0 and got["cpu_s"] == 7.0 and got["tokens"] == 330 and got["useful_tokens"] == 210
    with pytest.raises(CatalogtuneError, match="steps ran"):
        bt._timed(stamps[:2], counts[:2], {"warmup_steps": 1, "steps": 3})


def test_summarise_keeps_the_contract_keys():
    cfg = bt.BenchTrainConfig(model="tiny-random", steps=2)
    f = ceiling.LoraFlops(decoder_params=10**6, head_params=10**5, lora_params=10**4, layers=2, attn_width=64)
    runs = {
        "ours": [{"wall_s": 2.0, "cpu_s": 4.0, "tokens": 1000, "useful_tokens": 600, "peak_rss_mb": 500.0},
                 {"wall_s": 1.0, "cpu_s": 2.0, "tokens": 1000, "useful_tokens": 600, "peak_rss_mb": 510.0}],
        "anchor": [{"wall_s": 4.0, "cpu_s": 6.0, "tokens": 1000, "useful_tokens": 600, "peak_rss_mb": 900.0}],
    }
    out = bt.summarise(cfg, runs, ceiling=(1.0, 2.0), flops=f, ctx=50.0)
    for key in ("useful_tokens_per_s", "anchor_useful_tokens_per_s", "ceiling_fraction", "tokens_per_s",
                "anchor_tokens_per_s", "speedup", "ceiling_tflops", "achieved_tflops", "peak_rss_mb",
                "anchor_peak_rss_mb", "model", "steps"):
        assert key in out
    assert out["useful_tokens_per_s"] == 600.0  # the best repeat
    assert out["speedup"] == pytest.approx(4.0) and out["speedup_per_cpu_s"] == pytest.approx(3.0)
    assert out["ceiling_fraction"] == pytest.approx(f.flops(1000, 600, 50.0) / 1.0 / 1e12)
    assert out["ceiling_fraction_cpu"] == pytest.approx(f.flops(1000, 600, 50.0) / 2.0 / 1e12 / 2.0)
    json.dumps(out)  # the whole result is JSON-serialisable


def test_anchor_counts_tokens_like_our_tokenisation(tmp_path, sample_path, tiny_model_dir):
    """With 8 records and batch 8 every step sees all records: the counts must match ours."""
    from catalogtune.data.io import read_split
    from transformers import AutoTokenizer

    data = write_splits(tmp_path / "data", sample_path, 8)
    spec = {"model": str(tiny_model_dir), "steps": 1, "warmup_steps": 1, "batch_size": 8, "max_length": 96,
            "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lr": 1e-3, "seed": 0, "data": str(data),
            "out": str(tmp_path / "anchor")}
    got = bt._anchor_worker(spec)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    totals, useful = bt.sample_lengths(tok, read_split(data, "train"), 96)
    assert got["tokens"] == sum(totals) and got["useful_tokens"] == sum(useful)
    assert 0 < got["useful_tokens"] < got["tokens"] and got["wall_s"] > 0 and got["peak_rss_mb"] > 0


@pytest.mark.integration
def test_bench_main_prints_the_json_last(tmp_path, sample_path, tiny_model_dir, capsys):
    pytest.importorskip("catalogtune.train.stage")
    data = write_splits(tmp_path / "data", sample_path, 24)
    rc = bt.main(["--model", str(tiny_model_dir), "--steps", "1", "--data", str(data), "--max-length", "96"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["useful_tokens_per_s"] > 0 and last["anchor_useful_tokens_per_s"] > 0
    assert 0 < last["ceiling_fraction"] and last["speedup"] > 0
