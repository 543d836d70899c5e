"""A seeded sample stratified by title length and inferred category."""

import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from catalogtune.data.categories import CATEGORY_KEYWORDS, infer_category, stratified_sample, stratum
from catalogtune.data.io import read_split_sample


def _records():
    recs = [{"title": f"Paperback novel number {i} of a long saga", "content": "A novel."} for i in range(60)]
    recs += [{"title": f"Greatest hits audio CD {i}", "content": "Songs remastered."} for i in range(30)]
    recs += [{"title": f"Women's cotton t-shirt size {i}", "content": ""} for i in range(8)]
    recs += [{"title": "Stainless steel whisk", "content": "For the kitchen."}, {"title": "Mug", "content": ""}]
    return recs


def test_strata_keep_their_shares_and_rare_ones_survive():
    recs = _records()
    idx = stratified_sample(recs, 20, seed=3)
    assert len(idx) == len(set(idx)) == 20 and idx == sorted(idx)
    got = Counter(stratum(recs[i]["title"], recs[i]["content"])[1] for i in idx)
    assert got["books"] == 12 and got["music"] == 6  # 60 % and 30 % of 20
    assert got["clothing"] >= 1 and got["other"] >= 1  # 8 % and 2 %: each still drawn
    assert sum(got.values()) == 20


def test_seeded_and_bounded():
    recs = _records()
    assert stratified_sample(recs, 15, seed=1) == stratified_sample(recs, 15, seed=1)
    assert stratified_sample(recs, 15, seed=1) != stratified_sample(recs, 15, seed=2)
    assert stratified_sample(recs, 500) == list(range(len(recs)))
    assert stratified_sample(recs, 0) == []
    # fewer draws than strata: no stratum is forced, the count is still exact
    assert len(stratified_sample(recs, 2, seed=0)) == 2


def _one_search_per_keyword(title, reference=""):
    """The definition: a keyword found in the title scores 2, in the reference 1; the best wins."""
    t, r = title.lower(), reference.lower()[:2000]
    best, best_score = "other", 0
    for cat, words in CATEGORY_KEYWORDS.items():
        pats = [re.compile(r"(?<![\w'-])" + re.escape(w) + r"(?![\w'-])") for w in words]
        score = sum(2 * bool(p.search(t)) + bool(p.search(r)) for p in pats)
        if score > best_score:
            best, best_score = cat, score
    return best


def test_one_pattern_per_category_scores_as_one_search_per_keyword():
    cases = [("Greatest Hits Audio CD", ""), ("The Books of Ages", "a novel for kids; toys"), ("e-book reader", ""),
             ("Women's Cotton T-Shirt", "cotton cotton cotton"), ("Cookbook's recipes", "a DVD film"),
             ("Blu-ray box", "the album's songs, a CD and a book"), ("Board game for ages 8+", "a puzzle"),
             ("", "starred review of a memoir"), ("Mug", ""), ("LEGO set", "book book book book")]
    for title, ref in cases:
        assert infer_category(title, ref) == _one_search_per_keyword(title, ref), (title, ref)


def test_streamed_sample_draws_what_the_in_memory_sample_draws(tmp_path):
    recs = [{"id": f"r{i}", **r} for i, r in enumerate(_records() * 3)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "train.parquet")
    want = [recs[i]["id"] for i in stratified_sample(recs, 25, seed=4)]
    for rows in (7, 1000):  # batch edges fall inside the sample, or one batch holds it all
        got = read_split_sample(tmp_path, "train", 25, seed=4, rows=rows)
        assert [r["id"] for r in got] == want and got[0] == recs[int(want[0][1:])]
