"""The evaluation stage: report contract, resume after a kill, base-cache reuse, bad input.

Most tests use a fake generator (counts its calls) and the hash embedder; one runs the real
tiny random model with a PEFT adapter built here.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from catalogtune import cli

from catalogtune.evaluate import stage as evaluate
from catalogtune.core.util import CatalogtuneError, read_json

CONTRACT_KEYS = {"perplexity", "rouge_l", "chrf", "cosine", "unsupported_rate", "n"}


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    cols = {k: pa.array([r[k] for r in rows], pa.string()) for k in ("id", "title", "content")}
    pq.write_table(pa.table(cols), folder / f"{split}.parquet")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_path) -> Path:
    rows = []
    with open(sample_path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= 60:
                break
            rec = json.loads(line)
            rows.append({"id": f"r{i:03d}", "title": rec["title"], "content": rec["content"][:600]})
    out = tmp_path_factory.mktemp("evaldata")
    _write(out, "train", rows[:50])
    _write(out, "test", rows[50:])
    return out


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, data_dir) -> Path:
    from catalogtune.rag import index as rag

    out = tmp_path_factory.mktemp("evalindex") / "index"
    rag.run(rag.IndexConfig(data=data_dir, out=out, embedder="hash", progress=False))
    return out


class FakeGenerator:
    """Deterministic stand-in: the 'fine-tuned' output copies the title, the base one is generic."""

    def __init__(self, fail_after: int | None = None):
        self.generated = 0
        self.fail_after = fail_after
        self.prompts: list[str] = []

    def prompt(self, title, context=None):
        ctx = " | ".join(r["title"] for r in context or [])
        return f"T: {title}\nC: {ctx}\n"

    def generate(self, prompts, max_new_tokens, do_sample=False, use_adapter=True, batch_size=8, **decoding):
        if self.fail_after is not None and self.generated >= self.fail_after:
            raise KeyboardInterrupt  # a kill in the middle of the run
        self.generated += len(prompts)
        self.prompts += prompts
        self.decoding = decoding
        out = []
        for p in prompts:
            title = p.split("\n")[0][3:]
            text = f"{title} made by Acme Corp in 7 sizes." if use_adapter else "A great product for you."
            out.append(SimpleNamespace(text=text, new_tokens=len(text.split()), seconds=0.01, stopped="eos"))
        return out

    def score(self, prompts, completions, use_adapter=True, batch_size=8):
        return [(len(c) * (0.5 if use_adapter else 1.0), len(c)) for c in completions]


def _patch(monkeypatch, gen, adapter="abc"):
    def fake_open(cfg):
        return gen, "fake-model", adapter if cfg.run is not None else None

    monkeypatch.setattr(evaluate, "_open_generator", fake_open)


def _cfg(tmp_path, data_dir, **kw):
    (tmp_path / "run" / "adapter").mkdir(parents=True, exist_ok=True)  # the fake generator ignores it
    base = dict(out=tmp_path / "eval", data=data_dir, run=tmp_path / "run", limit=6, seen_limit=4,
                batch_size=2, k=2, embedder="hash", max_new_tokens=16, probes=False, bootstrap=200)
    base.update(kw)
    return evaluate.EvalConfig(**base)


def test_report_has_the_contract_keys_for_all_systems(tmp_path, data_dir, index_dir, monkeypatch):
    gen = FakeGenerator()
    _patch(monkeypatch, gen)
    res = evaluate.run(_cfg(tmp_path, data_dir, index=index_dir), log=lambda m: None)
    rep = read_json(res.out / "report.json")
    assert set(rep["systems"]) == set(evaluate.SYSTEMS) == set(rep["seen"]["systems"])
    for part in (rep["systems"], rep["seen"]["systems"]):
        for m in part.values():
            assert CONTRACT_KEYS <= set(m)
    assert rep["systems"]["base"]["n"] == 6 and rep["seen"]["systems"]["base"]["n"] == 4
    # score() halves the NLL with the adapter: perplexity must drop accordingly
    assert rep["systems"]["finetuned"]["perplexity"] < rep["systems"]["base"]["perplexity"]
    # the fake fine-tuned output invents "Acme Corp" and "7": unsupported claims are found
    assert rep["systems"]["finetuned"]["unsupported_rate"] > 0
    assert rep["systems"]["finetuned"]["rouge_l"] != rep["systems"]["base"]["rouge_l"]
    assert res.generated == 4 * (6 + 4)
    html = (res.out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html
    assert "finetuned+rag" in (res.out / "report.md").read_text()
    assert rep["breakdowns"]["title_length"] and rep["breakdowns"]["category"]
    assert len(rep["samples"]) == 6 and set(rep["samples"][0]["outputs"]) == set(evaluate.SYSTEMS)


def test_seen_products_never_retrieve_themselves(data_dir, index_dir):
    from catalogtune.data.io import read_split
    from catalogtune.rag.index import Index

    items = read_split(data_dir, "train", limit=10)
    ctx = evaluate.retrieve(Index.open(index_dir), items, k=3, exclude_self=True)
    assert all(len(recs) == 3 and it["id"] not in {r["id"] for r in recs} for it, recs in zip(items, ctx.values()))
    # without exclusion the product's own record is mostly retrieved (what we guard against)
    ctx = evaluate.retrieve(Index.open(index_dir), items, k=3, exclude_self=False)
    assert sum(it["id"] in {r["id"] for r in ctx[it["id"]]} for it in items) >= 8


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(evaluate, "CHUNK_BATCHES", 1)  # one batch per generate call and cache append
    ref_gen = FakeGenerator()
    _patch(monkeypatch, ref_gen)
    full = evaluate.run(_cfg(tmp_path / "a", data_dir), log=lambda m: None).report

    _patch(monkeypatch, FakeGenerator(fail_after=4))
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(_cfg(tmp_path / "b", data_dir), log=lambda m: None)
    caches = list((tmp_path / "b" / "eval" / "cache").glob("*.jsonl"))
    assert sum(len(evaluate.read_cache(c)) for c in caches) == 4
    with open(caches[0], "a") as fh:  # a torn line, as a kill during a write leaves
        fh.write('{"id": "r05')
    gen = FakeGenerator()
    _patch(monkeypatch, gen)
    lines: list[str] = []
    res = evaluate.run(_cfg(tmp_path / "b", data_dir), log=lines.append)
    assert gen.generated == res.generated == 2 * (6 + 4) - 4
    # the plan counts what the caches already hold, and projects each system from its first batch
    plan = res.report["plan"]
    assert plan["generations"] == res.generated and plan["cached"] == 4 and plan["systems"] == 2
    assert lines[0].startswith("evaluate plan: 16 descriptions to generate (4 cached)")
    assert len(plan["probes"]) == 4 and all(p["s_per_description"] >= 0 for p in plan["probes"])
    assert sum(1 for m in lines if m.startswith("evaluate plan: ") and " first " in m) == 4
    for key in ("systems", "seen"):
        got, want = res.report[key], full[key]
        got = got if key == "systems" else got["systems"]
        want = want if key == "systems" else want["systems"]
        assert {s: {k: v for k, v in m.items() if k != "gen_seconds"} for s, m in got.items()} == \
               {s: {k: v for k, v in m.items() if k != "gen_seconds"} for s, m in want.items()}


def test_the_report_says_where_the_evaluation_time_went(tmp_path, data_dir, monkeypatch):
    import time

    class Timed(FakeGenerator):  # generating costs 50 ms a call, scoring 20 ms
        def generate(self, prompts, *a, **kw):
            time.sleep(0.05)
            return super().generate(prompts, *a, **kw)

        def score(self, prompts, completions, *a, **kw):
            time.sleep(0.02)
            return super().score(prompts, completions, *a, **kw)

    monkeypatch.setattr(evaluate, "CHUNK_BATCHES", 1)
    _patch(monkeypatch, Timed())
    lines: list[str] = []
    res = evaluate.run(_cfg(tmp_path, data_dir), log=lines.append)
    sec = res.report["plan"]["seconds"]
    assert list(sec) == list(evaluate.PHASES)
    calls = 2 * (3 + 2)  # 2 systems x (6 test + 4 seen records in batches of 2)
    assert sec["generate"] >= calls * 0.05 and sec["likelihood"] >= calls * 0.02
    assert sec["likelihood"] < sec["generate"] and sec["metrics"] > 0
    assert sum(sec.values()) <= res.wall_s  # the reports are written after the count
    assert any(m.startswith("evaluate: ") and " = generate " in m for m in lines)
    # a re-run from the caches generates nothing and says so
    again = evaluate.run(_cfg(tmp_path, data_dir), log=lambda m: None).report["plan"]["seconds"]
    assert again["generate"] == again["likelihood"] == 0


def test_generate_gets_chunks_of_several_batches(tmp_path, data_dir, monkeypatch):
    """Continuous batching needs waiting prompts: each generate call gets CHUNK_BATCHES batches."""
    gen = FakeGenerator()
    calls: list[int] = []
    inner = gen.generate
    gen.generate = lambda prompts, *a, **kw: calls.append(len(prompts)) or inner(prompts, *a, **kw)
    _patch(monkeypatch, gen)
    evaluate.run(_cfg(tmp_path, data_dir, limit=12, seen_limit=0, systems=["base"]), log=lambda m: None)
    assert calls[0] == 2 * evaluate.CHUNK_BATCHES and 0 < calls[1] <= calls[0] and len(calls) == 2


def test_base_results_are_reused_once_the_adapter_exists(tmp_path, data_dir, monkeypatch, capsys):
    gen = FakeGenerator()
    _patch(monkeypatch, gen)
    rc = cli.main(["evaluate", "--data", str(data_dir), "--model", "fake-model", "--out", str(tmp_path / "eval"),
                   "--limit", "6", "--seen-limit", "4", "--batch-size", "2", "--k", "2", "--embedder", "hash",
                   "--max-new-tokens", "16", "--no-probes"])
    assert rc == 0 and "base" in capsys.readouterr().out
    rep = read_json(tmp_path / "eval" / "report.json")
    assert set(rep["skipped"]) == {"finetuned", "base+rag", "finetuned+rag", "retrieval-only"}
    assert set(rep["systems"]) == {"base", "title-copy"}  # a baseline needs no model and no index
    assert gen.generated == 10
    gen2 = FakeGenerator()
    _patch(monkeypatch, gen2)
    res = evaluate.run(_cfg(tmp_path, data_dir), log=lambda m: None)
    assert set(res.report["systems"]) == {"base", "finetuned", "title-copy"}
    assert gen2.generated == 10  # only the fine-tuned system was generated
    # a changed generation setting invalidates the cache
    gen3 = FakeGenerator()
    _patch(monkeypatch, gen3)
    evaluate.run(_cfg(tmp_path, data_dir, max_new_tokens=8), log=lambda m: None)
    assert gen3.generated == 20
    gen4 = FakeGenerator()  # so does the grounding penalty, which reaches the generator
    _patch(monkeypatch, gen4)
    res = evaluate.run(_cfg(tmp_path, data_dir, max_new_tokens=8, ground_penalty=2.0), log=lambda m: None)
    assert gen4.generated == 20 and gen4.decoding["ground_penalty"] == 2.0
    assert "ground_penalty" in res.report["notes"][0]
    gen5 = FakeGenerator()  # and the title guidance: another scale is another set of outputs
    _patch(monkeypatch, gen5)
    res = evaluate.run(_cfg(tmp_path, data_dir, max_new_tokens=8, ground_penalty=2.0, guidance=1.5), log=lambda m: None)
    assert gen5.generated == 20 and gen5.decoding["guidance"] == 1.5
    assert "Title guidance 1.5" in res.report["notes"][0]


def test_raw_test_file_is_cleaned_and_evaluated_without_seen(tmp_path, trn_head_path, monkeypatch):
    _patch(monkeypatch, FakeGenerator())
    res = evaluate.run(_cfg(tmp_path, None, test=trn_head_path, systems=["base"]), log=lambda m: None)
    assert res.report["systems"]["base"]["n"] == 3
    assert res.report["seen"]["systems"] == {} and "file" in res.report["test_source"]
    assert {s["id"] for s in res.report["samples"]} == {"0000031909", "0001360000", "0000031895"}


def test_bad_input_is_a_one_line_error_naming_it(tmp_path, data_dir, capsys):
    with pytest.raises(CatalogtuneError, match="run folder not found: .*nope"):
        evaluate.run(_cfg(tmp_path, data_dir, run=tmp_path / "nope"))
    with pytest.raises(CatalogtuneError, match="RAG index not found: .*noindex"):
        evaluate.run(_cfg(tmp_path, data_dir, index=tmp_path / "noindex"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(CatalogtuneError, match="bare has no adapter"):
        evaluate.run(_cfg(tmp_path, data_dir, run=tmp_path / "bare"))
    rc = cli.main(["evaluate", "--data", str(data_dir), "--run", str(tmp_path / "missing"),
                   "--out", str(tmp_path / "e"), "--embedder", "hash"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing" in err
    rc = cli.main(["evaluate", "--data", str(data_dir), "--out", str(tmp_path / "e"), "--model", "x", "--systems", "base,oops"])
    assert rc == 2 and "oops" in capsys.readouterr().err


def _make_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # zero-initialised B would make the adapter a no-op
            p.data.normal_(0, 0.5)
    run = tmp_path / "run"
    peft.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text("model: tiny-random\n")
    return run


def test_real_tiny_model_with_adapter(tmp_path, data_dir, index_dir, tiny_model_dir):
    pytest.importorskip("catalogtune.infer.generate")
    run = _make_run(tmp_path, tiny_model_dir)
    cfg = _cfg(tmp_path, data_dir, run=run, index=index_dir, limit=2, seen_limit=1, max_new_tokens=4, batch_size=4)
    res = evaluate.run(cfg, log=lambda m: None)
    rep = res.report
    assert res.generated == 4 * 3
    base, ft = rep["systems"]["base"], rep["systems"]["finetuned"]
    assert base["perplexity"] > 1 and ft["perplexity"] > 1 and base["perplexity"] != ft["perplexity"]
    assert rep["systems"]["base+rag"]["perplexity"] != base["perplexity"]  # context changes the prompt
    assert evaluate.run(cfg, log=lambda m: None).generated == 0  # all cached now


def test_baselines_intervals_and_every_output_are_in_the_report(tmp_path, data_dir, index_dir, monkeypatch):
    _patch(monkeypatch, FakeGenerator())
    rep = evaluate.run(_cfg(tmp_path, data_dir, index=index_dir), log=lambda m: None).report
    test_items = rep["records"]["test"]
    assert len(test_items) == 6 and len(rep["records"]["seen"]) == 4  # every record, not only samples
    for rec in test_items:
        assert rec["outputs"]["title-copy"] == rec["title"]
        # retrieval-only answers with a training record's description, never the reference itself
        assert rec["outputs"]["retrieval-only"] and rec["outputs"]["retrieval-only"] != rec["reference"]
    assert rep["systems"]["title-copy"]["perplexity"] is None  # a baseline has no likelihood
    pairs = {(c["system"], c["versus"]) for c in rep["comparisons"]}
    assert {("finetuned", "base"), ("finetuned", "retrieval-only"), ("finetuned", "title-copy"),
            ("finetuned+rag", "finetuned")} <= pairs
    ft = next(c for c in rep["comparisons"] if (c["system"], c["versus"]) == ("finetuned", "base"))
    for metric in ("rouge_l", "cosine", "perplexity"):
        res = ft["metrics"][metric]
        assert res["low"] <= res["diff"] <= res["high"] and isinstance(res["significant"], bool)
    # the fake halves every NLL with the adapter: perplexity falls for sure, interval below 0
    assert ft["metrics"]["perplexity"]["high"] < 0 and ft["metrics"]["perplexity"]["better"] is True
    assert any("finetuned" in v and "base on perplexity" in v for v in rep["verdicts"])
    assert "reference" in rep["collapse"] and "top_opening_share" in rep["collapse"]["finetuned"]
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "paired bootstrap" in md and "retrieval-only" in md and "Collapse" in md


def test_collapsed_outputs_show_in_the_collapse_figures(tmp_path, data_dir, monkeypatch):
    class QuoteGen(FakeGenerator):
        def generate(self, prompts, max_new_tokens, use_adapter=True, **kw):
            out = super().generate(prompts, max_new_tokens, use_adapter=use_adapter, **kw)
            if use_adapter:  # the fine-tuned model answers every product with an invented press quote
                for g in out:
                    g.text = "'A wonderful and moving book.' Sunday Herald 'Quite superb.' Morning Gazette"
            return out

    _patch(monkeypatch, QuoteGen())
    rep = evaluate.run(_cfg(tmp_path, data_dir), log=lambda m: None).report
    ft, base = rep["collapse"]["finetuned"], rep["collapse"]["base"]
    assert ft["top_opening_share"] == 1.0 and ft["quote_style_share"] == 1.0
    assert rep["systems"]["finetuned"]["invented_attribution_rate"] == 1.0
    assert rep["collapse"]["reference"]["top_opening_share"] < 1.0


def test_probe_titles_are_answered_and_scored_for_book_blurbs(tmp_path, data_dir, monkeypatch):
    class BlurbGen(FakeGenerator):
        def generate(self, prompts, max_new_tokens, use_adapter=True, **kw):
            out = super().generate(prompts, max_new_tokens, use_adapter=use_adapter, **kw)
            if use_adapter:
                for g in out:
                    g.text = "A gripping novel: the author draws readers into every chapter."
            return out

    gen = BlurbGen()
    _patch(monkeypatch, gen)
    rep = evaluate.run(_cfg(tmp_path, data_dir, probes=True, seen_limit=0), log=lambda m: None).report
    from catalogtune.evaluate.probes import PROBE_TITLES

    assert rep["probes"]["systems"]["finetuned"]["n"] == len(PROBE_TITLES)
    assert rep["probes"]["systems"]["finetuned"]["book_blurb_share"] == 1.0
    assert rep["probes"]["systems"]["base"]["book_blurb_share"] == 0.0
    assert "title-copy" not in rep["probes"]["systems"]  # baselines answer only records with references
    assert "Non-book probe" in (tmp_path / "eval" / "report.md").read_text()


def test_val_split_can_be_evaluated_for_tuning(tmp_path, data_dir, monkeypatch):
    _write(data_dir, "val", [{"id": "v1", "title": "Oak Bookshelf", "content": "A tall oak shelf."},
                             {"id": "v2", "title": "Tin Whistle", "content": "A whistle in D."}])
    _patch(monkeypatch, FakeGenerator())
    rep = evaluate.run(_cfg(tmp_path, data_dir, split="val", systems=["base"]), log=lambda m: None).report
    assert {r["id"] for r in rep["records"]["test"]} == {"v1", "v2"} and "val split" in rep["test_source"]
    with pytest.raises(ValueError, match="split must be test or val"):
        _cfg(tmp_path, data_dir, split="train")


def test_plan_never_prints_a_negative_remainder():
    """A cached record whose references changed is regenerated though the up-front count missed it."""
    from catalogtune.evaluate.stage import Plan

    lines: list[str] = []
    plan = Plan(todo=0, cached=120, systems=1, max_new_tokens=128, log=lines.append)
    assert lines == []  # nothing to generate was announced
    plan.first_batch("test base_rag", 1, 6.7, left=1)
    assert "; 1 left in all -> about 7 s" in lines[-1]


class SlowGenerator(FakeGenerator):
    """The fake generator at a known pace: ``seconds`` per prompt."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def generate(self, prompts, *a, **kw):
        import time

        time.sleep(self.seconds * len(prompts))
        return super().generate(prompts, *a, **kw)


