"""`catalogtune evaluate`: base vs fine-tuned, with and without RAG, on unseen and seen products.

For each split (the test split or ``--test FILE``; a sample of the training split as "seen")
and each system (``base``, ``finetuned``, ``base+rag``, ``finetuned+rag``) the model generates
a description greedily and scores the reference description (loss, perplexity). Generations
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from catalogtune.core import config

from catalogtune.evaluate import report as eval_report
from catalogtune.core.util import CatalogtuneError, atomic_write_json

SYSTEMS = ("base", "finetuned", "base+rag", "finetuned+rag")
CACHE_VERSION = 1
"""Bumped when the cached record layout changes."""


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
    limit: int = 50
    """Test records evaluated (the first N)."""
    seen_limit: int = 20
    """Training records sampled as seen products (0 = skip)."""
    max_new_tokens: int = 160
    """Most tokens generated per description."""
    repetition_penalty: float = 1.2
    """Greedy decoding's repetition penalty (1.0 = off), the same for every system."""
    no_repeat_ngram_size: int = 3
    """Forbid repeating any n-gram of this size (0 = off), the same for every system: greedy
    decoding of small models otherwise loops ("bespoke, bespoke, ...")."""
    batch_size: int = 16
    """Prompts per generation batch (also the checkpoint granularity)."""
    k: int = 3
    """Records retrieved per title for the +rag systems and the claim check."""
    embedder: str = "minilm"
    """Embedder for cosine similarity and BERTScore: minilm, or hash (fast fake for tests)."""
    seed: int = 0
    """Seed of the seen-products sample."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """Systems to compare (subset of base, finetuned, base+rag, finetuned+rag)."""
    samples: int = 12
    """Rows in the samples table of report.html."""
    bf16: bool | None = None
    """bf16 autocast while generating (default: the generator decides; --no-bf16 forces fp32)."""

    def __post_init__(self) -> None:
        if self.data is None and self.test is None:
            raise ValueError("give --data (prepared folder) or --test FILE")
        if self.run is not None and self.model is not None:
            raise ValueError("give --run or --model, not both (a run names its base model)")
        if self.run is None and self.model is None:
            raise ValueError("give --run RUN_DIR (or --model NAME to evaluate the base model only)")
        for name in ("limit", "max_new_tokens", "batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.seen_limit < 0 or self.samples < 0:
            raise ValueError("seen_limit and samples may not be negative")
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

    return read_split(cfg.data, "test", limit=cfg.limit), f"test split of {cfg.data}"


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


def _item_key(item: dict) -> str:
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
    if cfg.index is not None and not Path(cfg.index).exists():
        raise CatalogtuneError(f"RAG index not found: {cfg.index}")


def _fingerprint(cfg: EvalConfig, gen: Any, model_id: str, adapter: str | None, system: str) -> str:
    probe = gen.prompt("Probe title", context=[{"title": "t", "content": "c"}])  # template changes -> new fp
    return _sha({
        "v": CACHE_VERSION, "model": model_id, "adapter": adapter if system.startswith("finetuned") else None,
        "rag": system.endswith("+rag"), "max_new_tokens": cfg.max_new_tokens, "prompt": _sha(probe),
        "decoding": [cfg.repetition_penalty, cfg.no_repeat_ngram_size],
        "bf16": bool(getattr(gen, "bf16", False)),  # autocast changes greedy outputs
    })


def run_system(
    gen: Any, cache: Path, items: list[dict], contexts: dict[str, list[dict]] | None,
    use_adapter: bool, cfg: EvalConfig, log: Callable[[str], None],
) -> tuple[list[dict], int]:
    """Generate and score ``items`` for one system, resuming from ``cache``; (rows, generated)."""
    done = read_cache(cache)

    def fresh(it: dict) -> bool:
        rec = done.get(it["id"])
        ctx_ids = [r["id"] for r in contexts[it["id"]]] if contexts is not None else None
        return rec is not None and rec.get("key") == _item_key(it) and rec.get("context_ids") == ctx_ids

    todo = [it for it in items if not fresh(it)]
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start : start + cfg.batch_size]
        ctx = [contexts[it["id"]] if contexts is not None else None for it in batch]
        prompts = [gen.prompt(it["title"], context=c) for it, c in zip(batch, ctx)]
        gens = gen.generate(prompts, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                            repetition_penalty=cfg.repetition_penalty,
                            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                            use_adapter=use_adapter, batch_size=cfg.batch_size)
        scores = gen.score(prompts, [it["content"] for it in batch], use_adapter=use_adapter, batch_size=cfg.batch_size)
        recs = []
        for it, c, g, (nll, ntok) in zip(batch, ctx, gens, scores):
            stopped = g.stopped_at_eos if hasattr(g, "stopped_at_eos") else g.stopped == "eos"
            recs.append({"id": it["id"], "key": _item_key(it), "context_ids": [r["id"] for r in c] if c is not None else None,
                         "output": g.text, "new_tokens": int(g.new_tokens), "seconds": float(g.seconds),
                         "stopped": bool(stopped), "nll_sum": float(nll), "n_tokens": int(ntok)})
        append_cache(cache, recs)
        done.update({r["id"]: r for r in recs})
        log(f"{cache.name}: {min(start + cfg.batch_size, len(todo))}/{len(todo)} generated")
    rows = []
    for it in items:
        rec = dict(done[it["id"]])
        rec.update(title=it["title"], reference=it["content"], bucket=eval_report.title_bucket(it["title"]),
                   category=eval_report.infer_category(it["title"], it["content"]))
        rows.append(rec)
    return rows, len(todo)


def _embedders(name: str) -> tuple[Callable, Any]:
    """(sentence embed function, token embed function) for cosine and BERTScore."""
    from catalogtune.evaluate import metrics
    from catalogtune.rag.embed import get_embedder

    emb = get_embedder(name)
    if name == "minilm":
        return emb.embed, metrics.minilm_token_embedder()
    return emb.embed, metrics.word_token_embedder(emb.embed)


def _log(msg: str) -> None:
    print(msg, flush=True)  # progress shows at once even when stdout is a file


def run(cfg: EvalConfig, log: Callable[[str], None] = _log) -> EvalResult:
    """Evaluate the configured systems on the test and seen splits and write the reports."""
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
    gen, model_id, adapter = _open_generator(cfg)
    skipped: dict[str, str] = {}
    systems = []
    for s in cfg.systems:
        if s.startswith("finetuned") and adapter is None:
            skipped[s] = "no adapter (base model only: --model)"
        elif s.endswith("+rag") and index is None:
            skipped[s] = "no --index given"
        else:
            systems.append(s)
    embed, token_embed = _embedders(cfg.embedder)
    report: dict[str, Any] = {}
    generated = 0
    for split, items in splits.items():
        contexts = retrieve(index, items, cfg.k, exclude_self=split == "seen") if index and items else None
        # Claims are checked against the title and the same retrieved records for every system.
        support = {i: [f"{r['title']} {r['content']}" for r in recs] for i, recs in (contexts or {}).items()}
        by_system: dict[str, list[dict]] = {}
        for s in systems if items else []:
            cache = out / "cache" / f"{split}__{s.replace('+', '_')}__{_fingerprint(cfg, gen, model_id, adapter, s)}.jsonl"
            rows, n_new = run_system(gen, cache, items, contexts if s.endswith("+rag") else None,
                                     s.startswith("finetuned"), cfg, log)
            generated += n_new
            eval_report.add_sample_metrics(rows, embed, token_embed, support)
            by_system[s] = rows
        part = {"systems": {s: eval_report.summarize(r) for s, r in by_system.items()},
                "breakdowns": eval_report.breakdowns(by_system), "n_items": len(items)}
        if split == "test":
            report.update(part)
            report["samples"] = _samples(items[: cfg.samples], by_system, contexts)
        else:
            report["seen"] = part
    report.update(
        test_source=test_source, model=model_id, adapter=adapter, skipped=skipped,
        config=config.to_dict(cfg), notes=_notes(cfg, skipped, model_id, test_source),
        subtitle=f"model {model_id}" + (f", run {cfg.run}" if cfg.run else "") + f", {test_source}",
    )
    report = eval_report.clean_json(report)
    atomic_write_json(out / "report.json", report)
    eval_report.write_markdown(out / "report.md", report)
    png = eval_report.plot_metrics(out / "plots" / "metrics.png", report) if report["systems"] else None
    eval_report.write_html(out / "report.html", report, png)
    return EvalResult(out=out, report=report, generated=generated, wall_s=time.perf_counter() - t0)


def _samples(items: list[dict], by_system: dict[str, list[dict]], contexts: dict | None) -> list[dict]:
    outputs = {s: {r["id"]: r["output"] for r in rows} for s, rows in by_system.items()}
    return [{"id": it["id"], "title": it["title"], "reference": it["content"],
             "outputs": {s: o.get(it["id"], "") for s, o in outputs.items()},
             "references": [{"title": r["title"], "score": r["score"]} for r in (contexts or {}).get(it["id"], [])]}
            for it in items]


def _notes(cfg: EvalConfig, skipped: dict[str, str], model_id: str, source: str) -> list[str]:
    notes = [f"Base model {model_id}; greedy decoding, at most {cfg.max_new_tokens} new tokens; test: {source}."]
    notes += [f"System {s} skipped: {why}." for s, why in skipped.items()]
    notes += [
        "Perplexity: exp(total NLL / total tokens) of the reference description (plus end token) after each system's prompt.",
        "ROUGE in 0-1 (F-measure, stemmed); BLEU and chrF in 0-100 (sacrebleu, corpus level).",
        f"Cosine and BERTScore (greedy token matching, no idf/rescaling) use the {cfg.embedder} embedder.",
        f"Unsupported claims: numbers, sizes and mid-sentence capitalised names in the output found neither in the title "
        f"nor in the top-{cfg.k} retrieved records (same records for every system; title only without an index).",
        "Seen products: a seeded sample of the training split; their own record is removed from what RAG retrieves.",
        "Categories are inferred from keywords in title and reference (books, music, movies, clothing, toys, other).",
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
