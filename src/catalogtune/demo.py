"""`catalogtune demo`: the whole mission on real data, each stage skipped when up to date.

prepare -> analyze -> index -> evaluate the base model -> fine-tune -> evaluate all four
systems -> ``summary.md`` / ``summary.html``. Every stage writes its own subfolder of ``out``
(``prep/ eda/ index/ run/ eval/``) and a stamp ``.stage.json`` holding a fingerprint of its
inputs and settings: a second run skips what is done, an interrupted run continues.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_write_json, atomic_write_text, read_json, shared_data
from catalogtune.data.io import split_rows  # reads Parquet footers; pyarrow loads only when called

STAMP = ".stage.json"
"""Suffix of each stage's stamp file inside its folder (``.NAME.stage.json``)."""
AUTO_TEST_LIMIT = 120
"""Test records per system when ``limit`` is empty: enough for the paired intervals (the shared
files' whole test split), few enough for the full catalogue's ~200k test records to fit a demo."""
MAIN_METRICS = ("perplexity", "rouge_l", "chrf", "cosine", "unsupported_rate", "invented_attribution_rate",
                "quote_style_share")


@dataclass
class DemoConfig:
    data: list[Path] = field(default_factory=list)
    """Raw inputs (trn.json[.gz], JSONL, Parquet, CSV; comma-separated); default: the shared real files
    ../shared/data/amazon_titles_sample.jsonl and amazon_titles_more.jsonl (796 records)."""
    out: Path = Path("demo-out")
    """Output folder; one subfolder per stage."""
    model: str = "smollm2-135m"
    """Base model: a registered name, a local folder or a hub id."""
    train_config: Path | None = None
    """Training preset (YAML); default: the trainer's preset for the model."""
    max_steps: int | None = None
    """Cap on training steps (None: the preset's epochs)."""
    limit: int | None = None
    """Test records evaluated per system (empty = the whole test split, at most 120: all 120 of the
    shared files' test split; the first 120 of a larger one, such as the full catalogue's)."""
    seen_limit: int = 12
    """Training records evaluated per system (seen products)."""
    val_fraction: float = 0.1
    """Share of title groups in the validation split (early stopping, tuning)."""
    test_fraction: float = 0.15
    """Share of title groups in the test split (reported, never tuned on)."""
    drop_kinds: list[str] = field(default_factory=lambda: ["reviews"])
    """Description kinds left out of the training split (prepare --drop-kinds); val/test keep them."""
    retrieval_training: bool = True
    """Train retrieval-aware (train --rag-index). On: on the validation split (n = 69, repetition
    rules on the output only) its fine-tuned + RAG answers had ROUGE-L 0.147 / cosine 0.404 and
    16 % top-opening share, against 0.145 / 0.397 / 29 % for the plain run, and alone it matched
    the plain run (0.132 / 0.398 vs 0.133 / 0.384)."""
    index_budget: str | None = "30m"
    """Wall-time budget of the index build (index --budget): on the shared files it does not bind;
    on the full catalogue only the first training records that fit are indexed, and the summary says
    how many."""
    train_budget: str | None = "30m"
    """Wall-time budget of the training stage (train --budget): on the shared files it does not bind on
    a quiet CPU; on the full catalogue it keeps the steps that fit and the summary says so."""
    budget: str | None = None
    """Wall-time budget of the whole demo (45m, 2h). prepare and analyze run whole (one pass each);
    what is left is shared out as each later stage starts (index 15 %, evaluate-base 25 %, train
    35 %, the last evaluation the rest), so a stage that ends early or late gives or takes time from
    the ones after it. Replaces --index-budget and --train-budget, and cuts the test records to the
    ones that fit (evaluate --budget); the summary says what each stage covered."""
    max_new_tokens: int = 128
    """Generation budget per description (the sample's median description is ~100 tokens)."""
    embedder: str = "minilm"
    """Embedding model for the index and the metrics ('minilm'; 'hash' is a test fake). With 'minilm'
    the index embeds with 'minilm-onnx' (``index_embedder``): the same vectors, faster."""
    force: bool = False
    """Re-run every stage even when its outputs are up to date."""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [Path(self.data)]
        self.data = [Path(p) for p in self.data]
        if (self.limit is not None and self.limit <= 0) or self.seen_limit < 0:
            raise ValueError("limit must be positive (or empty) and seen_limit not negative")
        if self.budget is not None:
            from catalogtune.core.util import budget_seconds

            budget_seconds(self.budget)


