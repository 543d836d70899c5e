"""`catalogtune compare`: several runs, perhaps of different base models, on the same records.

Each run is evaluated by ``stage.run`` into ``OUT/runs/NAME/`` with one shared setting (records,
decoding, index, embedder), so every run keeps the evaluation's cache and resume. A base model
is generated once: before a later run of the same base model is evaluated, the base systems'
cache files of the first one are merged into its cache (same file name = same model, prompt and
decoding), so ``stage.run`` finds them done and its report still has ``base`` and the intervals
against it. The reports are then merged into ``OUT/compare.json``, ``compare.md`` and
``compare.html``: one row per (run, system) with the main metrics, each system's paired
interval against its own base (read from the run's report.json), training and generation
speed, and paired intervals between the runs' systems on the same records (run B's fine-tuned
vs run A's: per-record metrics rescored from the stored outputs with the evaluation's own
functions, likelihoods from the run's cache).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from catalogtune.core import config
from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError, atomic_write_json, atomic_write_text, read_json
from catalogtune.evaluate import compare
from catalogtune.evaluate import report as eval_report
from catalogtune.evaluate import stage

ROW_METRICS = ("rouge_l", "cosine", "perplexity", "unsupported_rate", "top_opening_share", "quote_style_share")
"""Main metrics of each (run, system) row."""
BASE_METRICS = ("rouge_l", "cosine", "perplexity", "unsupported_rate")
"""Differences from the run's own base shown in the tables (all paired metrics stay in compare.json)."""
TRAIN_KEYS = ("steps", "wall_s", "useful_tokens_per_s", "best_val_loss", "backend", "device")
"""Keys copied from each run's summary.json."""
BASE_SYSTEMS = ("base", "base+rag")


@dataclass
class CompareConfig:
    """Options of `catalogtune compare`."""

    data: Path
    """Prepared data folder: every run is evaluated on its records."""
    out: Path
    """Comparison folder (compare.json, compare.md, compare.html, runs/NAME/ = each run's evaluation)."""
    runs: list[Path] = field(default_factory=list)
    """Training run folders (--run A --run B ...; at least two), each with adapter/ and config.yaml."""
    index: Path | None = None
    """RAG index folder; without it the +rag systems and retrieval-only are skipped."""
    split: str = "test"
    """Prepared split evaluated: test (reports), or val (tuning choices)."""
    limit: int | None = None
    """Records evaluated (the first N of the split); empty = all."""
    seen_limit: int = 20
    """Training records sampled as seen products in each run's own report (0 = skip)."""
    systems: list[str] = field(default_factory=lambda: list(stage.SYSTEMS))
    """Systems evaluated for every run."""
    max_new_tokens: int = DECODING.max_new_tokens
    """Most tokens generated per description (the same for every run)."""
    batch_size: int = 16
    """Prompts per generation batch."""
    k: int = 3
    """Records retrieved per title for the +rag systems and the claim check."""
    embedder: str = "minilm"
    """Embedder for cosine similarity and BERTScore: minilm, or hash (fast fake for tests)."""
    bootstrap: int = 1000
    """Paired bootstrap resamples for the 95 % intervals (0 = none)."""
    seed: int = 0
    """Seed of the seen sample and of the bootstrap."""
    probes: bool = True
    """Also answer the invented non-book titles in each run's report."""
    bf16: bool | None = None
    """bf16 autocast while generating (default: the generator decides)."""

    def __post_init__(self) -> None:
        self.runs = [Path(r) for r in self.runs]
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1 (or empty for the whole split)")
        if self.split not in ("test", "val"):
            raise ValueError(f"split must be test or val, not {self.split!r}")
        if self.bootstrap < 0:
            raise ValueError("bootstrap may not be negative")


@dataclass
class CompareResult:
    """What `compare` produced."""

    out: Path
    report: dict
    generated: int
    """Generations made in this call, over all runs."""


# --- inputs ------------------------------------------------------------------------------


def run_names(runs: list[Path]) -> list[str]:
    """Short unique names: the folder names, with as many parent folders as make them unique."""
    parts = [Path(os.path.abspath(r)).parts[1:] or ("run",) for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"run{i}" for i in range(len(runs))]


def eval_config(cfg: CompareConfig, run: Path, out: Path) -> stage.EvalConfig:
    """The one evaluation setting, for one run."""
    return stage.EvalConfig(
        out=out, data=cfg.data, run=run, index=cfg.index, split=cfg.split, limit=cfg.limit,
        seen_limit=cfg.seen_limit, systems=list(cfg.systems), max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size, k=cfg.k, embedder=cfg.embedder, bootstrap=cfg.bootstrap, seed=cfg.seed,
        probes=cfg.probes, bf16=cfg.bf16)


