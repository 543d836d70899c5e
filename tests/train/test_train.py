"""The training engine end to end on the tiny random model and a few synthetic records."""

from __future__ import annotations

import json
import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from catalogtune import cli

from catalogtune.core import config

from catalogtune.train import checkpoints as train_ckpt
from catalogtune.train.stage import TrainConfig, run
from catalogtune.train.batches import read_split
from catalogtune.train.loop import Loop
from catalogtune.core.util import CatalogtuneError, read_json
from helpers import small_train_cfg, train_records, write_train_val

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_train_val(tmp_path_factory.mktemp("traindata"))


@pytest.fixture
def make_cfg(data_dir, tiny_model_dir, tmp_path):
    def make(name="run", **kw):
        return small_train_cfg(data_dir, tiny_model_dir, tmp_path / name, **kw)
    return make


def test_lora_weights_change_base_weights_do_not(make_cfg, data_dir):
    cfg = make_cfg(max_steps=3)
    loop = Loop(cfg, read_split(data_dir, "train"), read_split(data_dir, "val"))
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    summary = loop.run()
    after = dict(loop.model.named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in after.items():
        same = torch.equal(before[n], p.detach())
        assert same != p.requires_grad, n  # every LoRA weight moved, no base weight did
    assert summary["steps"] == 3 and summary["stopped"] == "max_steps"
    for key in ("tokens", "useful_tokens", "wall_s", "tokens_per_s", "useful_tokens_per_s",
                "peak_rss_mb", "best_val_loss", "initial_val_loss"):
        assert summary[key] is not None and summary[key] > 0, key
    assert summary["useful_tokens"] < summary["tokens"]  # prompts carry no loss
    assert summary["backend"] == "torch" and summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ("peak_gpu_mb" in summary) == torch.cuda.is_available()
    rows = [json.loads(x) for x in (cfg.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "val_loss" in rows[1] and "val_loss" in rows[2]
    assert {"loss", "lr", "tokens_per_s", "useful_tokens_per_s", "time"} <= set(rows[0])
    assert read_json(cfg.out / "progress.json")["state"] == "finished"
    assert (cfg.out / "adapter" / "adapter_config.json").is_file() and any((cfg.out / "tb").iterdir())
    assert config.build(TrainConfig, cfg.out / "config.yaml").model == cfg.model


def test_loss_falls_on_a_repeated_batch(make_cfg):
    # 4 records, batch 4: every step sees the same batch
    res = run(make_cfg(max_samples=4, max_steps=8, lora_dropout=0.0, eval_every=0, lr=2e-2))
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1


def test_plan_is_printed_before_the_steps_and_kept_in_the_summary(make_cfg, capsys):
    from catalogtune.train.loop import plan_line

    res = run(make_cfg(max_steps=6, eval_every=3, memory_probe=True))
    plan = res.summary["plan"]
    assert plan["steps_left"] == 6 and plan["records"] == res.summary["n_train"]
    assert plan["probe_s"] > 0 and plan["projected_s"] > 0 and plan["probe_tokens"] <= 4 * 48
    assert "train plan: " in capsys.readouterr().err
    week = plan_line({**plan, "projected_s": 7 * 24 * 3600.0})
    assert "168 h 0 min" in week and "more than a day" in week
    assert "more than a day" not in plan_line({**plan, "projected_s": 90.0})


def test_budget_keeps_the_steps_that_fit_and_resume_keeps_them(make_cfg):
    from catalogtune.core.util import budget_seconds

    full = run(make_cfg("full", max_steps=None, epochs=4, eval_every=0, memory_probe=True)).summary
    assert full["stopped"] == "finished" and "kept_steps" not in full["plan"]
    # a budget far below one step's time keeps one step (a tenth of the first run's projection was
    # flaky: the first probe in a process is the slowest, and under load the next one can be 3x faster)
    budget = "0.001s"
    cut = run(make_cfg("cut", max_steps=None, epochs=4, eval_every=0, memory_probe=True, budget=budget)).summary
    assert cut["stopped"] == "budget" and 1 <= cut["steps"] < full["steps"]
    assert cut["plan"]["kept_steps"] == cut["steps"] and cut["plan"]["planned_steps"] == full["steps"]
    assert cut["plan"]["budget_s"] == budget_seconds(budget)
    # under one epoch fits: one pass over a stratified sample of exactly the records the steps see
    assert cut["sample"]["records"] == cut["plan"]["sample_records"] < cut["n_train"] == full["n_train"]
    assert cut["sample"]["records"] <= cut["steps"] * 4 and cut["sample"]["strata"].startswith("title length")
    # the kept step count is in the checkpoint: a resume (a new, slower probe) keeps the same schedule
    again = run(make_cfg("cut", max_steps=None, epochs=4, eval_every=0, memory_probe=True, budget="0.001s",
                         resume=True)).summary
    assert again["steps"] == cut["steps"] and again["resumed_from"] == cut["steps"]
    assert again["sample"] == cut["sample"]
    # a generous budget changes nothing
    roomy = run(make_cfg("roomy", max_steps=None, epochs=4, eval_every=0, memory_probe=True, budget="10h")).summary
    assert roomy["stopped"] == "finished" and roomy["steps"] == full["steps"]
    with pytest.raises(CatalogtuneError, match="budget must look like"):
        make_cfg("bad", budget="soon")


def test_budget_on_a_split_larger_than_it_can_use_reads_a_stratified_pool(make_cfg, data_dir, monkeypatch, capsys):
    from catalogtune.data.categories import stratified_sample
    from catalogtune.data.io import read_split_sample
    from catalogtune.train import stage

    assert stage.budget_pool_size("30m", "cpu") == 18_000 and stage.budget_pool_size("2h", "cuda") == 7_200_000
    assert stage.budget_pool_size("1m", "cpu") == stage.MIN_POOL
    # a pool of 10 of the 16 records (on the full catalogue: 18,000 of 1.39M for 30 min on a CPU)
    monkeypatch.setattr(stage, "MIN_POOL", 10)
    monkeypatch.setattr(stage, "POOL_RECORDS_PER_S", {"cpu": 0.0, "cuda": 0.0})
    res = run(make_cfg("pool", max_steps=None, epochs=1, eval_every=0, budget="10h"))
    assert "16 training records are more than it can use; reading a seeded sample of 10" in capsys.readouterr().err
    s = res.summary
    assert s["pool"] == {"records": 10, "of": 16, "seed": 0, "strata": "title length x inferred category"}
    assert s["n_train"] == 10 and s["steps"] == 3  # one epoch of 10 records in batches of 4
    rows = read_split(data_dir, "train")
    assert stratified_sample(rows, 10, 0) == [int(r["id"]) for r in read_split_sample(data_dir, "train", 10, 0)]
    # without a budget, or with --max-samples, the split is read as before
    assert stage._budget_pool(make_cfg("nob", budget=None)) == (None, None)
    assert stage._budget_pool(make_cfg("cap", budget="10h", max_samples=4)) == (None, None)


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_resume_after_sigterm_or_kill_equals_uninterrupted(make_cfg):
    full = run(make_cfg("full", max_steps=6, eval_every=0))

    def sigterm_at_3(step, loop):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    part = run(make_cfg("part", max_steps=6, eval_every=0), callback=sigterm_at_3)
    assert part.summary["stopped"] == "cancelled" and part.summary["steps"] == 3
    assert read_json(part.run_dir / "progress.json")["state"] == "cancelled"
    assert [s for s, _ in train_ckpt.checkpoints(part.run_dir)] == [2, 3]  # signal saved step 3

    def die_at_5(step, loop):  # a hard failure after step 5: the step-4 checkpoint is all that is left
        if step == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run(make_cfg("part", max_steps=6, eval_every=0, resume=True), callback=die_at_5)
    assert read_json(part.run_dir / "progress.json")["state"] == "failed"
    resumed = run(make_cfg("part", max_steps=6, eval_every=0, resume=True))
    assert resumed.summary["steps"] == 6 and resumed.summary["resumed_from"] == 4
    a, b = _adapter(full.run_dir), _adapter(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps redone after the checkpoint are not logged twice


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    state = train_ckpt.LoopState(step=2)
    w = {"a": torch.ones(3)}
    train_ckpt.save_checkpoint(tmp_path, state, w, {"x": 1}, None)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        train_ckpt.save_checkpoint(tmp_path, train_ckpt.LoopState(step=4), w, {"x": 1}, None)
    assert [s for s, _ in train_ckpt.checkpoints(tmp_path)] == [2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]  # no half folder
    monkeypatch.undo()
    for step in (4, 6):
        train_ckpt.save_checkpoint(tmp_path, train_ckpt.LoopState(step=step), w, {"x": 1}, w)
    assert [s for s, _ in train_ckpt.checkpoints(tmp_path)] == [4, 6]  # only the last two kept
    st, tr, opt, best = train_ckpt.load_checkpoint(tmp_path / "checkpoints" / "step-6")
    assert st.step == 6 and torch.equal(tr["a"], w["a"]) and opt == {"x": 1} and best is not None


def test_early_stopping_triggers(make_cfg, monkeypatch):
    losses = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8, 4.9, 5.0, 5.1])
    monkeypatch.setattr(Loop, "evaluate", lambda self: next(losses))
    res = run(make_cfg(max_steps=20, eval_every=1, patience=2))
    s = res.summary
    assert s["stopped"] == "early_stopping" and s["steps"] == 3
    assert s["best_val_loss"] == 4.0 and s["best_step"] == 1 and s["initial_val_loss"] == 5.0


def test_bad_input_is_a_one_line_error(make_cfg, data_dir, tiny_model_dir, tmp_path, capsys):
    with pytest.raises(CatalogtuneError, match="unknown config key.*lora_rank"):
        make_cfg(lora_rank=8)
    with pytest.raises(CatalogtuneError, match="neither registered"):
        run(make_cfg(model="no-such-model"))
    (tmp_path / "noval").mkdir()
    pq.write_table(pa.Table.from_pylist(train_records(4)), tmp_path / "noval" / "train.parquet")
    with pytest.raises(CatalogtuneError, match=r"val\.parquet"):
        run(make_cfg(data=tmp_path / "noval"))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lora_rank: 8\n")
    base = ["train", "--data", str(data_dir), "--out", str(tmp_path / "o"), "--model", str(tiny_model_dir)]
    assert cli.main(base + ["--config", str(bad_yaml)]) == 2
    assert cli.main(base[:-2] + ["--model", "nope"]) == 2
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    if not torch.cuda.is_available():
        assert cli.main(base + ["--load-in-4bit"]) == 2
        assert cli.main(base + ["--backend", "unsloth"]) == 2
        assert "CUDA" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "o" / "checkpoints").exists()  # nothing started


def test_cli_train_then_resume_and_rank_dump(data_dir, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--model", str(tiny_model_dir),
            "--batch-size", "4", "--max-length", "48", "--eval-every", "2", "--lora-r", "4"]
    assert cli.main(args + ["--max-steps", "2"]) == 0
    assert read_json(out / "summary.json")["steps"] == 2
    assert cli.main(args + ["--max-steps", "3"]) == 2  # the folder holds a run: refuse to overwrite
    monkeypatch.setenv("CATALOGTUNE_RANK_DUMP", str(tmp_path / "dump"))
    assert cli.main(["train", "--out", str(out), "--resume", "--max-steps", "3", "--merge"]) == 0
    s = read_json(out / "summary.json")
    assert s["steps"] == 3 and s["resumed_from"] == 2 and s["useful_tokens_per_s"] > 0
    assert s["best_val_loss"] is not None and s["best_val_loss"] <= s["initial_val_loss"]
    dumped = torch.load(tmp_path / "dump" / "rank0.pt")
    assert dumped and all("lora_" in k for k in dumped)
    assert (out / "merged" / "config.json").is_file()


@pytest.mark.integration
def test_smollm2_trains_a_few_steps_on_the_shared_sample(sample_path, tmp_path):
    rows = [json.loads(line) for line in sample_path.read_text(encoding="utf-8").splitlines()]
    for i, r in enumerate(rows):
        r["id"] = str(i)
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:12]), data / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[-4:]), data / "val.parquet")
    cfg = config.build(TrainConfig, data=data, out=tmp_path / "run", max_steps=3, batch_size=4,
                       max_length=96, eval_every=3, save_every=3)
    s = run(cfg).summary
    assert cfg.model == "smollm2-135m" and s["steps"] == 3 and s["useful_tokens_per_s"] > 0
    assert 0 < s["best_val_loss"] <= s["initial_val_loss"] < 10  # a real model: a sane loss
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "run" / "adapter")).r == cfg.lora_r
