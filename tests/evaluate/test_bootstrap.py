"""Paired bootstrap: intervals that contain 0 when they should, exclude it when they should,
are reproducible, and cover a known difference about 95 % of the time."""

from __future__ import annotations

import math

import numpy as np
import pytest

from catalogtune.core.util import CatalogtuneError
from catalogtune.evaluate import bootstrap


def _systems(n=80, gain=0.0, seed=0):
    """Per-item scores of a baseline and a system on the same items (shared item difficulty)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.5, 0.2, n)
    base = difficulty + rng.normal(0, 0.05, n)
    return base + gain + rng.normal(0, 0.05, n), base


def test_identical_systems_are_not_significant():
    a, _ = _systems()
    res = bootstrap.paired_bootstrap(a, a)
    assert res["diff"] == 0.0 and res["low"] <= 0.0 <= res["high"]
    assert res["significant"] is False and res["n"] == len(a)
    noisy, base = _systems(gain=0.0, seed=3)
    res = bootstrap.paired_bootstrap(noisy, base)
    assert res["low"] < 0 < res["high"] and not res["significant"]


def test_a_clearly_better_system_is_significant():
    a, b = _systems(gain=0.1)
    res = bootstrap.paired_bootstrap(a, b)
    assert res["diff"] == pytest.approx(float(np.mean(a) - np.mean(b)))
    assert 0 < res["low"] < res["diff"] < res["high"] and res["significant"]
    worse = bootstrap.paired_bootstrap(b, a)
    assert worse["high"] < 0 and worse["significant"]


def test_pairing_makes_the_interval_narrow():
    # the item difficulty (sd 0.2) is shared: an unpaired interval would be ~4x wider than 0.05-noise
    a, b = _systems(gain=0.02, n=200)
    res = bootstrap.paired_bootstrap(a, b)
    assert res["high"] - res["low"] < 0.03 and res["significant"]


def test_same_seed_same_interval():
    a, b = _systems(gain=0.01)
    first = bootstrap.paired_bootstrap(a, b, seed=7)
    assert bootstrap.paired_bootstrap(a, b, seed=7) == first
    assert bootstrap.paired_bootstrap(a, b, seed=8) != first


def test_coverage_of_a_known_difference():
    """200 simulated evaluations: the 95 % interval holds the true mean difference ~95 % of the time."""
    true_diff, covered = 0.3, 0
    for sim in range(200):
        rng = np.random.default_rng(1000 + sim)
        item = rng.normal(0, 1, 60)
        a = item + true_diff + rng.normal(0, 1, 60)
        b = item + rng.normal(0, 1, 60)
        res = bootstrap.paired_bootstrap(a, b, n_resamples=500, seed=sim)
        covered += res["low"] <= true_diff <= res["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_small_and_mismatched_inputs():
    one = bootstrap.paired_bootstrap([0.7], [0.5])
    assert one == {"diff": pytest.approx(0.2), "low": None, "high": None, "significant": False, "n": 1}
    none = bootstrap.paired_bootstrap([], [])
    assert none["diff"] is None and none["low"] is None and none["significant"] is False and none["n"] == 0
    with pytest.raises(CatalogtuneError, match="lengths") as err:
        bootstrap.paired_bootstrap([1, 2, 3], [1, 2])
    assert "\n" not in str(err.value)
    with pytest.raises(CatalogtuneError):
        bootstrap.paired_bootstrap([1, 2], [1, 2], n_resamples=0)
    with pytest.raises(CatalogtuneError):
        bootstrap.paired_bootstrap([1, 2], [1, 2], alpha=1.5)


def test_other_statistics():
    a, b = _systems(gain=0.1)
    med = bootstrap.paired_bootstrap(a, b, stat=np.median)
    assert med["diff"] == pytest.approx(float(np.median(a) - np.median(b))) and med["significant"]
    # a plain function without ``axis`` goes resample by resample: same indices, same interval
    plain = bootstrap.paired_bootstrap(a, b, stat=lambda x: float(np.median(x)))
    assert plain == med


def test_a_stat_with_axis_is_called_on_the_whole_matrix():
    calls = []

    def mean(x, axis=None):
        calls.append(np.shape(x))
        return np.mean(x, axis=axis)

    a, b = _systems(n=30)
    bootstrap.paired_bootstrap(a, b, stat=mean, n_resamples=400)
    assert calls == [(30,), (30,), (400, 30), (400, 30)]  # no loop over the resamples
    got, fast = (bootstrap.paired_bootstrap(a, b, stat=s, n_resamples=400) for s in (mean, np.mean))
    assert (got["low"], got["high"]) == pytest.approx((fast["low"], fast["high"]))  # the same resamples


def test_blocks_of_resamples_equal_one_matrix(monkeypatch):
    a, b = _systems(gain=0.01, n=50)
    whole = bootstrap.paired_bootstrap(a, b, n_resamples=300)
    ratio = bootstrap.paired_bootstrap_ratio(a, np.ones(50), b, np.ones(50), n_resamples=300)
    monkeypatch.setattr(bootstrap, "_CHUNK", 50 * 7)  # 7 resamples at a time
    assert bootstrap.paired_bootstrap(a, b, n_resamples=300) == whole
    assert bootstrap.paired_bootstrap_ratio(a, np.ones(50), b, np.ones(50), n_resamples=300) == ratio


# --- ratio metrics ---------------------------------------------------------------------------


def _nll(n=100, per_token=2.0, seed=0):
    """Per-item NLL sums and token counts (items of different lengths)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 60, n).astype(float)
    return tokens * (per_token + rng.normal(0, 0.3, n)), tokens