def check_runs(cfg: CompareConfig) -> list[dict]:
    """One-line errors for fewer than two runs, a run given twice, a missing run or index, runs
    trained on different data; else ``[{name, path, model, data}]``."""
    if len(cfg.runs) < 2:
        raise CatalogtuneError(f"compare needs at least two runs (--run A --run B), got {len(cfg.runs)}")
    seen: dict[Path, Path] = {}
    for r in cfg.runs:
        key = Path(os.path.realpath(r))
        if key in seen:
            raise CatalogtuneError(f"run {r} is given twice (as {seen[key]} and {r})")
        seen[key] = r
    if not Path(cfg.data).is_dir():
        raise CatalogtuneError(f"data folder not found: {cfg.data}")
    from catalogtune.infer.generate import base_model_of

    runs = []
    for name, r in zip(run_names(cfg.runs), cfg.runs):
        stage.check_inputs(eval_config(cfg, r, Path(cfg.out)))  # run folder, adapter/, index
        trained = config.load_yaml(r / "config.yaml").get("data") if (r / "config.yaml").is_file() else None
        runs.append({"name": name, "path": str(r), "model": base_model_of(r), "data": trained})
    known = [x for x in runs if x["data"]]
    for other in known[1:]:
        if not _same_data(known[0]["data"], other["data"]):
            raise CatalogtuneError(f"runs were trained on different data: {known[0]['path']} on {known[0]['data']}, "
                                   f"{other['path']} on {other['data']}")
    return runs


def _same_data(a: str, b: str) -> bool:
    """Two prepared folders hold the same data: the same folder, or the same split files' bytes."""
    pa, pb = Path(a), Path(b)
    if os.path.realpath(pa) == os.path.realpath(pb):
        return True
    if not (pa.is_dir() and pb.is_dir()):
        return False
    return _data_digest(pa) == _data_digest(pb)


def _data_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        f = folder / f"{split}.parquet"
        h.update(split.encode())
        if f.is_file():
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


# --- evaluation ----------------------------------------------------------------------------


def share_base_cache(src: Path, dst: Path) -> int:
    """Merge the base systems' cache records of ``src/cache`` into ``dst/cache`` (records ``dst``
    lacks, by id); returns how many were added. Same file name = same base model, prompt and
    decoding (the stage's fingerprint), so ``stage.run`` takes them as done."""
    added = 0
    for system in BASE_SYSTEMS:
        for f in sorted((src / "cache").glob(f"*__{system.replace('+', '_')}__*.jsonl")):
            have = stage.read_cache(dst / "cache" / f.name)
            new = [rec for i, rec in stage.read_cache(f).items() if i not in have]
            if new:
                stage.append_cache(dst / "cache" / f.name, new)
                added += len(new)
    return added


def evaluate_runs(cfg: CompareConfig, runs: list[dict], log: Callable[[str], None]) -> int:
    """``stage.run`` per run into OUT/runs/NAME/, the base generations shared per base model."""
    first_of: dict[str, Path] = {}
    generated = 0
    for r in runs:
        out = Path(cfg.out) / "runs" / r["name"]
        r["eval_dir"] = str(out)
        if r["model"] in first_of:
            n = share_base_cache(first_of[r["model"]], out)
            r["base_shared_from"] = first_of[r["model"]].name
            log(f"[compare] {r['name']}: base model {r['model']} already evaluated ({n} cached records shared)")
        else:
            first_of[r["model"]] = out
        log(f"[compare] evaluating {r['name']} (base model {r['model']}) ...")
        res = stage.run(eval_config(cfg, Path(r["path"]), out), log=log)
        generated += res.generated
        r["report"] = read_json(out / "report.json")
    ids = [[rec["id"] for rec in r["report"]["records"]["test"]] for r in runs]
    if any(i != ids[0] for i in ids[1:]):
        raise CatalogtuneError("the runs' evaluations hold different records; delete OUT/runs and run again")
    return generated


# --- merging ---------------------------------------------------------------------------------


def _gen_tokens_per_s(m: dict) -> float | None:
    n, tok, sec = m.get("n"), m.get("mean_new_tokens"), m.get("gen_seconds")
    if not all(isinstance(v, (int, float)) for v in (n, tok, sec)) or not sec:
        return None
    return n * tok / sec