@dataclass
class DemoResult:
    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _file_sig(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage(res: DemoResult, name: str, folder: Path, fp: str, force: bool, fn: Callable[[], Any]) -> str:
    """Run ``fn`` unless ``folder``'s stamp holds ``fp``; return the stamp (the next stage's input)."""
    stamp = folder / f".{name}{STAMP}"
    if not force and stamp.is_file():
        try:
            if read_json(stamp).get("fingerprint") == fp:
                res.skipped.append(name)
                res.timings[name] = 0.0
                print(f"[demo] {name}: up to date, skipped", flush=True)
                return fp
        except (ValueError, OSError):
            pass
    print(f"[demo] {name} ...", flush=True)
    t0 = time.perf_counter()
    info = fn()
    res.timings[name] = round(time.perf_counter() - t0, 1)
    atomic_write_json(stamp, {"fingerprint": fp, "seconds": res.timings[name], "finished": time.time(),
                              **({"info": info} if isinstance(info, dict) else {})})
    print(f"[demo] {name}: done in {res.timings[name]:.1f} s", flush=True)
    return fp


def _default_data(data: list[Path]) -> list[Path]:
    if data:
        for p in data:
            if not Path(p).exists():
                raise CatalogtuneError(f"input not found: {p}")
        return [Path(p) for p in data]
    found = shared_data()
    if not found:
        raise CatalogtuneError(
            "no input given and ../shared/data/amazon_titles_sample.jsonl not found; "
            "pass the real data: catalogtune demo --data /path/to/trn.json.gz"
        )
    return found


INDEX_EMBEDDERS = {"minilm": "minilm-onnx"}
"""The index's embedder for a demo embedder whose vectors another one gives faster (same ``space``)."""


def index_embedder(name: str) -> str:
    """The embedder the demo's index stage uses for ``embedder`` = ``name`` (the metrics keep ``name``)."""
    return INDEX_EMBEDDERS.get(name, name)


def run(cfg: DemoConfig) -> DemoResult:
    """Run every stage (or skip it when up to date) and write the summary."""
    from catalogtune.analyze import stage as analyze
    from catalogtune.evaluate import stage as evaluate
    from catalogtune.rag import index as rag
    from catalogtune.train import stage as train
    from catalogtune.data import prepare

    t_start = time.perf_counter()
    data = _default_data(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    d = {k: out / k for k in ("prep", "eda", "index", "run", "eval")}

    prep_kw = dict(inputs=data, out=d["prep"], val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                   drop_kinds=cfg.drop_kinds)
    fp = _stage(res, "prepare", d["prep"], _fingerprint("prep", [_file_sig(p) for p in data], prep_kw), cfg.force,
                lambda: prepare.run(prepare.PrepareConfig(**prep_kw)))
    prep_fp = fp
    _stage(res, "analyze", d["eda"], _fingerprint("eda", prep_fp), cfg.force,
           lambda: analyze.run(analyze.AnalyzeConfig(data=d["prep"], out=d["eda"])))
    clock = Budget(cfg.budget, t_start)
    # with a total budget the fingerprints hold it, not each stage's share (which moves with the clock)
    index_fp = _stage(res, "index", d["index"], _fingerprint("index", prep_fp, cfg.embedder, clock.spec or cfg.index_budget),
                      cfg.force, lambda: rag.run(rag.IndexConfig(
                          data=d["prep"], out=d["index"], embedder=index_embedder(cfg.embedder),
                          budget=_index_budget(d["index"], clock.share("index"), cfg.index_budget),
                          # a finished index built from other inputs (data, budget) is replaced; an
                          # interrupted first build (no stamp yet) resumes
                          rebuild=(d["index"] / f".index{STAMP}").is_file())))
    limit = cfg.limit if cfg.limit is not None else min(AUTO_TEST_LIMIT, split_rows(d["prep"], "test"))
    eval_common = dict(
        data=d["prep"], out=d["eval"], index=d["index"], limit=limit, seen_limit=cfg.seen_limit,
        max_new_tokens=cfg.max_new_tokens, embedder=cfg.embedder,
    )

    def evaluate_base() -> dict[str, Any]:
        budget = clock.share("evaluate-base")
        rep = evaluate.run(config.build(evaluate.EvalConfig, model=cfg.model, **eval_common, budget=budget)).report
        return {"test_records": rep.get("n_items"), "budget": budget}

    # Before: the base model alone (the evaluation caches these outputs for the "after" pass).
    _stage(res, "evaluate-base", d["eval"], _fingerprint("evb", index_fp, cfg.model, eval_common, *([clock.spec] if clock.spec else [])),
           cfg.force, evaluate_base)
    if clock.spec:  # the last evaluation answers the records the base model's budget fitted: paired
        eval_common["limit"] = _stage_info(d["eval"], "evaluate-base").get("test_records") or limit
    train_kw: dict[str, Any] = dict(data=d["prep"], out=d["run"], model=cfg.model, max_steps=cfg.max_steps)
    if cfg.retrieval_training:
        # references in half of the prompts need room: about 290 prompt tokens with 3 records;
        # no loss on invented names and numbers in the prompts without references (validation
        # n = 69 and test n = 120: fewer unsupported claims, ROUGE-L and the RAG gain kept)
        train_kw.update(rag_index=d["index"], max_length=448, mask_unsupported=True, mask_scope="plain")
    preset = cfg.train_config
    train_fp = _stage(res, "train", d["run"],
                      _fingerprint("train", prep_fp, index_fp, {**train_kw, "budget": clock.spec or cfg.train_budget}, str(preset)),
                      cfg.force, lambda: train.run(_train_config(train, preset, {
                          **train_kw, "budget": clock.share("train") or cfg.train_budget, **_rerun_flags(d["run"])})))
    _stage(res, "evaluate", d["eval"], _fingerprint("ev", index_fp, train_fp, eval_common), cfg.force,
           lambda: evaluate.run(config.build(evaluate.EvalConfig, run=d["run"], **eval_common)))
    res.report = read_json(d["eval"] / "report.json")
    write_summary(res, cfg, data)
    return res


STAGE_SHARES = {"index": 0.15, "evaluate-base": 0.25, "train": 0.35, "evaluate": 0.25}
"""How ``--budget`` is shared by the stages after analyze: each stage gets its share of what is left
when it starts, over the shares of the stages still to run (the last evaluation is not cut: it
answers the records evaluate-base fitted, and its share is what is left)."""
MIN_STAGE_S = 60
"""Fewest seconds a budgeted stage is given, however late it starts (it still keeps a first step,
a first batch of records)."""


class Budget:
    """The demo's total wall-time budget, shared out stage by stage from a clock started at ``t0``."""

    def __init__(self, spec: str | None, t0: float):
        from catalogtune.core.util import budget_seconds

        self.spec, self.t0 = spec, t0
        self.total = budget_seconds(spec) if spec else None

    def share(self, stage: str) -> str | None:
        """This stage's budget as a string for its config (None without a total budget)."""
        if self.total is None:
            return None
        names = list(STAGE_SHARES)
        rest = sum(STAGE_SHARES[n] for n in names[names.index(stage):])
        left = self.total - (time.perf_counter() - self.t0)
        seconds = max(MIN_STAGE_S, int(left * STAGE_SHARES[stage] / rest))
        print(f"[demo] budget {self.spec}: {left / 60:.1f} min left; {stage} gets {seconds / 60:.1f} min", flush=True)
        return f"{seconds}s"


def _index_budget(folder: Path, share: str | None, default: str | None) -> str | None:
    """The index build's budget: a build that was interrupted after its budget decided keeps that
    budget (index refuses another on resume); else this demo's share, or --index-budget."""
    if share is None:
        return default
    man = folder / "index.json"
    if man.is_file() and not (folder / f".index{STAMP}").is_file():
        try:
            prior = read_json(man).get("budget")
        except (OSError, ValueError):
            prior = None
        if prior:
            return str(prior)
    return share


def _stage_info(folder: Path, name: str) -> dict[str, Any]:
    """What a finished stage recorded in its stamp (``info``), or {}."""
    try:
        return dict(read_json(folder / f".{name}{STAMP}").get("info") or {})
    except (OSError, ValueError, TypeError):
        return {}


def _rerun_flags(run_dir: Path) -> dict[str, bool]:
    """How the train stage may use a run folder that already holds a run: a finished run from other
    inputs (its stamp is there) starts afresh; an interrupted one (checkpoints, no stamp) resumes."""
    if (run_dir / f".train{STAMP}").is_file():
        return {"overwrite": True}
    return {"resume": True} if (run_dir / "checkpoints").is_dir() else {}


def _train_config(train: Any, preset: Path | None, kw: dict[str, Any]) -> Any:
    if preset is None and hasattr(train, "default_preset"):
        preset = train.default_preset(kw["model"])
    return config.build(train.TrainConfig, preset, **kw)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def before_after_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per system with the main metrics (the table the demo prints)."""
    rows = []
    for name, m in report.get("systems", {}).items():
        rows.append({"system": name, "n": m.get("n"), **{k: m.get(k) for k in MAIN_METRICS}})
    return rows


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no systems evaluated)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _ppl_change(report: dict[str, Any]) -> float | None:
    s = report.get("systems", {})
    try:
        return 1.0 - s["finetuned"]["perplexity"] / s["base"]["perplexity"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def collapse_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Collapse figures per system and for the real descriptions (``reference``)."""
    keys = ("top_opening_share", "quote_style_share", "self_bleu")
    return [{"system": s, **{k: m.get(k) for k in keys}} for s, m in report.get("collapse", {}).items()]


GPU_MEASURED = {"gpu": "H100 80GB", "model": "smollm2-135m", "params": 134.5e6, "useful_tokens_per_s": 3014.0}
"""The one GPU training rate measured for this project (README: smollm2-135m, default preset,
batch 8, torch backend, bf16; `--backend unsloth` reached 4,488). A 135M model at batch 8 uses
under 1 % of an H100 (kernel launches dominate), so larger batches would be faster: not measured."""


def full_run_projection(train_summary: dict[str, Any], epochs: float, train_records: int) -> dict[str, Any] | None:
    """What training on every record of the split would take: on this machine at the run's measured
    useful tokens/s, and on one GPU at ``GPU_MEASURED``'s rate (scaled by parameter count for another
    model). None without a plan or a measured rate."""
    plan = train_summary.get("plan") or {}
    per_rec = (plan.get("tokens_per_epoch") or 0) / max(1, plan.get("records") or 0)
    rate, tokens_run = train_summary.get("useful_tokens_per_s") or 0, train_summary.get("tokens") or 0
    if not per_rec or not rate or not train_records or not tokens_run:
        return None
    useful = per_rec * train_records * epochs * (train_summary.get("useful_tokens") or 0) / tokens_run
    out = {"records": train_records, "epochs": epochs, "useful_tokens": round(useful), "here_h": useful / rate / 3600}
    params = train_summary.get("model_params")
    same = str(train_summary.get("model") or "") == GPU_MEASURED["model"]
    if same or params:
        gpu_rate = GPU_MEASURED["useful_tokens_per_s"] * (1.0 if same else GPU_MEASURED["params"] / params)
        out.update(gpu=GPU_MEASURED["gpu"], gpu_h=useful / gpu_rate / 3600, gpu_scaled=not same)
    return out


def plan_rows(out: Path, report: dict[str, Any], train_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """What each stage covered of the data: the whole of it, or the part its budget allowed."""

    prep = out / "prep"
    q = read_json(prep / "quality_report.json") if (prep / "quality_report.json").is_file() else {}
    n_train, n_test = split_rows(prep, "train"), split_rows(prep, "test")
    rows = [{"stage": "prepare", "covered": f"{q.get('records_read', '?'):,} records read"
             if isinstance(q.get("records_read"), int) else "-",
             "of": f"train {n_train:,} / val {split_rows(prep, 'val'):,} / test {n_test:,}"}]
    man = read_json(out / "index" / "index.json") if (out / "index" / "index.json").is_file() else {}
    if man:
        cut = f" (budget {man['budget']}: the first ones)" if man.get("budget") and man.get("limit") else ""
        rows.append({"stage": "index", "covered": f"{man.get('count') or 0:,} records{cut}",
                     "of": f"{n_train:,} training records"})
    if train_summary:
        pool, sample = train_summary.get("pool"), train_summary.get("sample")
        seen = (sample or {}).get("records") or train_summary.get("n_train") or 0
        how = "records (stratified sample)" if pool or sample else "records"
        rows.append({"stage": "train", "covered": f"{seen:,} {how}, {train_summary.get('steps', 0):,} steps "
                     f"({train_summary.get('stopped')})", "of": f"{(pool or {}).get('of') or n_train:,} training records"})
    n_eval = (report.get("systems", {}).get("base") or {}).get("n")
    if n_eval:
        fit = _stage_info(out / "eval", "evaluate-base")
        cut = f" (budget: the first {n_eval:,} fitted)" if fit.get("budget") and n_eval < n_test else ""
        rows.append({"stage": "evaluate", "covered": f"{n_eval:,} test records per system{cut}",
                     "of": f"{n_test:,} test records"})
    return rows


def budget_text(cfg: DemoConfig, res: DemoResult) -> str:
    """One sentence on the total budget against the time this invocation took ('' without one)."""
    if not cfg.budget:
        return ""
    from catalogtune.core.util import budget_seconds

    took = sum(res.timings.values())
    verdict = "within it" if took <= budget_seconds(cfg.budget) else "over it"
    skipped = f" ({', '.join(res.skipped)} up to date, not re-run)" if res.skipped else ""
    return f"Budget {cfg.budget}: the stages took {took / 60:.1f} min in all, {verdict}{skipped}."


def _hours(h: float) -> str:
    return f"{h:,.1f} h" if h >= 1 else f"{h * 60:.1f} min" if h * 60 >= 0.1 else "under 0.1 min"


def _projection_text(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    gpu = ""
    if "gpu_h" in p:
        how = (f"the rate measured there for {GPU_MEASURED['model']}, scaled by parameter count" if p["gpu_scaled"]
               else "the rate measured there at batch 8; larger batches were not measured")
        gpu = f"; on one {p['gpu']} about {_hours(p['gpu_h'])} ({how})"
    return (f"Training on all {p['records']:,} training records for {p['epochs']:g} epochs ({p['useful_tokens']:,.0f} "
            f"description tokens) would take about {_hours(p['here_h'])} on this machine at the run's measured "
            f"useful tokens/s{gpu}.")


def write_summary(res: DemoResult, cfg: DemoConfig, data: list[Path]) -> None:
    """Write ``summary.md`` and ``summary.html`` that link every stage's report."""
    from catalogtune.core import htmlreport

    out = res.out
    train_summary = read_json(out / "run" / "summary.json") if (out / "run" / "summary.json").is_file() else {}
    rows = before_after_rows(res.report)
    seen_rows = before_after_rows(res.report.get("seen", {}))
    change = _ppl_change(res.report)
    timing_rows = [{"stage": k, "seconds": v, "skipped": k in res.skipped} for k, v in res.timings.items()]
    train_keys = ("steps", "wall_s", "useful_tokens_per_s", "initial_val_loss", "best_val_loss", "stopped")
    train_row = [{k: train_summary.get(k) for k in train_keys}]
    app_cmd = f"catalogtune app --workspace {out}"

    coverage = plan_rows(out, res.report, train_summary)
    run_cfg = config.load_yaml(out / "run" / "config.yaml") if (out / "run" / "config.yaml").is_file() else {}
    projection = _projection_text(full_run_projection(train_summary, float(run_cfg.get("epochs") or 1),
                                                      split_rows(out / "prep", "train")))
    spent = budget_text(cfg, res)
    projection = " ".join(t for t in (spent, projection) if t)
    md = [
        "# catalogtune demo summary", "",
        "Data: " + ", ".join(f"`{p}`" for p in data) + "  ", f"Base model: `{cfg.model}`", "",
        "## Test split: before (base) and after (fine-tuned), with and without RAG, and two baselines", "",
        _md_table(rows),
    ]
    verdicts = res.report.get("verdicts", [])
    md += ["**What the intervals say**", ""] + [f"- {v}" for v in verdicts] + [""] if verdicts else []
    if change is not None:
        md += [f"Perplexity of the fine-tuned model is {change:.0%} lower than the base model's.", ""]
    md += ["## Collapse (outputs as a corpus; `reference` = the real descriptions)", "", _md_table(collapse_rows(res.report))]
    md += ["## Seen products (training records)", "", _md_table(seen_rows),
           "## Training", "", _md_table(train_row),
           "## What each stage covered", "", _md_table(coverage)] + ([projection, ""] if projection else []) + [
           "## Stage times (s)", "", _md_table(timing_rows),
           "## Reports", "",
           "- Data quality: [prep/quality_report.json](prep/quality_report.json)",
           "- Analysis: [eda/report.html](eda/report.html)",
           "- Training: [run/summary.json](run/summary.json), [run/metrics.jsonl](run/metrics.jsonl), TensorBoard `run/tb/`",
           "- Evaluation: [eval/report.html](eval/report.html), [eval/report.md](eval/report.md)", "",
           f"Open the app on these results: `{app_cmd}`", ""]
    atomic_write_text(out / "summary.md", "\n".join(md))
    links = "".join(
        f'<li><a href="{h}">{htmlreport.escape(t)}</a></li>'
        for t, h in [("Data quality report", "prep/quality_report.json"), ("Analysis report", "eda/report.html"),
                     ("Training summary", "run/summary.json"), ("Evaluation report", "eval/report.html")]
    )
    sections = [
        ("Before / after on the test split", htmlreport.table(rows)
         + "".join(htmlreport.paragraph(v) for v in verdicts)
         + (f"<p>Perplexity {change:.0%} lower after fine-tuning.</p>" if change is not None else "")),
        ("Collapse", htmlreport.table(collapse_rows(res.report))),
        ("Seen products", htmlreport.table(seen_rows)),
        ("Training", htmlreport.table(train_row)),
        ("What each stage covered", htmlreport.table(coverage) + (htmlreport.paragraph(projection) if projection else "")),
        ("Stage times (s)", htmlreport.table(timing_rows)),
        ("Reports", f"<ul>{links}</ul><p>Open the app: <code>{htmlreport.escape(app_cmd)}</code></p>"),
    ]
    atomic_write_text(out / "summary.html", htmlreport.page("catalogtune demo summary", sections))


def print_summary(res: DemoResult) -> None:
    """The short before/after table, stage times and the app command, on stdout."""
    print("\nBefore / after (test split):")
    print(_md_table(before_after_rows(res.report)))
    for v in res.report.get("verdicts", []):
        print(f"- {v}")
    change = _ppl_change(res.report)
    if change is not None:
        print(f"Perplexity: {change:.0%} lower after fine-tuning.")
    total = sum(res.timings.values())
    print("Stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in res.timings.items()) + f" (total {total:.0f}s)")
    print(f"Summary: {res.out / 'summary.html'}")
    print(f"Open the app on these results: catalogtune app --workspace {res.out}")


def main(argv: list[str]) -> int:
    """`catalogtune demo [--data PATH] [--out DIR] [--model NAME] [...]`."""
    cfg = config.parse(DemoConfig, argv, "catalogtune demo", __doc__.splitlines()[0])
    res = run(cfg)
    print_summary(res)
    return 0
