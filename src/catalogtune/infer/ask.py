"""`catalogtune ask TITLE`: one description from the base or fine-tuned model, with its references.

The logic is ``ask(title, generator, index=...)`` (testable with a fake index); ``run(cfg)``
loads the generator and the index, and ``main`` prints the answer, or with ``--json``::

    {"output": str, "references": [{"id", "title", "score"}], ...}

(``output`` and ``references`` are what outside checks read: keep those names.)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.core.prompt import clean_title
from catalogtune.core.util import CatalogtuneError
from catalogtune.core.decoding import DECODING

MAX_K = 20
"""Most references one question may show (and put in a RAG prompt)."""


@dataclass
class AskConfig:
    """Options of `catalogtune ask`."""

    title: str = ""
    """The product title (or question) to describe."""
    run: Path | None = None
    """Training run folder (config.yaml + adapter/); needed for the fine-tuned model."""
    model: str | None = None
    """Base model name or path (overrides the run's base; alone, it runs the base model)."""
    index: Path | None = None
    """RAG index folder, or a Chroma server's http://HOST:PORT[/COLLECTION] (`chroma run --path
    INDEX_DIR`): its top-k records are shown as references."""
    base: bool = False
    """Answer with the base model (the adapter switched off)."""
    rag: bool = False
    """Put the retrieved records in the prompt (needs --index)."""
    k: int = 5
    """How many training records to retrieve."""
    max_new_tokens: int = DECODING.max_new_tokens
    """Most tokens to generate (hard-capped by the generator)."""
    json: bool = False
    """Print one JSON object instead of text."""

    def __post_init__(self) -> None:
        if self.run is None and self.model is None:
            raise ValueError("give --run RUN_DIR (fine-tuned) or --model NAME --base (base model)")
        if isinstance(self.k, bool) or not 1 <= int(self.k) <= MAX_K:
            raise ValueError(f"k must be from 1 to {MAX_K}")
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.rag and self.index is None:
            raise ValueError("--rag needs --index INDEX_DIR")


@dataclass
class AskResult:
    """What `ask` produced."""

    answer: dict[str, Any]
    """The JSON-ready answer (output, references, system, ...)."""
    config: AskConfig = field(repr=False)
    """The options used."""


def ask(
    title: str,
    generator: Any,
    index: Any = None,
    base: bool = False,
    rag: bool = False,
    k: int = 5,
    max_new_tokens: int = DECODING.max_new_tokens,
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Answer one title: references from ``index`` (if any), then one generation.

    Decoding is ``DECODING`` (the same as ``evaluate`` and the app) unless ``gen_kwargs`` override it.

    ``index`` is anything with ``query([text], k) -> [[{"id","title","content","score"}]]``.
    Returns ``{"output", "references": [{"id","title","score"}], "system", "stopped",
    "new_tokens", "seconds", "prompt"}``.
    """
    title = clean_title(title)  # one-line error for empty/non-text; control chars and length bounded
    if rag and index is None:
        raise CatalogtuneError("RAG needs an index (--index INDEX_DIR)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise CatalogtuneError(f"k must be an integer from 1 to {MAX_K}")
    records: list[dict] = []
    if index is not None:
        (records,) = index.query([title], k)
    use_adapter = not base and bool(getattr(generator, "has_adapter", True))
    prompt = generator.prompt(title, context=records if rag else None)
    (gen,) = generator.generate([prompt], use_adapter=use_adapter,
                                **DECODING.kwargs(max_new_tokens=max_new_tokens, **gen_kwargs))
    system = ("finetuned" if use_adapter else "base") + ("+rag" if rag else "")
    return {
        "output": gen.text,
        "references": [_reference(r) for r in records],
        "system": system,
        "stopped": gen.stopped,
        "new_tokens": int(gen.new_tokens),
        "seconds": round(float(gen.seconds), 3),
        "prompt": prompt,
    }


def _reference(rec: dict) -> dict[str, Any]:
    return {"id": str(rec.get("id", "")), "title": str(rec.get("title", "")), "score": float(rec.get("score", 0.0))}


def open_index(index_dir: Path | str) -> Any:
    """Open a RAG index (a folder or a Chroma server address), with a one-line error naming a missing one."""
    from catalogtune.rag.index import Index, is_address

    if not is_address(index_dir) and not Path(index_dir).exists():
        raise CatalogtuneError(f"RAG index not found: {index_dir}")

    return Index.open(index_dir)


def open_generator(cfg: AskConfig) -> Any:
    """The generator the options ask for (a run's base + adapter, or a base model alone)."""
    from catalogtune.infer.generate import Generator

    if cfg.run is not None:
        if not Path(cfg.run).is_dir():
            raise CatalogtuneError(f"run folder not found: {cfg.run}")
        return Generator.from_run(cfg.run, model=cfg.model)
    return Generator.from_model(cfg.model)  # type: ignore[arg-type]


def run(cfg: AskConfig) -> AskResult:
    """Load the model (and index), answer ``cfg.title``."""
    clean_title(cfg.title)  # fail before loading anything
    index = open_index(cfg.index) if cfg.index is not None else None
    gen = open_generator(cfg)
    answer = ask(cfg.title, gen, index=index, base=cfg.base, rag=cfg.rag, k=int(cfg.k),
                 max_new_tokens=int(cfg.max_new_tokens))
    return AskResult(answer=answer, config=cfg)


def format_text(answer: dict[str, Any]) -> str:
    """The answer as text for a terminal."""
    lines = [answer["output"] or "(empty output)", ""]
    lines.append(f"[{answer['system']}, {answer['new_tokens']} tokens, stop: {answer['stopped']}, "
                 f"{answer['seconds']:.1f}s]")
    if answer["references"]:
        lines += ["", "Training records behind it (cosine similarity):"]
        lines += [f"  {r['score']:.3f}  {r['id']}  {r['title']}" for r in answer["references"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`catalogtune ask TITLE --run RUN_DIR [--index DIR] [--base] [--rag] [--k 5] [--json]`."""
    p = argparse.ArgumentParser(prog="catalogtune ask", description="Describe a product title, with references.")
    p.add_argument("title", help="the product title or question")
    config.add_arguments(p, AskConfig, skip=("title",))
    ns = p.parse_args(argv)
    cfg = config.from_namespace(AskConfig, ns)
    res = run(cfg)
    if cfg.json:
        print(json.dumps(res.answer, ensure_ascii=False))
    else:
        print(format_text(res.answer))
    return 0
