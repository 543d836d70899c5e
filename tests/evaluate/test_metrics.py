"""Metrics on hand-made cases whose values are known (identical, disjoint, partial overlap)."""

import math

import numpy as np
import pytest

from catalogtune.evaluate import report as eval_report

from catalogtune.evaluate import metrics
from catalogtune.rag.embed import HashEmbedder
from catalogtune.core.util import CatalogtuneError

REFS = ["a soft cotton shirt for summer days", "the complete first season on dvd"]


def test_identical_texts_score_perfectly():
    assert metrics.rouge(REFS, REFS) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rouge_l": 1.0})
    assert metrics.bleu(REFS, REFS) == pytest.approx(100.0)
    assert metrics.chrf(REFS, REFS) == pytest.approx(100.0)
    assert metrics.length_ratio(REFS, REFS) == 1.0


def test_disjoint_texts_score_zero():
    hyps = ["zebra quantum", "xylophone jukebox"]
    assert metrics.rouge(REFS, hyps) == {"rouge1": 0.0, "rouge2": 0.0, "rouge_l": 0.0}
    assert metrics.bleu(REFS, hyps) == pytest.approx(0.0, abs=1e-6)
    assert metrics.chrf(REFS, hyps) < 10.0


def test_partial_overlap_rouge1_is_the_f_measure():
    # 2 of 4 output words match 2 of 4 reference words: P = R = F = 0.5
    got = metrics.rouge(["red blue green pink"], ["red blue cat dog"])
    assert got["rouge1"] == pytest.approx(0.5)
    assert got["rouge2"] == pytest.approx(1 / 3)  # 1 shared bigram of 3 each


def test_mismatched_lengths_are_a_one_line_error():
    with pytest.raises(CatalogtuneError, match="2 references but 1 outputs"):
        metrics.rouge(REFS, ["x"])


def test_distinct_n_detects_repetition():
    assert metrics.distinct_n(["one two three four"], 1) == 1.0
    assert metrics.distinct_n(["buy buy buy buy"], 1) == 0.25
    assert metrics.distinct_n(["a b a b a b"], 2) == pytest.approx(2 / 5)
    # empty texts are left out, not counted as perfect or zero
    assert metrics.distinct_n(["", "x y"], 1) == 1.0
    assert metrics.distinct_n(["", ""], 2) == 0.0


def test_length_ratio_and_empty_rate():
    assert metrics.length_ratio(["a b c d"], ["a b"]) == 0.5
    assert metrics.empty_rate(["text", "  ", "", "..."]) == 0.75
    assert metrics.empty_rate([]) == 0.0


def test_unsupported_claims_numbers_sizes_names():
    title = 'Nordic Ware 12" Pizza Pan, 3-Pack, Size XL'
    supported = "This set by Nordic Ware has 3 pans of 12 inch, in XL."
    n, bad = metrics.unsupported_claims(supported, title)
    assert n >= 4 and bad == 0
    invented = "This set by Calphalon has 5 pans of 14 inch, in XXL."
    n, bad = metrics.unsupported_claims(invented, title)
    assert (n, bad) == (4, 4)
    # the retrieved records count as support too, case-insensitively
    n, bad = metrics.unsupported_claims(invented, title, ["calphalon 5 pans, 14 inches, xxl"])
    assert (n, bad) == (4, 0)


def test_capitalised_first_word_is_not_a_claim():
    assert metrics.unsupported_claims("Great pan. Works well! Easy to clean.", "pan") == (0, 0)
    assert metrics.extract_claims("A novel by John Smith.") == [("name", "John Smith")]
    assert metrics.extract_claims("It holds 2.5 oz and 1,000 pieces.") == [("number", "2.5"), ("number", "1000")]


def test_cosine_identical_orthogonal_and_zero():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert metrics.cosine(a, b) == pytest.approx([1.0, 0.0, 0.0])
    assert metrics.cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    with pytest.raises(CatalogtuneError):
        metrics.cosine(a, b[:2])


def test_bertscore_with_fake_token_embeddings():
    emb = HashEmbedder(dim=256)
    tok = metrics.word_token_embedder(emb.embed)
    same = metrics.bertscore(REFS, REFS, token_embed=tok)
    assert same["f1"] == pytest.approx(1.0, abs=1e-5)
    # one-hot "embeddings" per word: disjoint vocabularies have cosine 0 everywhere
    vocab: dict[str, int] = {}

    def onehot(texts):
        out = []
        for t in texts:
            ids = [vocab.setdefault(w, len(vocab)) for w in t.split()]
            m = np.zeros((len(ids), 64))
            m[np.arange(len(ids)), ids] = 1.0
            out.append(m)
        return out

    assert metrics.bertscore(["red blue"], ["cat dog"], token_embed=onehot)["f1"] == 0.0
    # half the output tokens match: precision 0.5, recall 1 (every reference token is found)
    got = metrics.bertscore(["red blue"], ["red blue cat dog"], token_embed=onehot)
    assert (got["precision"], got["recall"]) == pytest.approx((0.5, 1.0))
    assert got["f1"] == pytest.approx(2 * 0.5 / 1.5)
    assert metrics.bertscore(["red"], [""], token_embed=onehot)["f1"] == 0.0


def test_perplexity_is_corpus_level():
    assert metrics.perplexity(0.0, 10) == 1.0
    assert metrics.perplexity([2.0, 4.0], [1, 2]) == pytest.approx(math.exp(2.0))
    assert metrics.perplexity(math.log(512) * 7, 7) == pytest.approx(512)
    assert math.isnan(metrics.perplexity(0.0, 0))
    assert metrics.perplexity(1e6, 1) == float("inf")


def test_categories_and_title_buckets():
    assert eval_report.infer_category("The Hobbit (Paperback)", "A novel by J.R.R. Tolkien") == "books"
    assert eval_report.infer_category("Greatest Hits", "Audio CD with 12 tracks remastered") == "music"
    assert eval_report.infer_category("Women's Cotton T-Shirt", "") == "clothing"
    assert eval_report.infer_category("Stainless steel whisk", "for the kitchen") == "other"
    assert eval_report.title_bucket("x" * 10) != eval_report.title_bucket("x" * 60) != eval_report.title_bucket("x" * 120)


def test_clean_json_replaces_non_finite_numbers():
    got = eval_report.clean_json({"a": float("nan"), "b": [np.float32(1.5), float("inf")], "c": np.int64(3)})
    assert got == {"a": None, "b": [1.5, None], "c": 3}


@pytest.mark.integration
def test_bertscore_minilm_orders_paraphrase_above_unrelated():
    refs = ["a warm wool sweater for winter"] * 2
    hyps = ["a cozy woollen jumper for cold weather", "the stock market fell sharply today"]
    rows = metrics.bertscore_per_sample(refs, hyps)
    assert rows[0][2] > rows[1][2]
    assert metrics.bertscore(refs[:1], refs[:1])["f1"] == pytest.approx(1.0, abs=1e-4)
