"""Paired bootstrap confidence intervals for the difference between two systems on the same items.

Both systems are scored on the same records, so the items are resampled together (one index
matrix for both) and the interval is that of the difference: the per-item noise shared by the two
systems cancels, and the interval is much narrower than two independent ones. Percentile
intervals from a numpy Generator seeded with ``seed``: the same inputs and seed give the same
interval. "significant" means the interval excludes 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from catalogtune.core.util import CatalogtuneError

_CHUNK = 4_000_000
"""Most indices drawn at once: 1000 resamples of 50,000 items would be a 400 MB int64 matrix."""


def _arrays(*cols: Sequence[float]) -> list[np.ndarray]:
    lens = [len(c) for c in cols]
    if len(set(lens)) > 1:
        raise CatalogtuneError(f"paired bootstrap needs the same items for both systems: lengths {lens}")
    return [np.asarray(c, dtype=np.float64) for c in cols]


def _check(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise CatalogtuneError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise CatalogtuneError(f"alpha must be between 0 and 1, got {alpha}")


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The (n_resamples, n) matrix of resampled item indices, in blocks of whole rows.

    Rows are drawn in order from one Generator, so the blocks together are the matrix one call
    would draw; the blocks only bound the memory.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // max(n, 1))
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def _interval(diffs: np.ndarray, alpha: float) -> tuple[float | None, float | None, bool]:
    diffs = diffs[np.isfinite(diffs)]  # a ratio resample with no denominator (or overflowing) is left out
    if diffs.size == 0:
        return None, None, False
    low, high = (float(q) for q in np.quantile(diffs, [alpha / 2, 1 - alpha / 2]))
    return low, high, bool(low > 0 or high < 0)


def _resampled_stat(stat: Callable, a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """stat(a*) - stat(b*) for each row of ``idx``; one vectorised call when ``stat`` takes ``axis``."""
    if stat is np.mean:
        return (a - b)[idx].mean(axis=1)  # mean(a*) - mean(b*) = mean of the paired differences
    try:
        return np.asarray(stat(a[idx], axis=1), dtype=np.float64) - np.asarray(stat(b[idx], axis=1), dtype=np.float64)
    except TypeError:  # a plain Python function of one array
        return np.array([stat(a[row]) - stat(b[row]) for row in idx], dtype=np.float64)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[..., Any] = np.mean,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired bootstrap of ``stat(a) - stat(b)`` over items scored by both systems (a = system, b = baseline).

    Returns ``{"diff", "low", "high", "significant", "n"}``: the observed difference, the
    ``1 - alpha`` percentile interval of the resampled differences, whether it excludes 0, and the
    number of items. With fewer than 2 items there is no interval: ``low`` and ``high`` are None
    and ``significant`` is False (``diff`` is None too when there is no item). ``stat`` is called
    once on the whole (n_resamples, n) matrix with ``axis=1`` when it accepts it (numpy
    reductions do), else once per resample.
    """
    _check(n_resamples, alpha)
    x, y = _arrays(a, b)
    n = len(x)
    out: dict[str, Any] = {"diff": float(stat(x) - stat(y)) if n else None, "low": None, "high": None,
                           "significant": False, "n": n}
    if n < 2:
        return out
    diffs = np.concatenate([_resampled_stat(stat, x, y, idx) for idx in _index_chunks(n, n_resamples, seed)])
    out["low"], out["high"], out["significant"] = _interval(diffs, alpha)
    return out


def _apply(transform: Callable[[float], float], values: np.ndarray) -> np.ndarray:
    """``transform`` on every value: math.exp as np.exp (inf, not OverflowError, past ~709)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if transform is math.exp:
            return np.exp(values)
        return np.array([transform(float(v)) if np.isfinite(v) else math.nan for v in values], dtype=np.float64)


def _point(transform: Callable[[float], float], num: np.ndarray, den: np.ndarray) -> float | None:
    total = float(den.sum())
    if total == 0:
        return None
    try:
        return float(transform(float(num.sum()) / total))
    except OverflowError:
        return math.inf


def paired_bootstrap_ratio(
    num_a: Sequence[float],
    den_a: Sequence[float],
    num_b: Sequence[float],
    den_b: Sequence[float],
    transform: Callable[[float], float] = math.exp,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired bootstrap of a corpus-level ratio metric: transform(sum num / sum den) per system.

    For perplexity = exp(sum NLL / sum tokens) pass per-item NLL sums and token counts (the
    default ``transform`` is ``math.exp``); for a rate such as unsupported claims / claims pass an
    identity. Items are resampled together for both systems and the ratio is recomputed from the
    resampled sums, so long items weigh as much as in the corpus metric. Returns the keys of
    ``paired_bootstrap`` plus ``rel_diff``, the relative difference of the point estimates
    ((a - b) / b; None when b is 0 or missing). A resample with a zero denominator is left out
    of the interval.
    """
    _check(n_resamples, alpha)
    na, da, nb, db = _arrays(num_a, den_a, num_b, den_b)
    n = len(na)
    pa, pb = _point(transform, na, da), _point(transform, nb, db)
    diff = pa - pb if pa is not None and pb is not None else None
    rel = diff / pb if diff is not None and pb and math.isfinite(pb) else None
    out: dict[str, Any] = {"diff": diff, "low": None, "high": None, "significant": False, "n": n, "rel_diff": rel}
    if n < 2:
        return out
    diffs = []
    for idx in _index_chunks(n, n_resamples, seed):
        with np.errstate(divide="ignore", invalid="ignore"):
            ra, rb = na[idx].sum(axis=1) / da[idx].sum(axis=1), nb[idx].sum(axis=1) / db[idx].sum(axis=1)
        diffs.append(_apply(transform, ra) - _apply(transform, rb))
    out["low"], out["high"], out["significant"] = _interval(np.concatenate(diffs), alpha)
    return out
