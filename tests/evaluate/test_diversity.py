"""Corpus-level collapse measures on invented outputs: a collapsed set against a varied one."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu

from catalogtune.core.util import CatalogtuneError
from catalogtune.evaluate import diversity, metrics

# What the collapsed model wrote for a mug, a tutu, a drill...: the same invented press praise.
COLLAPSED = [
    f"'A wonderful book' Sunday Times 'Simply {adj}' Daily Post"
    for adj in ("gripping", "superb", "moving", "magical", "brilliant", "charming", "stunning", "perfect")
]
VARIED = [
    "A 350 ml stoneware mug with a speckled blue glaze, dishwasher safe.",
    "Three layers of soft tulle make this neon pink tutu for girls aged 2 to 8.",
    "Cordless drill with two batteries, a charger and a 13 mm keyless chuck.",
    "Hardcover atlas of the world with 120 maps and an index of places.",
    "Pack of 12 HB pencils, pre-sharpened, with erasers on the ends.",
    "Waterproof hiking boots in brown leather with a rubber sole.",
    "Board book for toddlers about a cat who loses her blanket.",
    "Stainless steel water bottle that keeps drinks cold for 24 hours.",
]


def test_opening_ngram_ignores_case_and_punctuation():
    assert diversity.opening_ngram("'A Wonderful, book!' Sunday Times") == ("a", "wonderful", "book")
    assert diversity.opening_ngram("Mug.", n=3) == ("mug",)
    assert diversity.opening_ngram("  ...  ") is None
    assert diversity.opening_ngram("One two three four", n=1) == ("one",)
    with pytest.raises(CatalogtuneError):
        diversity.opening_ngram("x", n=0)


def test_collapsed_outputs_share_one_opening_and_the_quote_style():
    share, opening = diversity.top_opening_share(COLLAPSED)
    assert share == 1.0 and opening == "a wonderful book"
    assert diversity.quote_style_share(COLLAPSED) == 1.0


def test_varied_outputs_have_low_shares():
    share, _ = diversity.top_opening_share(VARIED)
    assert share <= 0.25
    assert diversity.quote_style_share(VARIED) == 0.0


def test_top_opening_share_counts_short_and_empty_texts():
    # shorter than n words: counted under the whole text; no word at all: in the denominator only
    assert diversity.top_opening_share(["Mug", "mug!", "Blue cup here now", ""]) == (0.5, "mug")
    assert diversity.top_opening_share([]) == (0.0, "")
    assert diversity.top_opening_share(["", "  "]) == (0.0, "")
    assert diversity.quote_style_share([]) == 0.0


def test_corpus_distinct_counts_repeats_across_outputs():
    same = ["red blue green"] * 4
    assert diversity.corpus_distinct_n(same, 1) == pytest.approx(3 / 12)
    assert metrics.distinct_n(same, 1) == 1.0  # the per-text measure cannot see it
    assert diversity.corpus_distinct_n(["a b", "c d"], 2) == 1.0  # no n-gram across two texts
    assert diversity.corpus_distinct_n(["a", "b"], 2) == 0.0
    assert diversity.corpus_distinct_n([], 1) == 0.0
    assert diversity.corpus_distinct_n(COLLAPSED, 2) < diversity.corpus_distinct_n(VARIED, 2)
    with pytest.raises(CatalogtuneError):
        diversity.corpus_distinct_n(VARIED, 0)


def test_self_bleu_equals_sacrebleu_sentence_bleu_against_the_others():
    texts = VARIED + ["A mug with a blue glaze.", "", "x", VARIED[0]]
    expected = np.mean([sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)])
    assert diversity.self_bleu(texts) == pytest.approx(expected, abs=1e-9)


def test_self_bleu_high_for_collapse_low_for_variety():
    assert diversity.self_bleu(["same words in every output here"] * 5) == pytest.approx(100.0)
    assert diversity.self_bleu(COLLAPSED) > 50 > 10 > diversity.self_bleu(VARIED)
    assert diversity.self_bleu(["only one"]) == 0.0
    assert diversity.self_bleu([]) == 0.0


def test_self_bleu_sampling_is_seeded():
    texts = VARIED * 3 + COLLAPSED
    a = diversity.self_bleu(texts, max_texts=5, seed=1)
    assert a == diversity.self_bleu(texts, max_texts=5, seed=1)
    assert {diversity.self_bleu(texts, max_texts=5, seed=s) for s in range(6)} != {a}
    # every text as a hypothesis when max_texts covers them all
    assert diversity.self_bleu(texts, max_texts=len(texts)) == diversity.self_bleu(texts, max_texts=10_000)


def test_invented_attributions_checks_title_and_support():
    output = "'A joy' Daily Post 'Superb and moving' Morning Gazette"
    assert diversity.invented_attributions(output, "Blue Mug", []) == (2, 2)
    # a source the retrieved text names is not invented (case-insensitive word match)
    assert diversity.invented_attributions(output, "Blue Mug", ["Reviewed in the DAILY POST last May."]) == (2, 1)
    assert diversity.invented_attributions(output, "Morning Gazette Annual", ["daily post"]) == (2, 0)
    # every word of the name must be there: "Morning" alone does not support "Morning Gazette"
    assert diversity.invented_attributions(output, "Morning Mug", ["Daily Post"]) == (2, 1)
    assert diversity.invented_attributions("Praise for Jane Doe: 'Superb.'", "Jane Doe: A Memoir") == (1, 0)
    assert diversity.invented_attributions(VARIED[0], "Blue Mug", []) == (0, 0)


def test_collapse_summary_keys_and_values():
    got = diversity.collapse_summary(COLLAPSED)
    assert set(got) == {"top_opening_share", "top_opening", "quote_style_share", "corpus_distinct_1",
                        "corpus_distinct_2", "self_bleu"}
    assert got["top_opening_share"] == 1.0 and got["quote_style_share"] == 1.0
    assert got["top_opening"] == "a wonderful book"
    varied = diversity.collapse_summary(VARIED)
    assert varied["corpus_distinct_1"] > got["corpus_distinct_1"]
    assert varied["self_bleu"] < got["self_bleu"]
    empty = diversity.collapse_summary([])
    assert empty["top_opening_share"] == 0.0 and empty["self_bleu"] == 0.0
