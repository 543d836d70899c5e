"""Fast end-to-end test of `catalogtune demo` with the 2-layer random model and the fake embedder."""

import json

import pytest

from catalogtune import cli
from catalogtune.demo import DemoConfig, run


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, sample_path, tiny_model_dir):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(data=sample_path, out=out, model=str(tiny_model_dir), max_steps=2, limit=4,
                     seen_limit=2, max_new_tokens=8, embedder="hash")
    assert cfg.data == [sample_path]
    res = run(cfg)
    return out, res


def test_demo_writes_every_stage_and_the_summary(demo_out):
    out, res = demo_out
    for sub in ("prep/train.parquet", "eda/report.html", "index/index.json", "run/adapter",
                "run/summary.json", "eval/report.json", "summary.md", "summary.html"):
        assert (out / sub).exists(), sub
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["systems"]) == {"base", "finetuned", "base+rag", "finetuned+rag", "title-copy", "retrieval-only"}
    for name, m in report["systems"].items():
        assert m["n"] == 4 and (name in ("title-copy", "retrieval-only") or m["perplexity"] > 1)
    # review-only records are left out of the training split by default, counted as such
    assert "train_reviews_only" in (out / "prep" / "quality_report.json").read_text()
    assert "seen" in report
    summary = (out / "summary.md").read_text()
    assert "finetuned+rag" in summary and "catalogtune app --workspace" in summary
    assert set(res.timings) == {"prepare", "analyze", "index", "evaluate-base", "train", "evaluate"}
    assert not res.skipped
    # what each stage covered: the budgets did not bind on the shared file
    from catalogtune.data.io import split_rows

    n_train, n_test = split_rows(out / "prep", "train"), split_rows(out / "prep", "test")
    assert f"| index | {n_train:,} records | {n_train:,} training records |" in summary
    assert f"| evaluate | 4 test records per system | {n_test:,} test records |" in summary
    assert "| train | " in summary and "budget" not in summary.split("What each stage covered")[1].split("|")[5]
    assert "would take about" in summary and "H100 80GB about" in summary


def test_full_run_projection_scales_the_measured_rate():
    from catalogtune.demo import GPU_MEASURED, full_run_projection

    summary = {"plan": {"tokens_per_epoch": 1000, "records": 10}, "tokens": 400, "useful_tokens": 100,
               "useful_tokens_per_s": 50.0, "model": "smollm2-135m", "model_params": 10**8}
    p = full_run_projection(summary, 2.0, 1000)  # 100 tokens a record, a quarter of them description
    assert p["useful_tokens"] == 50_000 and p["here_h"] == 50_000 / 50 / 3600
    assert p["gpu_h"] == 50_000 / GPU_MEASURED["useful_tokens_per_s"] / 3600 and not p["gpu_scaled"]
    # another model: the measured GPU rate scaled by parameter count (twice the parameters: half the rate)
    other = full_run_projection({**summary, "model": "x", "model_params": 2 * GPU_MEASURED["params"]}, 2.0, 1000)
    assert other["gpu_scaled"] and other["gpu_h"] == 2 * p["gpu_h"]
    assert full_run_projection({}, 2.0, 1000) is None
    assert "gpu_h" not in full_run_projection({**summary, "model": "x", "model_params": None}, 1.0, 10)