def test_ratio_point_estimate_is_exp_of_sum_over_sum():
    na, da = _nll(per_token=2.2)
    nb, db = _nll(per_token=2.0, seed=1)
    res = bootstrap.paired_bootstrap_ratio(na, da, nb, db)
    pa, pb = math.exp(na.sum() / da.sum()), math.exp(nb.sum() / db.sum())
    assert res["diff"] == pytest.approx(pa - pb)
    assert res["rel_diff"] == pytest.approx((pa - pb) / pb)
    assert res["significant"] and 0 < res["low"] < res["diff"] < res["high"]
    # not the mean of per-item perplexities: long items weigh more
    assert res["diff"] != pytest.approx(float(np.mean(np.exp(na / da)) - np.mean(np.exp(nb / db))))


def test_ratio_of_identical_systems_and_identity_transform():
    na, da = _nll()
    same = bootstrap.paired_bootstrap_ratio(na, da, na, da)
    assert same["diff"] == 0.0 and same["low"] <= 0 <= same["high"] and not same["significant"]
    bad, claims = np.array([1, 0, 2, 1, 0, 3.0]), np.array([4, 2, 5, 3, 1, 6.0])
    rate = bootstrap.paired_bootstrap_ratio(bad, claims, bad * 0, claims, transform=lambda x: x, seed=3)
    assert rate["diff"] == pytest.approx(bad.sum() / claims.sum())
    assert rate == bootstrap.paired_bootstrap_ratio(bad, claims, bad * 0, claims, transform=lambda x: x, seed=3)


def test_ratio_edge_cases():
    one = bootstrap.paired_bootstrap_ratio([4.0], [2.0], [2.0], [2.0])
    assert one["diff"] == pytest.approx(math.exp(2) - math.exp(1)) and one["low"] is None
    assert one["significant"] is False and one["n"] == 1
    empty = bootstrap.paired_bootstrap_ratio([0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0])
    assert empty["diff"] is None and empty["rel_diff"] is None
    with pytest.raises(CatalogtuneError, match="lengths"):
        bootstrap.paired_bootstrap_ratio([1, 2], [1, 2], [1, 2], [1])
    huge = bootstrap.paired_bootstrap_ratio([1e4, 1e4], [1, 1], [1.0, 1.0], [1, 1])
    assert huge["diff"] == math.inf  # exp overflow is inf, not an error
