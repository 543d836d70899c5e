"""`catalogtune evaluate`: base vs fine-tuned, with and without RAG, on unseen and seen products.

For each split (the test split or ``--test FILE``; a sample of the training split as "seen")
and each system (``base``, ``finetuned``, ``base+rag``, ``finetuned+rag``) the model generates
a description with the project's one decoding setting (``infer.generate.DECODING``, the same as
``ask`` and the app) and scores the reference description (loss, perplexity). Two baselines
run on the same records: ``title-copy`` (the title as the description) and ``retrieval-only``
(the description of the nearest training record, the product itself excluded). Every system is
compared with the base model (and the fine-tuned ones with the baselines) by a paired bootstrap;
invented non-book titles (``probes``) check that a mug is not described as a book. Generations
and scores are appended per batch to ``EVAL_DIR/cache/SPLIT__SYSTEM__FP.jsonl``; FP hashes the
base model, the adapter (fine-tuned systems only), the prompt template and the generation
settings, so a killed run resumes where it stopped, a changed setting starts afresh, and the base
results of an earlier ``--model`` run are reused once the adapter exists. Metrics are then
computed from the cache (see ``eval_report``) into report.json / report.md / report.html.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_write_json, read_json, torch_threads
from catalogtune.evaluate import compare, probes
from catalogtune.evaluate import report as eval_report
from catalogtune.core.decoding import DECODING

MODEL_SYSTEMS = ("base", "finetuned", "base+rag", "finetuned+rag")
BASELINES = ("title-copy", "retrieval-only")
SYSTEMS = MODEL_SYSTEMS + BASELINES
CACHE_VERSION = 1
"""Bumped when the cached record layout changes."""


CHUNK_BATCHES = 4
"""Batches of prompts handed to one ``generate`` call (and appended to the cache together)."""

@dataclass
class EvalConfig:
    """Options of `catalogtune evaluate`."""

    out: Path
    """Evaluation folder (report.json, report.md, report.html, cache/)."""
    data: Path | None = None
    """Prepared data folder (test split, and the training split for the seen-products sample)."""
    run: Path | None = None
    """Training run folder (RUN_DIR/adapter and RUN_DIR/config.yaml); absent: base model only."""
    model: str | None = None
    """Base model name or folder when there is no run (systems base and base+rag only)."""
    index: Path | None = None
    """RAG index folder; without it the +rag systems are skipped."""
    test: Path | None = None
    """A raw records file evaluated instead of the test split (cleaned like prepare does)."""
    split: str = "test"
    """Prepared split evaluated: test (reports), or val (tuning choices: never tune on the test split)."""
    limit: int | None = None
    """Test records evaluated (the first N); empty = the whole test split."""
    seen_limit: int = 20
    """Training records sampled as seen products (0 = skip)."""
    max_new_tokens: int = DECODING.max_new_tokens
    """Most tokens generated per description."""
    repetition_penalty: float = DECODING.repetition_penalty
    """Greedy decoding's repetition penalty (1.0 = off), the same for every system."""
    no_repeat_ngram_size: int = DECODING.no_repeat_ngram_size
    """Forbid repeating any n-gram of this size (0 = off), the same for every system: greedy
    decoding of small models otherwise loops ("bespoke, bespoke, ...")."""
    penalty_scope: str = DECODING.penalty_scope
    """What the two repetition rules look at: output (the generated tokens) or all (prompt too)."""
    ground_penalty: float = DECODING.ground_penalty
    """Logit penalty on mid-sentence name/number starts the prompt lacks, the same for every system (0 = off)."""
    guidance: float = DECODING.guidance
    """Title guidance scale for every model system (0 = off): each token's log-probability plus this
    times its gain from the title over the same prompt without it (context-aware decoding)."""
    batch_size: int = 16
    """Prompts per generation batch (also the checkpoint granularity)."""
    k: int = 3
    """Records retrieved per title for the +rag systems and the claim check."""
    embedder: str = "minilm"
    """Embedder for cosine similarity and BERTScore: minilm, or hash (fast fake for tests)."""
    seed: int = 0
    """Seed of the seen-products sample."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """Systems to compare (subset of base, finetuned, base+rag, finetuned+rag, title-copy, retrieval-only)."""
    bootstrap: int = 1000
    """Paired bootstrap resamples for the 95 % intervals of the differences (0 = none)."""
    probes: bool = True
    """Also answer the invented non-book titles (book-blurb and quote shares, no references)."""
    samples: int = 12
    """Rows in the samples table of report.html."""
    bf16: bool | None = None
    """bf16 autocast while generating (default: the generator decides; --no-bf16 forces fp32)."""
    rerank: bool = False
    """Answer each prompt with every decoding of ``infer.rerank.VARIANTS`` (each cached like any
    decoding) and keep the answer the others agree with most (MiniLM consensus; the selection never
    sees the reference or the claim check): one full generation per variant, 4x the time."""
    budget: str | None = None
    """Wall-time budget of the whole evaluation (20m, 1h): each model system first answers one batch
    of test records (kept, like every answer, in the cache), and the test records are cut to the
    first N that the measured rate fits in what is left; the report's plan says how many."""

    def __post_init__(self) -> None:
        if self.data is None and self.test is None:
            raise ValueError("give --data (prepared folder) or --test FILE")
        if self.run is not None and self.model is not None:
            raise ValueError("give --run or --model, not both (a run names its base model)")
        if self.run is None and self.model is None:
            raise ValueError("give --run RUN_DIR (or --model NAME to evaluate the base model only)")
        for name in ("max_new_tokens", "batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1 (or empty for the whole test split)")
        if not self.ground_penalty >= 0:
            raise ValueError("ground_penalty may not be negative")
        if not self.guidance >= 0:
            raise ValueError("guidance may not be negative")
        if self.bootstrap < 0:
            raise ValueError("bootstrap may not be negative")
        if self.seen_limit < 0 or self.samples < 0:
            raise ValueError("seen_limit and samples may not be negative")
        if self.budget is not None and self.rerank:
            raise ValueError("--budget and --rerank do not combine yet (the budget measures one decoding)")
        if self.budget is not None:
            from catalogtune.core.util import budget_seconds

            budget_seconds(self.budget)  # a bad budget fails here, not after loading the model
        if self.split not in ("test", "val"):
            raise ValueError(f"split must be test or val, not {self.split!r}")
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad or not self.systems:
            raise ValueError(f"unknown system(s) {bad or '(none)'}; known: {', '.join(SYSTEMS)}")


