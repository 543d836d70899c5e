"""Scoring and reporting for ``evaluate``: per-sample metrics, summaries, breakdowns, files.

Everything here works on plain rows (dicts) produced by ``evaluate``; no model is loaded
except through the embedding functions passed in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from catalogtune.core.util import atomic_write, atomic_write_text
from catalogtune.data import kinds
from catalogtune.data.categories import CATEGORY_KEYWORDS, TITLE_BUCKETS, infer_category, title_bucket  # noqa: F401  (re-exported)
from catalogtune.evaluate import compare, diversity, metrics, probes

MAIN_METRICS = ("perplexity", "rouge_l", "chrf", "cosine", "bertscore_f1", "unsupported_rate")
"""Metrics shown in plots and breakdowns."""
TABLE_METRICS = (
    "n", "loss", "perplexity", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "cosine", "bertscore_f1",
    "distinct_2", "length_ratio", "empty_rate", "unsupported_rate", "invented_attribution_rate",
    "stopped_rate", "mean_new_tokens",
)
"""Columns of the per-system tables."""
COLLAPSE_METRICS = ("top_opening_share", "top_opening", "quote_style_share", "corpus_distinct_1",
                    "corpus_distinct_2", "self_bleu")
"""Columns of the collapse table (each system's outputs as a corpus, and the references)."""
PROBE_METRICS = ("n", "book_blurb_share", "quote_style_share", "invented_attribution_rate", "top_opening_share")
"""Columns of the probe-title table (reference-free)."""
COMPARE_METRICS = ("rouge_l", "cosine", "bertscore_f1", "chrf_s", "perplexity", "unsupported_rate",
                   "invented_attribution", "quote_style")
"""Columns of the paired-difference table."""

def add_sample_metrics(
    rows: list[dict],
    embed: Callable[[list[str]], np.ndarray],
    token_embed: metrics.TokenEmbed,
    support: dict[str, list[str]],
) -> None:
    """Add per-sample metrics to each row in place (rouge, chrf, cosine, bertscore, claims,
    invented attributions, quote style).

    ``support`` maps an item id to the retrieved texts that back up its claims.
    """
    if not rows:
        return
    refs = [r["reference"] for r in rows]
    hyps = [r["output"] for r in rows]
    for row, rg, cf in zip(rows, metrics.rouge_per_sample(refs, hyps), metrics.chrf_per_sample(refs, hyps)):
        row.update(rg)
        row["chrf_s"] = cf
    sims = metrics.cosine(embed(refs), embed(hyps))
    bs = metrics.bertscore_per_sample(refs, hyps, token_embed=token_embed)
    for row, sim, (p, rc, f) in zip(rows, sims, bs):
        row["cosine"] = float(sim)
        row["bertscore_p"], row["bertscore_r"], row["bertscore_f1"] = p, rc, f
        backing = support.get(row["id"], [])
        row["claims"], row["unsupported"] = metrics.unsupported_claims(row["output"], row["title"], backing)
        row["attributions"], invented = diversity.invented_attributions(row["output"], row["title"], backing)
        row["invented_attribution"] = float(invented > 0)
        row["quote_style"] = float(kinds.is_quote_style(row["output"]))


def add_probe_metrics(rows: list[dict], support: dict[str, list[str]]) -> None:
    """Reference-free metrics of probe-title rows in place: book blurb, quote style, invented attributions."""
    for row in rows:
        backing = support.get(row["id"], [])
        row["book_blurb"] = float(probes.is_book_blurb(row["output"], row["title"]))
        row["quote_style"] = float(kinds.is_quote_style(row["output"]))
        row["attributions"], invented = diversity.invented_attributions(row["output"], row["title"], backing)
        row["invented_attribution"] = float(invented > 0)


def summarize_probes(rows: Sequence[dict]) -> dict[str, Any]:
    """Shares over the probe titles' outputs (no references, so no overlap metrics)."""
    hyps = [r["output"] for r in rows]
    out = {"n": len(rows), "book_blurb_share": _mean(rows, "book_blurb"), "quote_style_share": _mean(rows, "quote_style"),
           "invented_attribution_rate": _mean(rows, "invented_attribution"),
           "mean_new_tokens": _mean(rows, "new_tokens"), "stopped_rate": _mean(rows, "stopped")}
    out["top_opening_share"] = diversity.top_opening_share(hyps)[0]
    return out


def _mean(rows: Sequence[dict], key: str) -> float:
    """Mean of ``key`` over the rows that have it (NaN when none has: e.g. a baseline's stop rate)."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(rows: Sequence[dict], collapse: bool = True) -> dict[str, Any]:
    """Corpus metrics of one system's scored rows (baselines have no likelihood: perplexity NaN).

    ``collapse=False`` leaves out the corpus collapse figures (self-BLEU is the costly one), for
    the per-group breakdowns that show only the main metrics.
    """
    refs = [r["reference"] for r in rows]
    hyps = [r["output"] for r in rows]
    n_tok = sum(r.get("n_tokens") or 0 for r in rows)
    nll = sum(r.get("nll_sum") or 0.0 for r in rows)
    claims = sum(r["claims"] for r in rows)
    out = {
        "n": len(rows),
        "loss": nll / n_tok if n_tok else float("nan"),
        "perplexity": metrics.perplexity(nll, n_tok),
        "rouge1": _mean(rows, "rouge1"),
        "rouge2": _mean(rows, "rouge2"),
        "rouge_l": _mean(rows, "rouge_l"),
        "bleu": metrics.bleu(refs, hyps),
        "chrf": metrics.chrf(refs, hyps),
        "chrf_s": _mean(rows, "chrf_s"),
        "cosine": _mean(rows, "cosine"),
        "bertscore_p": _mean(rows, "bertscore_p"),
        "bertscore_r": _mean(rows, "bertscore_r"),
        "bertscore_f1": _mean(rows, "bertscore_f1"),
        "distinct_1": metrics.distinct_n(hyps, 1),
        "distinct_2": metrics.distinct_n(hyps, 2),
        "length_ratio": metrics.length_ratio(refs, hyps),
        "empty_rate": metrics.empty_rate(hyps),
        "claims": claims,
        "unsupported": sum(r["unsupported"] for r in rows),
        "unsupported_rate": sum(r["unsupported"] for r in rows) / claims if claims else 0.0,
        "attributions": sum(r.get("attributions", 0) for r in rows),
        "invented_attribution_rate": _mean(rows, "invented_attribution"),
        "mean_new_tokens": _mean(rows, "new_tokens"),
        "stopped_rate": _mean(rows, "stopped"),
        "gen_seconds": float(sum(r.get("seconds") or 0.0 for r in rows)),
    }
    if any("variant" in r for r in rows):  # evaluate --rerank: how often each decoding was kept
        kept = [int(r.get("variant", 0)) for r in rows]
        out["rerank_kept"] = [kept.count(v) for v in range(max(int(r.get("variants", 1)) for r in rows))]
    if collapse:
        out.update(diversity.collapse_summary(hyps))
    return out


def collapse_table(systems: dict[str, dict], references: Sequence[str]) -> dict[str, dict]:
    """``{system | "reference": collapse figures}`` from ``summarize`` outputs (which hold them
    already); the references show how varied real descriptions are."""
    table = {s: {k: m[k] for k in COLLAPSE_METRICS if k in m} for s, m in systems.items()}
    table["reference"] = diversity.collapse_summary(list(references))
    return table


def breakdowns(rows_by_system: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, dict]]]:
    """``{"title_length"|"category": {group: {system: main metrics + n}}}``."""
    out: dict[str, dict[str, dict[str, dict]]] = {"title_length": {}, "category": {}}
    for system, rows in rows_by_system.items():
        for dim, keyfn in (("title_length", lambda r: r["bucket"]), ("category", lambda r: r["category"])):
            groups: dict[str, list[dict]] = {}
            for r in rows:
                groups.setdefault(keyfn(r), []).append(r)
            for group, members in sorted(groups.items()):
                full = summarize(members, collapse=False)
                out[dim].setdefault(group, {})[system] = {k: full[k] for k in ("n", *MAIN_METRICS)}
    return out


def clean_json(obj: Any) -> Any:
    """NaN and inf become null (JSON has no such numbers); numpy scalars become Python ones."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


# --- files -------------------------------------------------------------------------------


def fmt(v: Any) -> str:
    """A metric value for tables: 4 significant digits, "-" when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _md_table(systems: dict[str, dict], columns: Sequence[str] = TABLE_METRICS) -> str:
    head = "| system | " + " | ".join(columns) + " |"
    sep = "|---" * (len(columns) + 1) + "|"
    lines = [head, sep]
    lines += [f"| {s} | " + " | ".join(fmt(m.get(c)) for c in columns) + " |" for s, m in systems.items()]
    return "\n".join(lines)


def _md_breakdown(bd: dict[str, dict[str, dict]]) -> list[str]:
    lines = []
    for dim, groups in bd.items():
        lines += [f"### By {dim.replace('_', ' ')}", ""]
        for group, systems in groups.items():
            lines += [f"**{group}**", "", _md_table(systems, ("n", *MAIN_METRICS)), ""]
    return lines


def _md_compare(comparisons: list[dict]) -> str:
    head = "| system | versus | " + " | ".join(COMPARE_METRICS) + " |"
    lines = [head, "|---" * (len(COMPARE_METRICS) + 2) + "|"]
    for c in comparisons:
        cells = [compare.fmt_diff(c["metrics"].get(m)) for m in COMPARE_METRICS]
        lines.append(f"| {c['system']} | {c['versus']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_split(title: str, part: dict) -> list[str]:
    lines = [f"## {title}", "", _md_table(part["systems"]), ""]
    if part.get("verdicts"):
        lines += ["**Verdicts**", ""] + [f"- {v}" for v in part["verdicts"]] + [""]
    if part.get("comparisons"):
        lines += ["Differences from the reference system (paired bootstrap 95 % interval; n.s. = the "
                  "interval contains 0, not significant):", "", _md_compare(part["comparisons"]), ""]
    if part.get("collapse"):
        lines += ["Collapse and diversity (outputs as a corpus; `reference` = the real descriptions):", "",
                  _md_table(part["collapse"], COLLAPSE_METRICS), ""]
    return lines


def write_markdown(path: Path, report: dict) -> None:
    """report.md: the per-system tables, intervals and collapse figures (test, seen, probes), notes, breakdowns."""
    lines = ["# catalogtune evaluation", ""]
    lines += [f"- {n}" for n in report.get("notes", [])] + [""]
    lines += _md_split(f"Test ({report.get('test_source', 'test split')})", report)
    if report.get("seen", {}).get("systems"):
        lines += _md_split("Seen products (training sample)", report["seen"])
    if report.get("probes", {}).get("systems"):
        lines += _md_probes(report["probes"])
    lines += ["## Breakdowns (test)", ""] + _md_breakdown(report.get("breakdowns", {}))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _md_probes(probes: dict) -> list[str]:
    return ["## Non-book probe titles (invented; no reference descriptions)", "",
            "Share of outputs that read like a book blurb or a review quote for products that are not books:", "",
            _md_table(probes["systems"], PROBE_METRICS), ""]


def plot_metrics(path: Path, report: dict) -> Path:
    """Bar plots of the main metrics per system, test vs seen, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [("test", report["systems"]), ("seen", report.get("seen", {}).get("systems", {}))]
    splits = [(name, s) for name, s in splits if s]
    systems = list(report["systems"]) or list(splits[0][1]) if splits else []
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    width = 0.8 / max(1, len(splits))
    for ax, metric in zip(axes.flat, MAIN_METRICS):
        for i, (name, table) in enumerate(splits):
            vals = [table.get(s, {}).get(metric) for s in systems]
            vals = [v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in vals]
            ax.bar(np.arange(len(systems)) + i * width, vals, width, label=name)
        ax.set_title(metric)
        ax.set_xticks(np.arange(len(systems)) + width * (len(splits) - 1) / 2)
        ax.set_xticklabels(systems, rotation=20, fontsize=8)
    axes.flat[0].legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=80)
    plt.close(fig)
    return path