def train_summary(run: Path) -> dict:
    """The training figures of RUN/summary.json (empty values when it is missing or unreadable)."""
    try:
        s = read_json(run / "summary.json")
    except (OSError, ValueError):
        s = {}
    return {k: s.get(k) if isinstance(s, dict) else None for k in TRAIN_KEYS}


def system_rows(runs: list[dict]) -> list[dict]:
    """One row per (run, system): main metrics, intervals vs the run's base, training and generation speed."""
    rows = []
    for r in runs:
        rep, train = r["report"], r["train"]
        vs_base = {c["system"]: c["metrics"] for c in rep.get("comparisons", []) if c.get("versus") == "base"}
        for s, m in rep.get("systems", {}).items():
            coll = rep.get("collapse", {}).get(s, {})
            row = {"run": r["name"], "model": r["model"], "system": s, "n": m.get("n")}
            row.update({k: m.get(k, coll.get(k)) for k in ROW_METRICS})
            row["vs_base"] = vs_base.get(s, {})
            row.update(gen_tokens_per_s=_gen_tokens_per_s(m), train_wall_s=train.get("wall_s"),
                       train_useful_tokens_per_s=train.get("useful_tokens_per_s"))
            rows.append(row)
    return rows


def _cache_rows(eval_dir: Path, system: str, records: list[dict]) -> dict[str, dict]:
    """The cached likelihoods of ``system``'s outputs in ``records`` (the newest cache file that
    holds them all), by id; {} when none does."""
    files = sorted((eval_dir / "cache").glob(f"test__{system.replace('+', '_')}__*.jsonl"),
                   key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files:
        done = stage.read_cache(f)
        if all(rec["id"] in done and done[rec["id"]].get("output") == rec["outputs"].get(system)
               and done[rec["id"]].get("key") == stage.item_key({"title": rec["title"], "content": rec["reference"]})
               for rec in records):
            return done
    return {}


def record_rows(r: dict, system: str, scorers: dict) -> list[dict]:
    """Per-record rows of one run's system, scored as ``stage`` scores them (rows for ``compare.compare``)."""
    records = r["report"]["records"]["test"]
    cached = _cache_rows(Path(r["eval_dir"]), system, records)
    rows = []
    for rec in records:
        c = cached.get(rec["id"], {})
        rows.append({"id": rec["id"], "title": rec["title"], "reference": rec["reference"],
                     "output": rec["outputs"].get(system, ""), "nll_sum": c.get("nll_sum"), "n_tokens": c.get("n_tokens")})
    eval_report.add_sample_metrics(rows, scorers["embed"], scorers["token_embed"], scorers["support"])
    return rows


def _scorers(cfg: CompareConfig, records: list[dict]) -> dict:
    """The stage's embedders and the claim support (the same retrieved records as the stage's)."""
    embed, token_embed = stage.embedders(cfg.embedder)
    support: dict[str, list[str]] = {}
    if cfg.index is not None:
        from catalogtune.rag.index import Index

        items = [{"id": rec["id"], "title": rec["title"], "content": rec["reference"]} for rec in records]
        hits = stage.retrieve(Index.open(cfg.index), items, cfg.k, exclude_self=False)
        support = {i: [f"{h['title']} {h['content']}" for h in recs] for i, recs in hits.items()}
    return {"embed": embed, "token_embed": token_embed, "support": support}


def cross_run(cfg: CompareConfig, runs: list[dict], notes: list[str]) -> list[dict]:
    """Paired intervals of every later run's systems against each earlier run's, on the same records.

    Baselines answer alike in every run, and so do base systems of the same base model: those
    pairs are left out. Perplexity is left out between different base models (per-token
    perplexities over different tokenizers are not comparable)."""
    if cfg.bootstrap == 0 or len(runs[0]["report"]["records"]["test"]) < 2:
        return []
    scorers = _scorers(cfg, runs[0]["report"]["records"]["test"])
    cache: dict[tuple[str, str], list[dict]] = {}

    def rows(r: dict, s: str) -> list[dict]:
        if (r["name"], s) not in cache:
            cache[r["name"], s] = record_rows(r, s, scorers)
            _check_rescored(r, s, cache[r["name"], s], notes)
        return cache[r["name"], s]

    out = []
    for j, b in enumerate(runs):
        for a in runs[:j]:
            same_base = a["model"] == b["model"]
            shared = [s for s in b["report"]["systems"] if s in a["report"]["systems"] and s in stage.MODEL_SYSTEMS
                      and not (same_base and s in BASE_SYSTEMS)]
            for s in shared:
                metrics = compare.compare(rows(b, s), rows(a, s), cfg.bootstrap, cfg.seed)
                if not same_base:
                    metrics.pop("perplexity", None)
                out.append({"system": s, "run": b["name"], "versus_run": a["name"], "model": b["model"],
                            "versus_model": a["model"], "metrics": metrics})
    return out


def _check_rescored(r: dict, system: str, rows: list[dict], notes: list[str]) -> None:
    """Note it when the rescored rows' means differ from the run's report (they should not)."""
    m = r["report"]["systems"].get(system, {})
    claims = sum(row["claims"] for row in rows)
    got_by = {"rouge_l": sum(row["rouge_l"] for row in rows) / len(rows),
              "cosine": sum(row["cosine"] for row in rows) / len(rows),
              "unsupported_rate": sum(row["unsupported"] for row in rows) / claims if claims else 0.0}
    for key, got in got_by.items():
        want = m.get(key)
        if isinstance(want, (int, float)) and abs(got - want) > 1e-6:
            notes.append(f"{r['name']} {system}: rescored {key} {got:.4f} differs from its report's {want:.4f}.")


def cross_verdicts(pairs: list[dict], n: int) -> list[str]:
    """Plain sentences for the runs' fine-tuned systems against each other."""
    names = {"rouge_l": "ROUGE-L", "cosine": "MiniLM cosine", "perplexity": "perplexity",
             "unsupported_rate": "unsupported-claim rate"}
    lines = []
    for p in pairs:
        if not p["system"].startswith("finetuned"):
            continue
        for metric, label in names.items():
            res = p["metrics"].get(metric)
            if not res or res.get("diff") is None:
                continue
            verb = ("beats" if res["better"] else "loses to") if res.get("better") is not None else \
                "does not significantly differ from"
            lines.append(f"{p['run']} {p['system']} {verb} {p['versus_run']} {p['system']} on {label}: "
                         f"{compare.fmt_diff(res)} (n = {n}, paired bootstrap 95 % interval).")
    return lines


# --- files -------------------------------------------------------------------------------------


def _md_text(text: Any) -> str:
    """Markdown text with no live HTML (a run folder may be named anything)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(v: Any) -> str:
    """A markdown table cell: escaped, pipes too, on one line."""
    return _md_text(eval_report.fmt(v)).replace("|", "\\|").replace("\n", " ")


def _table_rows(rows: list[dict]) -> tuple[list[str], list[dict]]:
    cols = ["run", "model", "system", "n", *ROW_METRICS, *(f"{m} vs base" for m in BASE_METRICS), "gen tokens/s"]
    flat = [{"run": r["run"], "model": r["model"], "system": r["system"], "n": r["n"],
             **{m: r[m] for m in ROW_METRICS},
             **{f"{m} vs base": compare.fmt_diff(r["vs_base"].get(m)) if r["vs_base"] else "" for m in BASE_METRICS},
             "gen tokens/s": r["gen_tokens_per_s"]} for r in rows]
    return cols, flat


def _cross_rows(pairs: list[dict]) -> tuple[list[str], list[dict]]:
    cols = ["system", "run", "versus", *eval_report.COMPARE_METRICS]
    flat = [{"system": p["system"], "run": p["run"], "versus": p["versus_run"],
             **{m: compare.fmt_diff(p["metrics"].get(m)) for m in eval_report.COMPARE_METRICS}} for p in pairs]
    return cols, flat


def _train_rows(runs: list[dict]) -> tuple[list[str], list[dict]]:
    cols = ["run", "model", *TRAIN_KEYS]
    return cols, [{"run": r["name"], "model": r["model"], **r["train"]} for r in runs]


def _md(cols: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path: Path, rep: dict) -> None:
    """compare.md: the (run, system) table, the cross-run intervals, training figures, notes."""
    lines = ["# catalogtune compare", "",
             _md_text(f"{rep['n_items']} records ({rep['test_source']}), the same decoding for every run."),
             "", _md(*_table_rows(rep["rows"])), ""]
    if rep["cross_run"]:
        lines += ["Between runs (paired bootstrap 95 % interval of run minus versus; n.s. = not significant):", "",
                  _md(*_cross_rows(rep["cross_run"])), ""]
    lines += [f"- {_md_text(v)}" for v in rep["verdicts"]] + ([""] if rep["verdicts"] else [])
    lines += ["Training (RUN/summary.json):", "", _md(*_train_rows(rep["runs"])), ""]
    lines += [f"- {_md_text(n)}" for n in rep["notes"]]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_html(path: Path, rep: dict) -> None:
    """compare.html: the same tables, every value escaped."""
    from catalogtune.core import htmlreport as h

    links = "".join(f'<li><a href="{h.escape(os.path.relpath(r["eval_dir"], path.parent))}/report.html">'
                    f'{h.escape(r["name"])}</a></li>' for r in rep["runs"])
    def table(cols_rows: tuple[list[str], list[dict]]) -> str:
        cols, rows = cols_rows
        return h.table(rows, cols)

    sections = [("Runs and systems", table(_table_rows(rep["rows"])))]
    if rep["cross_run"]:
        sections.append(("Between runs (paired bootstrap 95 % interval; n.s. = not significant)",
                         table(_cross_rows(rep["cross_run"])) + "".join(h.paragraph(v) for v in rep["verdicts"])))
    sections += [("Training", table(_train_rows(rep["runs"]))),
                 ("Notes", "".join(h.paragraph(n) for n in rep["notes"]) + f"<ul>{links}</ul>")]
    atomic_write_text(path, h.page("catalogtune compare", sections,
                                   subtitle=f"{rep['n_items']} records, {rep['test_source']}"))


def _notes(runs: list[dict], cfg: CompareConfig) -> list[str]:
    notes = [f"Every run evaluated by `catalogtune evaluate` with the same settings into runs/NAME/ "
             f"(report.html there); the intervals against base come from those reports ({cfg.bootstrap} resamples)."]
    notes += [f"{r['name']}: base outputs of {r['model']} shared with {r['base_shared_from']} (generated once)."
              for r in runs if r.get("base_shared_from")]
    if len({r["model"] for r in runs}) > 1:
        notes.append("Perplexity is per token of each base model's own tokenizer: compare it within a base model, "
                     "not across; the between-run intervals leave it out for different base models.")
    trained = {r["data"] for r in runs if r["data"]}
    if trained and all(not _same_data(t, str(cfg.data)) for t in trained):
        notes.append(f"The runs were trained on {', '.join(sorted(trained))}, evaluated on {cfg.data}.")
    notes.append("Between runs: per-record metrics rescored from each report's stored outputs with the evaluation's "
                 "own scoring (same embedder and retrieved records), perplexity from each run's cache.")
    return notes


def run(cfg: CompareConfig, log: Callable[[str], None] = stage._log) -> CompareResult:
    """Evaluate every run on the same records and write compare.json / compare.md / compare.html."""
    from catalogtune.core.locks import folder_lock

    runs = check_runs(cfg)
    out = Path(cfg.out)
    with folder_lock(out / ".lock", f"the comparison in {out}", target=out):
        generated = evaluate_runs(cfg, runs, log)
        for r in runs:
            r["train"] = train_summary(Path(r["path"]))
        notes = _notes(runs, cfg)
        pairs = cross_run(cfg, runs, notes)
        first = runs[0]["report"]
        n = len(first["records"]["test"])
        rep = eval_report.clean_json({
            "runs": [{k: v for k, v in r.items() if k != "report"} for r in runs],
            "rows": system_rows(runs), "cross_run": pairs, "verdicts": cross_verdicts(pairs, n),
            "n_items": n, "test_source": first.get("test_source"), "notes": notes, "config": config.to_dict(cfg)})
        atomic_write_json(out / "compare.json", rep)
        write_markdown(out / "compare.md", rep)
        write_html(out / "compare.html", rep)
    return CompareResult(out=out, report=rep, generated=generated)


def main(argv: list[str]) -> int:
    """`catalogtune compare --data DIR --run A --run B [--index DIR] [--split test|val] [--limit N] --out DIR`."""
    p = argparse.ArgumentParser(prog="catalogtune compare", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="YAML preset of CompareConfig keys")
    p.add_argument("--run", dest="runs", action="append", default=None, metavar="RUN_DIR",
                   help="a training run folder; give it once per run (at least two)")
    config.add_arguments(p, CompareConfig, skip=("runs",))
    ns = p.parse_args(argv)
    if ns.config is None and (ns.data is None or ns.out is None):
        p.error("--data and --out are required")
    cfg = config.from_namespace(CompareConfig, ns, ns.config)
    res = run(cfg)
    for row in res.report["rows"]:
        shown = " ".join(f"{k}={eval_report.fmt(row.get(k))}" for k in ROW_METRICS)
        print(f"{row['run']:<16} {row['system']:<14} {shown}")
    for v in res.report["verdicts"]:
        print(f"- {v}")
    print(f"wrote {res.out / 'compare.html'} ({res.generated} new generations)")
    return 0
