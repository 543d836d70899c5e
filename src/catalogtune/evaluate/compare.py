"""Paired comparisons between systems on the same records, with bootstrap intervals.

Every main metric of a system is compared with a reference system (the base model, a
baseline, or fine-tuned alone for fine-tuned + RAG) item by item: a paired bootstrap over the
items gives the 95 % interval of the difference, and a difference whose interval contains 0
is "not significant". ``verdicts`` turns the comparisons that matter into plain sentences
for the report, so a headline cannot claim a win the intervals do not show.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from catalogtune.evaluate import bootstrap

# metric -> (per-row key or ratio keys, higher is better). Ratio metrics are corpus-level:
# resampled as sum(num) / sum(den) (perplexity: exp of it).
PAIRED_METRICS: dict[str, tuple[Any, bool]] = {
    "rouge_l": ("rouge_l", True),
    "cosine": ("cosine", True),
    "bertscore_f1": ("bertscore_f1", True),
    "chrf_s": ("chrf_s", True),
    "perplexity": (("nll_sum", "n_tokens", "exp"), False),
    "unsupported_rate": (("unsupported", "claims", "id"), False),
    "invented_attribution": ("invented_attribution", False),
    "quote_style": ("quote_style", False),
}
"""Metrics compared with intervals; ``chrf_s`` is the mean sentence chrF (the tables' chrF is corpus-level)."""


def pairs_for(systems: Sequence[str]) -> list[tuple[str, str]]:
    """(system, reference) pairs to compare: every system vs base, the fine-tuned systems vs
    each baseline, and fine-tuned + RAG vs fine-tuned."""
    have = set(systems)
    out = [(s, "base") for s in systems if s != "base" and "base" in have]
    for ft in ("finetuned", "finetuned+rag"):
        if ft in have:
            out += [(ft, b) for b in ("title-copy", "retrieval-only") if b in have]
    if {"finetuned", "finetuned+rag"} <= have:
        out.append(("finetuned+rag", "finetuned"))
    return out


def _values(rows: Sequence[dict], key: str) -> list[float] | None:
    vals = [r.get(key) for r in rows]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return [float(v) for v in vals]


def compare(a_rows: Sequence[dict], b_rows: Sequence[dict], n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Paired bootstrap of every ``PAIRED_METRICS`` entry both systems have: ``{metric: {diff, low, high,
    significant, n, better}}``; rows must be the same items in the same order."""
    ids_a, ids_b = [r["id"] for r in a_rows], [r["id"] for r in b_rows]
    if ids_a != ids_b:
        raise ValueError("paired comparison needs the same items in the same order")
    out: dict[str, dict] = {}
    for metric, (key, higher) in PAIRED_METRICS.items():
        if isinstance(key, tuple):
            num, den, fn = key
            cols = [_values(rows, k) for rows in (a_rows, b_rows) for k in (num, den)]
            if any(c is None for c in cols) or sum(cols[1]) <= 0 or sum(cols[3]) <= 0:
                continue
            res = bootstrap.paired_bootstrap_ratio(*cols, transform=math.exp if fn == "exp" else (lambda x: x),
                                                   n_resamples=n_resamples, seed=seed)
        else:
            a, b = _values(a_rows, key), _values(b_rows, key)
            if a is None or b is None:
                continue
            res = bootstrap.paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
        res = dict(res)
        d = res.get("diff")
        res["better"] = None if d is None or not res.get("significant") else bool((d > 0) == higher)
        out[metric] = res
    return out


def all_comparisons(by_system: dict[str, list[dict]], n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """``[{"system", "versus", "metrics": compare(...)}]`` for ``pairs_for(by_system)``."""
    return [{"system": s, "versus": ref, "metrics": compare(by_system[s], by_system[ref], n_resamples, seed)}
            for s, ref in pairs_for(list(by_system))]


def fmt_diff(res: Any, ns: str = " n.s.", no_interval: str = " (n<2)") -> str:
    """``+0.021 [+0.004, +0.037]`` or ``-0.01 [-0.03, +0.01] n.s.``; "-" when missing or malformed
    (report.json may have been edited by hand: the app shows it too)."""
    if not isinstance(res, dict) or not isinstance(res.get("diff"), (int, float)):
        return "-"
    d, lo, hi = res["diff"], res.get("low"), res.get("high")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return f"{d:+.3g}{no_interval}"
    return f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" + ("" if res.get("significant") else ns)


def verdicts(comparisons: list[dict], n: int) -> list[str]:
    """Plain sentences on the comparisons that decide whether fine-tuning earned its place."""
    lines = []
    names = {"rouge_l": "ROUGE-L", "cosine": "MiniLM cosine", "perplexity": "perplexity",
             "unsupported_rate": "unsupported-claim rate", "invented_attribution": "invented attributions"}
    for c in comparisons:
        s, ref = c["system"], c["versus"]
        if not s.startswith("finetuned"):
            continue
        if ref == "base" and s != "finetuned":
            continue
        for metric in ("rouge_l", "cosine") + (("perplexity", "unsupported_rate", "invented_attribution") if ref == "base" else ()):
            res = c["metrics"].get(metric)
            if not res or res.get("diff") is None:
                continue
            verdict = ("beats" if res["better"] else "loses to") if res["better"] is not None else "does not significantly differ from"
            lines.append(f"{s} {verdict} {ref} on {names[metric]}: {fmt_diff(res)} (n = {n}, paired bootstrap 95 % interval).")
    return lines
