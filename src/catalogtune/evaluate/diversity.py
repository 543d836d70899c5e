"""Corpus-level collapse and diversity of generated descriptions (pure functions, no model).

A collapsed model answers every product the same way (invented press quotes such as "'A
wonderful book' Sunday Times", even for a mug). Per-text metrics cannot see that: each output is
fluent and ``metrics.distinct_n`` is high inside each one. These measure across outputs: how many
open with the same words or like a review quote, how many n-grams are shared between outputs,
how alike the outputs are to each other (self-BLEU), and how many quoted sources are invented.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Sequence

import numpy as np

from catalogtune.core.util import CatalogtuneError, require
from catalogtune.data import kinds
from catalogtune.evaluate.metrics import _words  # the same tokenisation as distinct_n


def opening_ngram(text: str, n: int = 3) -> tuple[str, ...] | None:
    """The first ``n`` words of ``text``, lower-cased, punctuation ignored (fewer for a shorter text).

    None when the text has no word at all.
    """
    if n < 1:
        raise CatalogtuneError("opening_ngram needs n >= 1")
    words = _words(text)
    return tuple(words[:n]) if words else None


def top_opening_share(texts: Sequence[str], n: int = 3) -> tuple[float, str]:
    """(share of texts that open with the most frequent opening n-gram, that n-gram joined by spaces).

    A text shorter than ``n`` words counts under its whole text; a text with no word counts in the
    denominator but opens with nothing. (0.0, "") for no texts or no words at all; ties go to the
    opening seen first.
    """
    counts = Counter(g for g in (opening_ngram(t, n) for t in texts) if g is not None)
    if not counts:
        return 0.0, ""
    gram, count = counts.most_common(1)[0]
    return count / len(texts), " ".join(gram)


def quote_style_share(texts: Sequence[str]) -> float:
    """Share of texts that open like a review quote (``kinds.is_quote_style``); 0.0 for no texts."""
    return sum(kinds.is_quote_style(t) for t in texts) / len(texts) if texts else 0.0


def corpus_distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all texts / all n-grams of all texts (0.0 when there is none).

    Unlike ``metrics.distinct_n`` (a mean inside each text), an n-gram repeated across outputs
    counts once here, so outputs that all say the same thing score low even if each is varied.
    N-grams do not span two texts.
    """
    if n < 1:
        raise CatalogtuneError("corpus_distinct_n needs n >= 1")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        w = _words(text)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_texts: int = 200, seed: int = 0) -> float:
    """Mean sentence BLEU (sacrebleu, 0-100) of each text against all the other texts as references.

    At most ``max_texts`` hypotheses are scored, drawn without replacement by a numpy Generator
    seeded with ``seed``; the references are always all the other texts. The scores equal
    ``sacrebleu.sentence_bleu(text, others)`` (13a tokens, exp smoothing, effective order), but
    the references' n-grams are counted once instead of once per hypothesis: 200 hypotheses
    against 500 references take well under a second instead of most of a minute. 0.0 for fewer
    than 2 texts.
    """
    if len(texts) < 2:
        return 0.0
    sacrebleu = require("sacrebleu", extra="eval")
    bleu = sacrebleu.BLEU(effective_order=True)  # sentence_bleu's defaults
    order, ngrams = bleu.max_ngram_order, sacrebleu.metrics.helpers.extract_all_word_ngrams
    stats = [ngrams(bleu.tokenizer((t or "").rstrip()), 1, order) for t in texts]
    # the two largest counts of each n-gram over all texts, and which text holds the largest: the
    # clipping count "over all references but text i" is then a lookup
    best: dict[tuple[str, ...], list[int]] = {}
    for i, (grams, _) in enumerate(stats):
        for g, c in grams.items():
            b = best.setdefault(g, [0, -1, 0])  # [max, who, second]
            if c > b[0]:
                b[:] = [c, i, b[0]]
            elif c > b[2]:
                b[2] = c
    lens = sorted(length for _, length in stats)
    n = len(texts)
    picks = range(n) if n <= max_texts else sorted(np.random.default_rng(seed).choice(n, max_texts, replace=False))
    scores = []
    for i in picks:
        grams, hyp_len = stats[i]
        correct, total = [0] * order, [0] * order
        for g, c in grams.items():
            b = best[g]
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, b[2] if b[1] == i else b[0])
        ref_len = _closest_len(hyp_len, lens, own=hyp_len)
        scores.append(bleu.compute_bleu(correct, total, hyp_len, ref_len, smooth_method=bleu.smooth_method,
                                        smooth_value=bleu.smooth_value, effective_order=True).score)
    return float(np.mean(scores))


def _closest_len(hyp_len: int, lens: list[int], own: int) -> int:
    """The reference length BLEU uses (closest to ``hyp_len``, the shorter on a tie) among the
    sorted ``lens`` with one copy of ``own`` (the hypothesis itself) left out."""
    others = lens.copy()
    del others[bisect.bisect_left(others, own)]
    j = bisect.bisect_left(others, hyp_len)
    near = others[max(0, j - 1):j + 1]
    return min(near, key=lambda r: (abs(hyp_len - r), r))


def invented_attributions(output: str, title: str, support_texts: Sequence[str] = ()) -> tuple[int, int]:
    """(sources named in ``output``, those found in neither the title nor any support text).

    Sources are ``kinds.attributions`` ("Sunday Times", "Praise for Jane Doe" gives "Jane Doe");
    one is supported when every one of its words is a word of the title or of a support text
    (case-insensitive, as ``metrics.unsupported_claims`` does for names).
    """
    support = set(_words(title or ""))
    for text in support_texts:
        support.update(_words(text or ""))
    names = kinds.attributions(output or "")
    invented = sum(1 for name in names if not all(w in support for w in _words(name)))
    return len(names), invented


def collapse_summary(texts: Sequence[str]) -> dict[str, float | str]:
    """The collapse measures of a set of outputs in one dict.

    Keys: ``top_opening_share``, ``top_opening`` (its 3-gram), ``quote_style_share``,
    ``corpus_distinct_1``, ``corpus_distinct_2``, ``self_bleu``.
    """
    share, opening = top_opening_share(texts)
    return {
        "top_opening_share": share,
        "top_opening": opening,
        "quote_style_share": quote_style_share(texts),
        "corpus_distinct_1": corpus_distinct_n(texts, 1),
        "corpus_distinct_2": corpus_distinct_n(texts, 2),
        "self_bleu": self_bleu(texts),
    }