def test_budget_cuts_the_test_records_to_what_fits_and_a_rerun_keeps_them(tmp_path, data_dir, monkeypatch):
    gen = SlowGenerator(0.2)  # 0.4 s per record over the two model systems
    _patch(monkeypatch, gen)
    lines: list[str] = []
    kw = dict(limit=None, seen_limit=2, systems=["base", "finetuned", "title-copy"], budget="3s")
    rep = evaluate.run(_cfg(tmp_path, data_dir, **kw), log=lines.append).report
    fit = rep["plan"]["budget"]
    kept = fit["kept"]
    # the probe batch (2 records) always stays; the 10 test records cannot all fit in 3 s
    assert 2 <= kept < 10 and fit["test_records"] == 10 and fit["s_per_record"]["base"] >= 0.2
    assert rep["n_items"] == kept and {m["n"] for m in rep["systems"].values()} == {kept}
    # the probe's answers were reused, none generated twice; one warm-up call with and without the
    # adapter; the 2 seen products were answered before the fit, and the budget does not cut them
    assert gen.generated == 2 * kept + 2 + 2 * 2 and rep["seen"]["systems"]["finetuned"]["n"] == 2
    assert any(f"the first {kept} of 10 test records fit" in m for m in lines)
    assert read_json(tmp_path / "eval" / evaluate.BUDGET_FILE)["kept"] == kept

    again = FakeGenerator()  # a re-run with the same budget: the same records, all from the cache
    _patch(monkeypatch, again)
    rep2 = evaluate.run(_cfg(tmp_path, data_dir, **kw), log=lambda m: None).report
    assert again.generated == 0 and rep2["n_items"] == kept
    assert rep2["systems"]["finetuned"] == rep["systems"]["finetuned"]

    roomy = FakeGenerator()  # a budget that fits everything evaluates the whole split
    _patch(monkeypatch, roomy)
    rep3 = evaluate.run(_cfg(tmp_path, data_dir, **{**kw, "budget": "10m"}), log=lambda m: None).report
    assert rep3["n_items"] == 10 and roomy.generated == 2 * (10 - kept) + 2
    with pytest.raises(ValueError, match="budget must look like"):
        _cfg(tmp_path, data_dir, budget="soon")