def _html_split(h: Any, title: str, part: dict, systems_table: Callable) -> list[tuple[str, str]]:
    sections = [(title, systems_table(part["systems"]))]
    if part.get("verdicts"):
        sections.append((f"{title}: verdicts", "".join(h.paragraph(v) for v in part["verdicts"])))
    if part.get("comparisons"):
        rows = [{"system": c["system"], "versus": c["versus"],
                 **{m: compare.fmt_diff(c["metrics"].get(m)) for m in COMPARE_METRICS}} for c in part["comparisons"]]
        sections.append((f"{title}: differences (paired bootstrap 95 % interval; n.s. = not significant)",
                         h.table(rows, ["system", "versus", *COMPARE_METRICS])))
    if part.get("collapse"):
        rows = [{"system": s, **{c: m.get(c) for c in COLLAPSE_METRICS}} for s, m in part["collapse"].items()]
        sections.append((f"{title}: collapse and diversity", h.table(rows, ["system", *COLLAPSE_METRICS])))
    return sections


def write_html(path: Path, report: dict, plot_png: Path | None) -> None:
    """report.html: self-contained (plots inlined), tables, intervals, breakdowns and the samples table."""
    from catalogtune.core import htmlreport as h

    def systems_table(systems: dict[str, dict], cols: Sequence[str] = TABLE_METRICS) -> str:
        return h.table([{"system": s, **{c: m.get(c) for c in cols}} for s, m in systems.items()],
                       ["system", *cols])

    sections = [("Notes", "".join(h.paragraph(n) for n in report.get("notes", [])) or h.paragraph("-"))]
    sections += _html_split(h, f"Test: {report.get('test_source', 'test split')}", report, systems_table)
    if report.get("seen", {}).get("systems"):
        sections += _html_split(h, "Seen products (training sample)", report["seen"], systems_table)
    if report.get("probes", {}).get("systems"):
        sections.append(("Non-book probe titles (invented)", systems_table(report["probes"]["systems"], PROBE_METRICS)))
    if plot_png is not None and plot_png.is_file():
        sections.append(("Plots", h.figure(plot_png, "Main metrics per system, test vs seen products")))
    for dim, groups in report.get("breakdowns", {}).items():
        rows = [{"group": g, "system": s, **m} for g, systems in groups.items() for s, m in systems.items()]
        sections.append((f"By {dim.replace('_', ' ')} (test)", h.table(rows, ["group", "system", "n", *MAIN_METRICS])))
    sections.append(("Samples (test)", _samples_html(h, report.get("samples", []), list(report["systems"]))))
    atomic_write_text(path, h.page("catalogtune evaluation", sections, subtitle=report.get("subtitle")))


def _samples_html(h: Any, samples: list[dict], systems: list[str]) -> str:
    rows = []
    for s in samples:
        refs = "; ".join(f"{r['title']} ({r['score']:.2f})" for r in s.get("references", []))
        rows.append({"title": s["title"], "reference": s["reference"],
                     **{sys: s["outputs"].get(sys, "") for sys in systems}, "references": refs or "-"})
    return h.table(rows, ["title", "reference", *systems, "references"])