def test_second_demo_skips_up_to_date_stages(demo_out, sample_path, tiny_model_dir, capsys):
    out, _ = demo_out
    rc = cli.main(["demo", "--data", str(sample_path), "--out", str(out), "--model", str(tiny_model_dir),
                   "--max-steps", "2", "--limit", "4", "--seen-limit", "2", "--max-new-tokens", "8",
                   "--embedder", "hash"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == 6
    assert "Before / after" in printed


def test_demo_without_data_explains_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.setattr("catalogtune.demo.shared_data", lambda: [])
    assert cli.main(["demo", "--out", str(tmp_path / "o")]) == 2


def test_demo_with_another_index_budget_replaces_the_index(tmp_path, sample_path, tiny_model_dir, monkeypatch):
    from catalogtune.rag import index as rag

    kw = dict(data=sample_path, out=tmp_path / "d", model=str(tiny_model_dir), max_steps=1, limit=2, seen_limit=0,
              max_new_tokens=4, embedder="hash")
    real_plan = rag.plan
    monkeypatch.setattr(rag, "plan", lambda *a, **k: (real_plan(*a, **k)[0], 1.0))  # 1 s a record
    run(DemoConfig(index_budget="40s", **kw))
    man = json.loads((tmp_path / "d" / "index" / "index.json").read_text())
    assert (man["count"], man["budget"]) == (rag.PROBE_RECORDS + 40, "40s")
    # index alone would refuse another budget on that folder; the demo's stage replaces it
    res = run(DemoConfig(index_budget="1h", **kw))
    man = json.loads((tmp_path / "d" / "index" / "index.json").read_text())
    assert man["budget"] == "1h" and man["limit"] is None and man["count"] > rag.PROBE_RECORDS + 40
    # ... and the stages after it run again on the new index (train starts afresh in its folder)
    assert "index" not in res.skipped and "train" not in res.skipped and "prepare" in res.skipped


def test_total_budget_is_shared_by_the_stages_and_a_rerun_skips_them(tmp_path, sample_path, tiny_model_dir,
                                                                     monkeypatch, capsys):
    from catalogtune.evaluate import stage as evaluate
    from catalogtune.rag import index as rag

    real_plan = rag.plan
    monkeypatch.setattr(rag, "plan", lambda *a, **k: (real_plan(*a, **k)[0], 1.0))  # 1 s a record
    monkeypatch.setattr(evaluate, "BUDGET_MARGIN", 1e-6)  # the evaluation fits only its probe batch
    cfg = DemoConfig(data=sample_path, out=tmp_path / "d", model=str(tiny_model_dir), max_steps=1, seen_limit=0,
                     max_new_tokens=4, embedder="hash", budget="3m")
    res = run(cfg)
    out = tmp_path / "d"
    from catalogtune.data.io import split_rows

    n_train, n_test = split_rows(out / "prep", "train"), split_rows(out / "prep", "test")
    man = json.loads((out / "index" / "index.json").read_text())
    # 15 % of what prepare and analyze left of 3 minutes is under a minute: the index gets MIN_STAGE_S
    assert man["budget"] == "60s" and man["count"] == rag.PROBE_RECORDS + 60 < n_train
    kept = json.loads((out / "eval" / evaluate.BUDGET_FILE).read_text())["kept"]
    assert kept == 16 < n_test  # the probe batch (evaluate's batch size)
    assert {m["n"] for m in res.report["systems"].values()} == {kept}  # the last evaluation: the same records
    summary = (out / "summary.md").read_text()
    assert f"| evaluate | {kept} test records per system (budget: the first {kept} fitted) |" in summary
    assert "Budget 3m: the stages took" in summary
    printed = capsys.readouterr().out
    assert "[demo] budget 3m: " in printed and "train gets" in printed
    # the shares move with the clock; the stamps hold the total budget, so nothing re-runs
    again = run(cfg)
    assert sorted(again.skipped) == sorted(res.timings)
    with pytest.raises(ValueError, match="budget must look like"):
        DemoConfig(data=sample_path, budget="fast")


def test_the_index_embeds_with_the_faster_embedder_of_the_same_space():
    from catalogtune import demo
    from catalogtune.rag import embed

    assert demo.index_embedder("minilm") == "minilm-onnx" and demo.index_embedder("hash") == "hash"
    for name, fast in demo.INDEX_EMBEDDERS.items():  # interchangeable vectors: same space, same size
        a, b = embed.get_embedder(name), embed.get_embedder(fast)
        assert (a.space, a.dim) == (b.space, b.dim)
