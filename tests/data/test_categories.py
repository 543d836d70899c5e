"""A seeded sample stratified by title length and inferred category."""

from collections import Counter

from catalogtune.data.categories import stratified_sample, stratum


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