@dataclass
class EvalResult:
    """What `evaluate` produced."""

    out: Path
    report: dict
    generated: int
    """Generations made in this call (the rest came from the cache)."""
    wall_s: float


# --- inputs ------------------------------------------------------------------------------


def load_test(cfg: EvalConfig) -> tuple[list[dict], str]:
    """The test records (first ``limit``) and a label of where they came from."""
    if cfg.test is not None:
        if not Path(cfg.test).is_file():
            raise CatalogtuneError(f"test file not found: {cfg.test}")
        from catalogtune.data.prepare import clean_file

        return list(clean_file(cfg.test))[: cfg.limit], f"file {cfg.test}"
    from catalogtune.data.io import read_split

    return read_split(cfg.data, cfg.split, limit=cfg.limit), f"{cfg.split} split of {cfg.data}"


def load_seen(cfg: EvalConfig) -> list[dict]:
    """A seeded sample of training records (from the first rows of the already shuffled split)."""
    if cfg.data is None or cfg.seen_limit == 0:
        return []
    from catalogtune.data.io import read_split

    pool = read_split(cfg.data, "train", limit=max(1000, 20 * cfg.seen_limit))
    return random.Random(cfg.seed).sample(pool, min(cfg.seen_limit, len(pool)))


def retrieve(index: Any, items: list[dict], k: int, exclude_self: bool) -> dict[str, list[dict]]:
    """Top-k records per item id; for seen products the product itself is dropped (by id or by
    identical description), else RAG would just copy the answer."""
    hits = index.query([it["title"] for it in items], k=k + 1 if exclude_self else k)
    out = {}
    for it, recs in zip(items, hits):
        if exclude_self:
            recs = [r for r in recs if r["id"] != it["id"] and r["content"].strip() != it["content"].strip()]
        out[it["id"]] = recs[:k]
    return out


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _adapter_hash(run: Path) -> str:
    h = hashlib.sha256()
    for f in sorted((run / "adapter").glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def item_key(item: dict) -> str:
    return _sha([item["title"], item["content"]])


# --- cache -------------------------------------------------------------------------------


def read_cache(path: Path) -> dict[str, dict]:
    """Records of a cache file by id; a torn last line (killed mid-write) is ignored."""
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                done[rec["id"]] = rec
    return done


def append_cache(path: Path, records: list[dict]) -> None:
    """Append records and fsync, so a kill loses at most the batch being generated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as fh:
        if torn:
            fh.write("\n")  # a line torn by a kill must not swallow the next record
        fh.write("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# --- generation --------------------------------------------------------------------------


def _open_generator(cfg: EvalConfig) -> tuple[Any, str, str | None]:
    """(generator, base model id, adapter hash or None); one-line errors for a missing run."""
    check_inputs(cfg)
    from catalogtune.infer import generate

    kw = {"bf16": cfg.bf16}
    if cfg.run is None:
        return generate.Generator.from_model(cfg.model, **kw), str(cfg.model), None
    run = Path(cfg.run)
    # The base model's name keys the base systems' cache, shared with `--model NAME` runs.
    return generate.Generator.from_run(run, **kw), generate.base_model_of(run), _adapter_hash(run)


def check_inputs(cfg: EvalConfig) -> None:
    """Fail early, with one line naming it, on a missing run, adapter or index."""
    if cfg.run is not None:
        run = Path(cfg.run)
        if not run.is_dir():
            raise CatalogtuneError(f"run folder not found: {run}")
        if not (run / "adapter").is_dir():
            raise CatalogtuneError(f"run {run} has no adapter/ (train it first, or use --model NAME for the base model)")
    from catalogtune.rag.index import is_address

    if cfg.index is not None and not is_address(cfg.index) and not Path(cfg.index).exists():
        raise CatalogtuneError(f"RAG index not found: {cfg.index}")


def _fingerprint(cfg: EvalConfig, gen: Any, model_id: str, adapter: str | None, system: str) -> str:
    probe = gen.prompt("Probe title", context=[{"title": "t", "content": "c"}])  # template changes -> new fp
    return _sha({
        "v": CACHE_VERSION, "model": model_id, "adapter": adapter if system.startswith("finetuned") else None,
        "rag": system.endswith("+rag"), "max_new_tokens": cfg.max_new_tokens, "prompt": _sha(probe),
        "decoding": [cfg.repetition_penalty, cfg.no_repeat_ngram_size]
        + ([] if cfg.penalty_scope == "all" else [cfg.penalty_scope])  # old caches were scope "all"
        + ([cfg.ground_penalty] if cfg.ground_penalty else [])
        + ([f"guidance {cfg.guidance}"] if cfg.guidance else []),
        "bf16": bool(getattr(gen, "bf16", False)),  # autocast changes greedy outputs
    })


def _cache_path(cfg: EvalConfig, gen: Any, model_id: str, adapter: str | None, split: str, system: str) -> Path:
    fp = _fingerprint(cfg, gen, model_id, adapter, system)
    return Path(cfg.out) / "cache" / f"{split}__{system.replace('+', '_')}__{fp}.jsonl"


class Plan:
    """What an evaluation will generate, and its projected time from each system's first batch.

    Printed before anything is generated (generations to do, cached) and after each system's
    first batch (seconds per description there, the time that system will take, the peak
    memory so far); the figures end up in ``report["plan"]``.
    """

    def __init__(self, todo: int, cached: int, systems: int, max_new_tokens: int, log: Callable[[str], None]):
        self.todo, self.cached, self.log = todo, cached, log
        self.done, self.t0 = 0, time.perf_counter()
        self.info: dict[str, Any] = {"generations": todo, "cached": cached, "systems": systems, "probes": []}
        if todo:
            log(f"evaluate plan: {todo:,} descriptions to generate ({cached:,} cached) over {systems} model "
                f"system(s), up to {max_new_tokens} new tokens each")

    def first_batch(self, name: str, n_batch: int, seconds: float, left: int) -> None:
        from catalogtune.core.util import peak_rss_mb

        per = seconds / max(1, n_batch)
        self.info["probes"].append({"cache": name, "s_per_description": round(per, 3), "left": left})
        # the up-front count sees record keys only: a record whose retrieved references changed
        # since it was cached is regenerated too, so never print fewer left than this system has
        rest = max(self.todo - self.done, left)
        self.log(f"evaluate plan: {name}: first {n_batch} in {seconds:.1f} s ({per:.2f} s each) -> about "
                 f"{_minutes(per * left)} for its {left:,}; {rest:,} left in all -> about {_minutes(per * rest)} "
                 f"at this rate; peak memory {peak_rss_mb():,.0f} MB")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


PHASES = ("generate", "likelihood", "metrics", "other")
"""Where an evaluation's wall time goes (``report["plan"]["seconds"]``): generating the answers,
scoring the references' likelihood, the sample metrics (embeddings, claims, bootstrap), the rest
(loading the models, retrieval); writing the reports comes after the count."""


def phases_text(seconds: dict[str, float], total: float) -> str:
    """One line: an evaluation's wall time and each phase's part of it (sets ``seconds["other"]``)."""
    seconds["other"] = max(0.0, total - sum(v for k, v in seconds.items() if k != "other"))
    return f"evaluate: {total:.0f} s = " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())

BUDGET_FILE = "budget.json"
"""What a budgeted evaluation decided (budget, records kept), so that a re-run resumes the same records."""
BUDGET_MARGIN = 0.85
"""Share of the budget left after the probe that the test records may use: scoring, the metric
models and the report take the rest (about 10 % of an evaluation on the shared files)."""


def fit_budget(cfg: EvalConfig, ctx: dict, splits: dict[str, list[dict]], systems: list[str], t0: float,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Cut ``splits["test"]`` to the first records that ``cfg.budget`` fits; return what was decided.

    Each model system first answers the fixed part (the seen products and the probe titles), then
    the first batch of test records, which measures its seconds per record on this machine and
    these prompts (all cached: the full run reuses them); ``BUDGET_MARGIN`` of what is then left
    buys test records for every system at once (the comparisons are paired, so every system
    answers the same ones). At least the probed batch is kept.
    """
    from catalogtune.core.util import budget_seconds

    budget = budget_seconds(cfg.budget)
    test, models = splits["test"], [s for s in systems if s in MODEL_SYSTEMS]
    decided = Path(cfg.out) / BUDGET_FILE
    try:
        prior = read_json(decided)
    except (OSError, ValueError):
        prior = None
    if (isinstance(prior, dict) and prior.get("budget") == cfg.budget and prior.get("test_records") == len(test)
            and prior.get("systems") == models and isinstance(prior.get("kept"), int)):
        # a re-run (a killed evaluation resuming) keeps the first decision: the same records again
        splits["test"] = test[: prior["kept"]]
        log(f"evaluate plan: budget {cfg.budget}: the first {prior['kept']:,} of {len(test):,} test records, "
            f"as decided before ({BUDGET_FILE})")
        return prior
    first = test[: cfg.batch_size]
    for use_adapter in sorted({s.startswith("finetuned") for s in models}):
        # the first call builds the generation copy of the weights (bf16, merged adapter): not the rate
        ctx["gen"].generate([ctx["gen"].prompt(first[0]["title"])], max_new_tokens=2, do_sample=False,
                            use_adapter=use_adapter, batch_size=1, **({"guidance": cfg.guidance} if cfg.guidance else {}))
    rates = {}
    others = sum(len(items) for name, items in splits.items() if name != "test")
    for s in models:
        # the fixed part first (seen products, probe titles: cached like every answer), then the probe
        for name, items in splits.items():
            if name != "test" and items:
                contexts = (retrieve(ctx["index"], items, cfg.k, exclude_self=name == "seen")
                            if s.endswith("+rag") else None)
                run_system(ctx["gen"], _cache_path(cfg, ctx["gen"], ctx["model_id"], ctx["adapter"], name, s),
                           items, contexts, s.startswith("finetuned"), cfg, log, score=name != "probes",
                           seconds=ctx["seconds"])
        contexts = retrieve(ctx["index"], first, cfg.k, exclude_self=False) if s.endswith("+rag") else None
        cache = _cache_path(cfg, ctx["gen"], ctx["model_id"], ctx["adapter"], "test", s)
        t = time.perf_counter()
        _, made = run_system(ctx["gen"], cache, first, contexts, s.startswith("finetuned"), cfg, log,
                             seconds=ctx["seconds"])
        # a probe answered from the cache measured nothing: charge it like the slowest measured one
        rates[s] = (time.perf_counter() - t) / len(first) if made else None
    measured = [r for r in rates.values() if r is not None]
    fallback = max(measured) if measured else 0.0
    per_record = sum(fallback if r is None else r for r in rates.values())
    left = budget - (time.perf_counter() - t0)
    if per_record > 0:
        n = int(left * BUDGET_MARGIN / per_record) + len(first)
    else:  # every answer is cached already: nothing to generate, nothing to cut
        n = len(test)
    n = max(len(first), min(len(test), n))
    info = {"budget": cfg.budget, "budget_s": budget, "s_per_record": {k: None if v is None else round(v, 3)
            for k, v in rates.items()}, "test_records": len(test), "systems": models, "kept": n}
    atomic_write_json(decided, info)
    if n < len(test):
        log(f"evaluate plan: budget {cfg.budget}: {per_record:.2f} s per test record over {len(models)} model "
            f"system(s) -> the first {n:,} of {len(test):,} test records fit (after {others:,} seen and probe "
            f"answers per system); the intervals are for n = {n:,}")
        splits["test"] = test[:n]
    else:
        log(f"evaluate plan: budget {cfg.budget}: all {len(test):,} test records fit ({per_record:.2f} s per "
            f"record over {len(models)} model system(s))")
    return info


def _plan(cfg: EvalConfig, ctx: dict, splits: dict[str, list[dict]], systems: list[str],
          log: Callable[[str], None]) -> Plan:
    """Count the descriptions not in the caches yet (by record id and content)."""
    todo = cached = 0
    models = [s for s in systems if s in MODEL_SYSTEMS]
    for split, items in splits.items():
        for s in models:
            for vcfg in _variants(cfg):
                done = read_cache(_cache_path(vcfg, ctx["gen"], ctx["model_id"], ctx["adapter"], split, s))
                hit = sum(1 for it in items if done.get(it["id"], {}).get("key") == item_key(it))
                todo, cached = todo + len(items) - hit, cached + hit
    return Plan(todo, cached, len(models), cfg.max_new_tokens, log)


def run_system(
    gen: Any, cache: Path, items: list[dict], contexts: dict[str, list[dict]] | None,
    use_adapter: bool, cfg: EvalConfig, log: Callable[[str], None], score: bool = True,
    plan: Plan | None = None, seconds: dict[str, float] | None = None,
) -> tuple[list[dict], int]:
    """Generate and score ``items`` for one system, resuming from ``cache``; (rows, generated).

    ``score=False`` (probe titles, which have no reference) skips the likelihood. ``plan`` gets
    the first batch's timing and counts what is done; ``seconds`` (``PHASES``) gets the wall time
    of generating and of scoring.
    """
    done = read_cache(cache)

    def fresh(it: dict) -> bool:
        rec = done.get(it["id"])
        ctx_ids = [r["id"] for r in contexts[it["id"]]] if contexts is not None else None
        return rec is not None and rec.get("key") == item_key(it) and rec.get("context_ids") == ctx_ids

    todo = [it for it in items if not fresh(it)]
    # a chunk of a few batches per generate call: continuous batching refills the slots that
    # finished rows free with the chunk's waiting prompts; the cache is appended once per chunk
    step = cfg.batch_size * CHUNK_BATCHES
    for start in range(0, len(todo), step):
        t_batch = time.perf_counter()
        batch = todo[start : start + step]
        ctx = [contexts[it["id"]] if contexts is not None else None for it in batch]
        prompts = [gen.prompt(it["title"], context=c) for it, c in zip(batch, ctx)]
        t_gen = time.perf_counter()
        gens = gen.generate(prompts, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                            repetition_penalty=cfg.repetition_penalty,
                            no_repeat_ngram_size=cfg.no_repeat_ngram_size, penalty_scope=cfg.penalty_scope,
                            use_adapter=use_adapter, batch_size=cfg.batch_size,
                            **({"ground_penalty": cfg.ground_penalty} if cfg.ground_penalty else {}),
                            **({"guidance": cfg.guidance} if cfg.guidance else {}))  # negatives: gen.negatives_for
        t_score = time.perf_counter()
        scores = (gen.score(prompts, [it["content"] for it in batch], use_adapter=use_adapter, batch_size=cfg.batch_size)
                  if score else [(None, None)] * len(batch))
        if seconds is not None:
            seconds["generate"] += t_score - t_gen
            seconds["likelihood"] += time.perf_counter() - t_score
        recs = []
        for it, c, g, (nll, ntok) in zip(batch, ctx, gens, scores):
            stopped = g.stopped_at_eos if hasattr(g, "stopped_at_eos") else g.stopped == "eos"
            recs.append({"id": it["id"], "key": item_key(it), "context_ids": [r["id"] for r in c] if c is not None else None,
                         "output": g.text, "new_tokens": int(g.new_tokens), "seconds": float(g.seconds),
                         "stopped": bool(stopped), "nll_sum": None if nll is None else float(nll),
                         "n_tokens": None if ntok is None else int(ntok)})
        append_cache(cache, recs)
        done.update({r["id"]: r for r in recs})
        if plan is not None:
            plan.done += len(batch)
            if start == 0:
                plan.first_batch(" ".join(cache.name.split("__")[:2]), len(batch),  # "SPLIT SYSTEM"
                                 time.perf_counter() - t_batch, len(todo))
        log(f"{cache.name}: {min(start + step, len(todo))}/{len(todo)} generated")
    rows = []
    for it in items:
        rec = dict(done[it["id"]])
        rec.update(title=it["title"], reference=it["content"], bucket=eval_report.title_bucket(it["title"]),
                   category=eval_report.infer_category(it["title"], it["content"]))
        rows.append(rec)
    return rows, len(todo)


def _variants(cfg: EvalConfig) -> list[EvalConfig]:
    """The decodings a model system answers with: the configured one, and with ``rerank`` every
    ``infer.rerank.VARIANTS`` override of it (a variant equal to the configured one shares its cache)."""
    if not cfg.rerank:
        return [cfg]
    from catalogtune.infer import rerank

    return [replace(cfg, **v) if v else cfg for v in rerank.VARIANTS]


def _model_rows(cfg: EvalConfig, ctx: dict, split: str, system: str, items: list[dict],
                contexts: dict[str, list[dict]] | None, log: Callable[[str], None]) -> tuple[list[dict], int]:
    """One model system's rows (generated or cached) and the generations made; with ``rerank``, the
    consensus answer of the variants per item (``variant`` = its index of ``variants``, ``seconds`` = all of them)."""
    gen, variants = ctx["gen"], _variants(cfg)
    runs, generated = [], 0
    for i, vcfg in enumerate(variants):
        cache = _cache_path(vcfg, gen, ctx["model_id"], ctx["adapter"], split, system)
        # the reference's likelihood does not depend on the decoding: scored once, with the first
        rows, n_new = run_system(gen, cache, items, contexts if system.endswith("+rag") else None,
                                 system.startswith("finetuned"), vcfg, log, score=split != "probes" and i == 0,
                                 plan=ctx.get("plan"), seconds=ctx.get("seconds"))
        runs.append(rows)
        generated += n_new
    if len(runs) == 1:
        return runs[0], generated
    from catalogtune.infer import rerank

    picks = rerank.choose([[r["output"] for r in rows] for rows in runs], ctx["embed"])
    chosen = []
    for i, v in enumerate(picks):
        row = dict(runs[v][i])
        row.update(variant=v, variants=len(runs), seconds=sum(rows[i]["seconds"] for rows in runs),
                   nll_sum=runs[0][i]["nll_sum"], n_tokens=runs[0][i]["n_tokens"])
        chosen.append(row)
    return chosen, generated


def embedders(name: str) -> tuple[Callable, Any]:
    """(sentence embed function, token embed function) for cosine and BERTScore."""
    from catalogtune.evaluate import metrics
    from catalogtune.rag.embed import get_embedder

    emb = get_embedder(name)
    if name == "minilm":
        return emb.embed, metrics.minilm_token_embedder()
    return emb.embed, metrics.word_token_embedder(emb.embed)


MEMO_BYTES = 512 * 2**20
"""Most bytes of embeddings one ``memo_texts`` keeps (past it, it starts over)."""


def memo_texts(fn: Callable[[list[str]], Any], max_bytes: int = MEMO_BYTES) -> Callable[[list[str]], Any]:
    """``fn`` (texts -> an array with a row per text, or a list of arrays) computing each distinct
    text once.

    Every system of an evaluation is scored against the same references (and the baselines repeat
    titles and training descriptions): without it MiniLM embedded each reference once per system,
    twice over (sentence vector, BERTScore tokens). A text's embedding does not depend on the
    texts embedded beside it (to float32 rounding), so the metrics stay the same.
    """
    cache: dict[str, Any] = {}
    state: dict[str, Any] = {"bytes": 0, "stack": None}

    def run(texts: list[str]) -> Any:
        if not texts:
            return fn(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        fresh: dict[str, Any] = {}
        if todo:
            got = fn(todo)
            state["stack"] = isinstance(got, np.ndarray)
            fresh = dict(zip(todo, got))
        vals = [fresh[t] if t in fresh else cache[t] for t in texts]
        nbytes = sum(np.asarray(v).nbytes for v in fresh.values())
        if state["bytes"] + nbytes > max_bytes:
            cache.clear()
            state["bytes"] = 0
        cache.update(fresh)
        state["bytes"] += nbytes
        return np.stack(vals) if state["stack"] else vals

    return run


def _log(msg: str) -> None:
    print(msg, flush=True)  # progress shows at once even when stdout is a file


def baseline_rows(system: str, items: list[dict], nearest: dict[str, list[dict]] | None) -> list[dict]:
    """Rows of a baseline system: the title itself, or the nearest training record's description."""
    rows = []
    for it in items:
        if system == "title-copy":
            output, ctx = it["title"], None
        else:
            recs = (nearest or {}).get(it["id"], [])
            output, ctx = (recs[0]["content"], [recs[0]["id"]]) if recs else ("", [])
        rows.append({"id": it["id"], "key": item_key(it), "context_ids": ctx, "output": output, "new_tokens": None,
                     "seconds": 0.0, "stopped": None, "nll_sum": None, "n_tokens": None, "title": it["title"],
                     "reference": it["content"], "bucket": eval_report.title_bucket(it["title"]),
                     "category": eval_report.infer_category(it["title"], it["content"])})
    return rows


def _select_systems(cfg: EvalConfig, adapter: str | None, index: Any) -> tuple[list[str], dict[str, str]]:
    skipped: dict[str, str] = {}
    systems = []
    for s in cfg.systems:
        if s.startswith("finetuned") and adapter is None:
            skipped[s] = "no adapter (base model only: --model)"
        elif (s.endswith("+rag") or s == "retrieval-only") and index is None:
            skipped[s] = "no --index given"
        else:
            systems.append(s)
    return systems, skipped


def _evaluate_split(cfg: EvalConfig, split: str, items: list[dict], systems: list[str], ctx: dict,
                    log: Callable[[str], None]) -> tuple[dict, dict[str, list[dict]], dict | None, int]:
    """Generate, score and summarise one split: (report part, rows by system, contexts, generations made)."""
    index = ctx["index"]
    contexts = retrieve(index, items, cfg.k, exclude_self=split == "seen") if index and items else None
    nearest = retrieve(index, items, 1, exclude_self=True) if index and items and "retrieval-only" in systems else None
    # Claims are checked against the title and the same retrieved records for every system.
    support = {i: [f"{r['title']} {r['content']}" for r in recs] for i, recs in (contexts or {}).items()}
    by_system: dict[str, list[dict]] = {}
    generated = 0
    for s in systems if items else []:
        if s in BASELINES:
            rows = baseline_rows(s, items, nearest)
        else:
            rows, n_new = _model_rows(cfg, ctx, split, s, items, contexts, log)
            generated += n_new
        t = time.perf_counter()
        if split == "probes":
            eval_report.add_probe_metrics(rows, support)
        else:
            eval_report.add_sample_metrics(rows, ctx["embed"], ctx["token_embed"], support)
        ctx["seconds"]["metrics"] += time.perf_counter() - t
        by_system[s] = rows
    if split == "probes":
        part = {"systems": {s: eval_report.summarize_probes(r) for s, r in by_system.items()}, "n_items": len(items)}
        return part, by_system, contexts, generated
    t = time.perf_counter()
    comparisons = compare.all_comparisons(by_system, cfg.bootstrap, cfg.seed) if cfg.bootstrap and len(items) > 1 else []
    ctx["seconds"]["metrics"] += time.perf_counter() - t
    summaries = {s: eval_report.summarize(r) for s, r in by_system.items()}
    part = {"systems": summaries, "breakdowns": eval_report.breakdowns(by_system), "n_items": len(items),
            "collapse": eval_report.collapse_table(summaries, [it["content"] for it in items]),
            "comparisons": comparisons, "verdicts": compare.verdicts(comparisons, len(items))}
    return part, by_system, contexts, generated


def run(cfg: EvalConfig, log: Callable[[str], None] = _log) -> EvalResult:
    """Evaluate the configured systems on the test and seen splits (and the probes) and write the reports."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_inputs(cfg)
    index = None
    if cfg.index is not None:
        from catalogtune.rag.index import Index

        index = Index.open(cfg.index)
    test_items, test_source = load_test(cfg)
    if not test_items:
        raise CatalogtuneError(f"no test records to evaluate in {test_source}")
    splits = {"test": test_items, "seen": load_seen(cfg)}
    if cfg.probes:
        splits["probes"] = [{"id": f"probe-{i}", "title": t, "content": ""} for i, t in enumerate(probes.PROBE_TITLES)]
    from catalogtune.core.locks import folder_lock

    # Two evaluations in one folder would interleave their caches and overwrite each other's reports.
    with folder_lock(out / ".lock", f"the evaluation in {out}", target=out), torch_threads(respect_env=True):
        return _run_locked(cfg, log, t0, out, index, splits, test_source)


def _run_locked(cfg: EvalConfig, log: Callable[[str], None], t0: float, out: Path, index: Any,
                splits: dict[str, list[dict]], test_source: str) -> EvalResult:
    gen, model_id, adapter = _open_generator(cfg)
    systems, skipped = _select_systems(cfg, adapter, index)
    embed, token_embed = (memo_texts(f) for f in embedders(cfg.embedder))
    ctx = {"gen": gen, "model_id": model_id, "adapter": adapter, "index": index, "embed": embed,
           "token_embed": token_embed, "seconds": {k: 0.0 for k in PHASES}}
    fit = fit_budget(cfg, ctx, splits, systems, t0, log) if cfg.budget is not None else None
    ctx["plan"] = plan = _plan(cfg, ctx, splits, systems, log)
    if fit is not None:
        plan.info["budget"] = fit
    report: dict[str, Any] = {"records": {}}
    generated = 0
    for split, items in splits.items():
        part, by_system, contexts, n_new = _evaluate_split(
            cfg, split, items, [s for s in systems if split != "probes" or s in MODEL_SYSTEMS], ctx, log)
        generated += n_new
        report["records"][split] = _records(items, by_system, contexts)
        if split == "test":
            report.update(part)
            report["samples"] = report["records"]["test"][: cfg.samples]
        else:
            report[split] = part
    log(phases_text(ctx["seconds"], time.perf_counter() - t0))
    plan.info["seconds"] = {k: round(v, 1) for k, v in ctx["seconds"].items()}
    report.update(
        test_source=test_source, model=model_id, adapter=adapter, skipped=skipped, plan=plan.info,
        config=config.to_dict(cfg), notes=_notes(cfg, skipped, model_id, test_source),
        subtitle=f"model {model_id}" + (f", run {cfg.run}" if cfg.run else "") + f", {test_source}",
    )
    report = eval_report.clean_json(report)
    atomic_write_json(out / "report.json", report)
    eval_report.write_markdown(out / "report.md", report)
    png = eval_report.plot_metrics(out / "plots" / "metrics.png", report) if report["systems"] else None
    eval_report.write_html(out / "report.html", report, png)
    return EvalResult(out=out, report=report, generated=generated, wall_s=time.perf_counter() - t0)


def _records(items: list[dict], by_system: dict[str, list[dict]], contexts: dict | None) -> list[dict]:
    """Every item with every system's output (report.json keeps them all, so anyone can re-score)."""
    outputs = {s: {r["id"]: r["output"] for r in rows} for s, rows in by_system.items()}
    return [{"id": it["id"], "title": it["title"], "reference": it["content"],
             "outputs": {s: o.get(it["id"], "") for s, o in outputs.items()},
             "references": [{"id": r["id"], "title": r["title"], "score": r["score"]}
                            for r in (contexts or {}).get(it["id"], [])]}
            for it in items]


def _notes(cfg: EvalConfig, skipped: dict[str, str], model_id: str, source: str) -> list[str]:
    notes = [f"Base model {model_id}; greedy decoding with repetition penalty {cfg.repetition_penalty} and no repeated "
             f"{cfg.no_repeat_ngram_size}-grams ({'in the output only' if cfg.penalty_scope == 'output' else 'over prompt and output'}) "
             f"for every system (as ask and the app), at most {cfg.max_new_tokens} new "
             f"tokens; test: {source}."
             + (f" Names and numbers the prompt lacks are lowered by {cfg.ground_penalty} logits mid-sentence "
                "(ground_penalty), for every system." if cfg.ground_penalty else "")
             + (f" Title guidance {cfg.guidance} for every model system: each token's log-probability plus "
                f"{cfg.guidance} x its gain over the same prompt without the title (perplexity stays unguided)."
                if cfg.guidance else "")
             + (f" Reranked: each model system answered with {len(_variants(cfg))} decodings (infer.rerank.VARIANTS) "
                f"and kept the answer with the highest mean {cfg.embedder} cosine to the others (never scored against "
                "the reference or the claim check)." if cfg.rerank else "")]
    notes += [f"System {s} skipped: {why}." for s, why in skipped.items()]
    notes += [
        "Perplexity: exp(total NLL / total tokens) of the reference description (plus end token) after each system's prompt.",
        "ROUGE in 0-1 (F-measure, stemmed); BLEU and chrF in 0-100 (sacrebleu, corpus level).",
        f"Cosine and BERTScore (greedy token matching, no idf/rescaling) use the {cfg.embedder} embedder.",
        f"Unsupported claims: numbers, sizes and mid-sentence capitalised names in the output found neither in the title "
        f"nor in the top-{cfg.k} retrieved records (same records for every system; title only without an index).",
        "Seen products: a seeded sample of the training split; their own record is removed from what RAG retrieves.",
        "Categories are inferred from keywords in title and reference (books, music, movies, clothing, toys, other).",
        "Baselines: title-copy answers with the title; retrieval-only with the description of the nearest training "
        "record (never the product itself). They have no likelihood, so no perplexity.",
        f"Differences carry paired bootstrap 95 % intervals ({cfg.bootstrap} seeded resamples of the items); 'n.s.' "
        "marks an interval that contains 0. chrf_s is the mean sentence chrF.",
        "Collapse: top_opening_share is the share of outputs that open with the most frequent opening 3-gram; "
        "quote_style_share the share that open like a review quote; self_bleu the mean BLEU of each output against "
        "the others (high = the outputs repeat each other). The reference row gives the real descriptions' figures.",
        "Invented attributions: quoted sources, publications or people named in an output that are in neither the "
        "title nor the retrieved records (share of outputs with at least one).",
    ]
    return notes


def main(argv: list[str]) -> int:
    """`catalogtune evaluate --data DIR --run RUN_DIR [--index DIR] [--test FILE] --out EVAL_DIR [--limit N]`."""
    p = argparse.ArgumentParser(prog="catalogtune evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="YAML preset of EvalConfig keys")
    config.add_arguments(p, EvalConfig)
    ns = p.parse_args(argv)
    if ns.out is None and ns.config is None:
        p.error("--out is required")
    cfg = config.from_namespace(EvalConfig, ns, ns.config)
    res = run(cfg)
    for split, part in (("test", res.report), ("seen", res.report.get("seen", {}))):
        for s, m in part.get("systems", {}).items():
            shown = " ".join(f"{k}={eval_report.fmt(m.get(k))}" for k in ("n", *eval_report.MAIN_METRICS))
            print(f"{split:<5} {s:<14} {shown}")
    print(f"wrote {res.out / 'report.html'} ({res.generated} new generations, {res.wall_s:.1f}s)")
    return 0
