"""`catalogtune compare`: several runs on the same records into one report, base models evaluated once.

Most tests use a fake generator (one per run, counting its generations) and the hash embedder;
one runs two real adapters on the tiny random model.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from catalogtune import cli
from catalogtune.core.util import CatalogtuneError, atomic_write_json, read_json
from catalogtune.evaluate import multi
from catalogtune.evaluate import stage as evaluate
from helpers import make_run, train_records


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmpdata")
    _write(out, "train", train_records(20))
    _write(out, "test", train_records(6, offset=100))
    return out


class FakeGenerator:
    """The fine-tuned output depends on the run (``style``), the base one only on the title."""

    def __init__(self, style: str, counts: dict, name: str):
        self.style, self.counts, self.name = style, counts, name

    def prompt(self, title, context=None):
        return f"T: {title}\nC: {' | '.join(r['title'] for r in context or [])}\n"

    def generate(self, prompts, max_new_tokens, do_sample=False, use_adapter=True, batch_size=8, **decoding):
        key = (self.name, "finetuned" if use_adapter else "base")
        self.counts[key] = self.counts.get(key, 0) + len(prompts)
        out = []
        for p in prompts:
            title = p.split("\n")[0][3:]
            text = (f"{title} {self.style}" if use_adapter else f"A product: {title.split()[0]}.")
            out.append(SimpleNamespace(text=text, new_tokens=len(text.split()), seconds=0.5, stopped="eos"))
        return out

    def score(self, prompts, completions, use_adapter=True, batch_size=8):
        factor = (0.4 if "sizes" in self.style else 0.6) if use_adapter else 1.0
        return [(len(c) * factor, len(c)) for c in completions]


STYLES = {"a": "for kids, in 7 sizes.", "b": "a gift set for girls and kids, pack of 3."}


def _patch(monkeypatch, counts: dict) -> None:
    def fake_open(cfg):
        from catalogtune.infer.generate import base_model_of

        name = Path(cfg.run).name
        return FakeGenerator(STYLES[name[-1]], counts, name), base_model_of(Path(cfg.run)), f"adapter-{name}"

    monkeypatch.setattr(evaluate, "_open_generator", fake_open)


def _fake_run(folder: Path, model: str = "fake-model", data: Path | None = None, summary: dict | None = None) -> Path:
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(f"model: {model}\n" + (f"data: {data}\n" if data else ""), encoding="utf-8")
    if summary is not None:
        atomic_write_json(folder / "summary.json", summary)
    return folder


def _cfg(tmp_path: Path, data_dir: Path, runs: list[Path], **kw) -> multi.CompareConfig:
    base = dict(data=data_dir, runs=runs, out=tmp_path / "cmp", limit=6, seen_limit=2, batch_size=3, k=2,
                embedder="hash", max_new_tokens=16, probes=False, bootstrap=200)
    base.update(kw)
    return multi.CompareConfig(**base)


def test_two_runs_of_one_base_model_make_one_report(tmp_path, data_dir, monkeypatch):
    counts: dict = {}
    _patch(monkeypatch, counts)
    a = _fake_run(tmp_path / "a", data=data_dir, summary={"wall_s": 12.5, "useful_tokens_per_s": 300.0, "steps": 4})
    b = _fake_run(tmp_path / "<i>b", data=data_dir, summary={"wall_s": 20.0, "useful_tokens_per_s": 150.0, "steps": 4})
    res = multi.run(_cfg(tmp_path, data_dir, [a, b], systems=["base", "finetuned", "title-copy"]), log=lambda m: None)
    rep = read_json(res.out / "compare.json")
    assert {(r["run"], r["system"]) for r in rep["rows"]} == {(n, s) for n in ("a", "<i>b")
                                                               for s in ("base", "finetuned", "title-copy")}
    # the base model was generated once: run b found its base outputs in the shared cache
    assert counts[("a", "base")] == 6 + 2 and ("<i>b", "base") not in counts
    assert counts[("a", "finetuned")] == counts[("<i>b", "finetuned")] == 6 + 2
    rows = {(r["run"], r["system"]): r for r in rep["rows"]}
    assert rows["a", "base"]["rouge_l"] == rows["<i>b", "base"]["rouge_l"]
    ft = rows["a", "finetuned"]
    own = read_json(tmp_path / "cmp" / "runs" / "a" / "report.json")
    vs_base = next(c for c in own["comparisons"] if (c["system"], c["versus"]) == ("finetuned", "base"))
    assert ft["vs_base"] == vs_base["metrics"]  # read from the run's report, not recomputed
    assert ft["train_wall_s"] == 12.5 and ft["train_useful_tokens_per_s"] == 300.0
    assert ft["gen_tokens_per_s"] == pytest.approx(own["systems"]["finetuned"]["mean_new_tokens"] / 0.5)
    assert rows["a", "title-copy"]["gen_tokens_per_s"] is None
    # between runs: only the fine-tuned system differs (same base model, same baselines)
    assert [(p["system"], p["run"], p["versus_run"]) for p in rep["cross_run"]] == [("finetuned", "<i>b", "a")]
    m = rep["cross_run"][0]["metrics"]
    for metric in ("rouge_l", "cosine", "perplexity", "unsupported_rate"):
        assert m[metric]["low"] <= m[metric]["diff"] <= m[metric]["high"]
    # the fake's NLL factor is 0.4 for run a and 0.6 for b: b's perplexity is higher for sure
    assert m["perplexity"]["low"] > 0 and m["perplexity"]["better"] is False
    assert any("<i>b finetuned loses to a finetuned on perplexity" in v for v in rep["verdicts"])
    assert not any("differs from its report" in n for n in rep["notes"])  # rescoring matches the stage
    md = (res.out / "compare.md").read_text()
    assert "| &lt;i&gt;b | fake-model | finetuned |" in md and "<i>" not in md and "rouge_l vs base" in md
    html = (res.out / "compare.html").read_text()
    assert "&lt;i&gt;b" in html and "<i>b" not in html
    # a second call is all cache
    again = multi.run(_cfg(tmp_path, data_dir, [a, b], systems=["base", "finetuned", "title-copy"]), log=lambda m: None)
    assert again.generated == 0 and again.report["rows"] == rep["rows"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, data_dir) -> Path:
    from catalogtune.rag import index as rag

    out = tmp_path_factory.mktemp("cmpindex") / "index"
    rag.run(rag.IndexConfig(data=data_dir, out=out, embedder="hash", progress=False))
    return out


def test_different_base_models_compare_base_too_but_not_perplexity(tmp_path, data_dir, index_dir, monkeypatch):
    counts: dict = {}
    _patch(monkeypatch, counts)
    a = _fake_run(tmp_path / "a", model="model-one")
    b = _fake_run(tmp_path / "b", model="model-two")
    rep = multi.run(_cfg(tmp_path, data_dir, [a, b], index=index_dir, seen_limit=0), log=lambda m: None).report
    assert counts[("a", "base")] == counts[("b", "base")] == 2 * 6  # base and base+rag, no sharing across models
    assert {r["system"] for r in rep["rows"]} == set(evaluate.SYSTEMS)
    pairs = {p["system"]: p for p in rep["cross_run"]}
    assert set(pairs) == set(evaluate.MODEL_SYSTEMS)  # the baselines answer alike in both runs
    assert "perplexity" not in pairs["finetuned"]["metrics"] and "rouge_l" in pairs["finetuned"]["metrics"]
    # the rescored rows (claims checked against the same retrieved records) match each run's report
    assert not any("differs from its report" in n for n in rep["notes"])
    assert any("tokenizer" in n for n in rep["notes"])
    assert {r["model"] for r in rep["runs"]} == {"model-one", "model-two"}
    assert all(r["train_wall_s"] is None for r in rep["rows"])  # no summary.json: empty, not an error


def test_bad_input_is_a_one_line_error(tmp_path, data_dir, capsys, monkeypatch):
    _patch(monkeypatch, {})
    a = _fake_run(tmp_path / "a", data=data_dir)
    with pytest.raises(CatalogtuneError, match="at least two runs"):
        multi.run(_cfg(tmp_path, data_dir, [a]))
    with pytest.raises(CatalogtuneError, match="given twice"):
        multi.run(_cfg(tmp_path, data_dir, [a, tmp_path / "x" / ".." / "a"]))
    with pytest.raises(CatalogtuneError, match="run folder not found: .*nope"):
        multi.run(_cfg(tmp_path, data_dir, [a, tmp_path / "nope"]))
    other = tmp_path / "otherdata"
    _write(other, "train", train_records(5, offset=50))
    b = _fake_run(tmp_path / "b", data=other)
    with pytest.raises(CatalogtuneError, match="different data"):
        multi.run(_cfg(tmp_path, data_dir, [a, b]))
    assert not (tmp_path / "cmp" / "runs").exists()  # nothing evaluated before the checks
    for argv in (["--run", str(a)], ["--run", str(a), "--run", str(tmp_path / "missing")], []):
        rc = cli.main(["compare", "--data", str(data_dir), "--out", str(tmp_path / "c"), *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("catalogtune compare: error:")


def test_run_names_are_unique():
    assert multi.run_names([Path("/x/demo1/run"), Path("/x/demo2/run")]) == ["demo1-run", "demo2-run"]
    assert multi.run_names([Path("/x/a"), Path("/y/b")]) == ["a", "b"]


def test_two_real_tiny_adapters(tmp_path, data_dir, tiny_model_dir, capsys):
    pytest.importorskip("peft")
    a = make_run(tmp_path / "a", tiny_model_dir, lora_alpha=32)
    b = make_run(tmp_path / "b", tiny_model_dir, lora_alpha=8)
    rc = cli.main(["compare", "--data", str(data_dir), "--run", str(a), "--run", str(b), "--out", str(tmp_path / "cmp"),
                   "--limit", "3", "--seen-limit", "0", "--no-probes", "--max-new-tokens", "4", "--embedder", "hash",
                   "--bootstrap", "100", "--systems", "base,finetuned"])
    assert rc == 0 and "compare.html" in capsys.readouterr().out
    rep = read_json(tmp_path / "cmp" / "compare.json")
    assert len(rep["rows"]) == 4 and len(rep["cross_run"]) == 1
    ft = {r["run"]: r for r in rep["rows"] if r["system"] == "finetuned"}
    assert ft["a"]["perplexity"] != ft["b"]["perplexity"] and ft["a"]["perplexity"] > 1
    assert rep["cross_run"][0]["metrics"]["perplexity"]["diff"] == pytest.approx(
        ft["b"]["perplexity"] - ft["a"]["perplexity"])
    assert any("generated once" in n for n in rep["notes"])