class VariantGenerator(FakeGenerator):
    """Answers differ by decoding: the shared one invents on even titles, guidance 0 on odd ones."""

    def generate(self, prompts, max_new_tokens, do_sample=False, use_adapter=True, batch_size=8, **decoding):
        out = super().generate(prompts, max_new_tokens, do_sample, use_adapter, batch_size, **decoding)
        shared = decoding.get("guidance") == 0.5 and not decoding.get("ground_penalty")
        for p, o in zip(prompts, out):
            title = p.split("\n")[0][3:]
            odd = sum(map(ord, title)) % 2
            invent = (shared and not odd) or ("guidance" not in decoding and odd)
            o.text = "Zorblax Quuxfen Wibblecorp 1887 heirloom." if invent else f"{title} sturdy everyday item."
        return out


def test_rerank_keeps_the_consensus_answer_of_every_decoding_and_a_rerun_reuses_them(tmp_path, data_dir, monkeypatch):
    from catalogtune.infer import rerank

    gen = VariantGenerator()
    _patch(monkeypatch, gen)
    kw = dict(seen_limit=0, systems=["base", "finetuned"], rerank=True)
    rep = evaluate.run(_cfg(tmp_path, data_dir, **kw), log=lambda m: None).report
    n, variants = rep["n_items"], len(rerank.VARIANTS)
    assert gen.generated == 2 * n * variants  # every decoding answered every record, once
    outputs = [r["outputs"][s] for r in rep["records"]["test"] for s in ("base", "finetuned")]
    assert not any("Zorblax" in o for o in outputs)  # no invention that only one decoding made
    kept = rep["systems"]["finetuned"]["rerank_kept"]
    # the shared decoding lost on the titles where it invented; every variant is counted, kept or not
    assert sum(kept) == n and kept[0] < n and len(kept) == variants
    assert any("Reranked" in note for note in rep["notes"])
    # the reference's likelihood is scored once, as without reranking
    plain = evaluate.run(_cfg(tmp_path, data_dir, **{**kw, "rerank": False}), log=lambda m: None).report
    assert plain["systems"]["finetuned"]["perplexity"] == rep["systems"]["finetuned"]["perplexity"]
    assert any("Zorblax" in r["outputs"]["finetuned"] for r in plain["records"]["test"])

    again = VariantGenerator()
    _patch(monkeypatch, again)
    rep2 = evaluate.run(_cfg(tmp_path, data_dir, **kw), log=lambda m: None).report
    assert again.generated == 0 and rep2["systems"]["finetuned"] == rep["systems"]["finetuned"]
    with pytest.raises(ValueError, match="--budget and --rerank"):
        _cfg(tmp_path, data_dir, rerank=True, budget="10m")


def test_memo_embeds_each_distinct_text_once_and_keeps_the_values():
    import numpy as np

    calls: list[list[str]] = []

    def vecs(texts):
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    def toks(texts):
        calls.append(list(texts))
        return [np.full((len(t.split()), 2), len(t), dtype=np.float32) for t in texts]

    for fn in (vecs, toks):
        calls.clear()
        memo = evaluate.memo_texts(fn)
        a = memo(["a ref", "banana", "a ref"])
        b = memo(["banana", "new output", "a ref"])
        assert calls == [["a ref", "banana"], ["new output"]]  # each text computed once
        for got, texts in ((a, ["a ref", "banana", "a ref"]), (b, ["banana", "new output", "a ref"])):
            want = fn(texts)
            assert type(got) is type(want) and all(np.array_equal(x, y) for x, y in zip(got, want))
    # past its byte cap the memo starts over instead of growing
    calls.clear()
    small = evaluate.memo_texts(vecs, max_bytes=16)
    small(["aa", "bb"])  # 2 rows x 8 bytes: full
    small(["cc"])  # over the cap: "aa" and "bb" are dropped
    small(["aa"])
    assert calls == [["aa", "bb"], ["cc"], ["aa"]]
    assert len(small([])) == 0
