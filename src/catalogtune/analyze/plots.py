"""Word counts, plots, word clouds and report.html for ``catalogtune analyze``.

Kept apart from ``analyze.py`` (which streams the data and computes the numbers) so each file
stays readable; matplotlib, wordcloud and polars are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from catalogtune.core import htmlreport as hr
from catalogtune.core.util import atomic_write_text, require

# A small built-in English list (no nltk download); catalogue words such as "book" or "new"
# stay, since they are what the model has to learn.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
down during each even ever every few for from further get gets got had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll i'm
i've if in into is isn't it it's its itself just let's like may me might more most much must mustn't my
myself no nor not now of off on once one only or other ought our ours ourselves out over own per
same shall shan't she she'd she'll she's should shouldn't since so some still such than that that's the
their theirs them themselves then there there's these they they'd they'll they're they've this those
though through thus to too under until up upon us very via was wasn't we we'd we'll we're we've were
weren't what what's when when's where where's whether which while who who's whom whose why why's will
with within without won't would wouldn't yet you you'd you'll you're you've your yours yourself
yourselves s t d ll m re ve
""".split())

# tokens hold at least one letter ("20th", "mp3" stay whole); bare numbers and sizes would crowd
# the top words
TOKEN_RE = r"[\p{L}\p{N}]*\p{L}[\p{L}\p{N}]*(?:'\p{L}+)*"
_LABEL = {"title": "Titles", "content": "Descriptions"}
_CHUNK = 20_000  # sample rows tokenised at once (bounds the exploded token frame)


# ---------------------------------------------------------------------------- word counts


def _merge(total: Any, part: Any, key: str) -> Any:
    """Add the counts of ``part`` to ``total`` (both frames of ``key`` and ``n``)."""
    import polars as pl

    if total is None:
        return part
    return pl.concat([total, part]).group_by(key).agg(pl.col("n").sum())


def _top(frame: Any, key: str, n: int) -> list[list[Any]]:
    """``[[item, count], ...]`` by count, then alphabetically (deterministic ties)."""
    import polars as pl

    if frame is None or frame.height == 0:
        return []
    rows = frame.sort([pl.col("n"), pl.col(key)], descending=[True, False]).head(n)
    return [[k, int(c)] for k, c in zip(rows[key].to_list(), rows["n"].to_list())]


def text_counts(sample: Any, top_n: int) -> dict[str, dict[str, Any]]:
    """Per field of a polars frame (title, content): vocabulary size and token count (all
    tokens), top words and bigrams without stop words, and the most repeated texts."""
    import polars as pl

    stop = pl.Series(sorted(STOP_WORDS))
    out: dict[str, dict[str, Any]] = {}
    for f in ("title", "content"):
        words = bigrams = None
        for start in range(0, sample.height, _CHUNK):
            texts = sample[f].slice(start, _CHUNK).str.to_lowercase().str.replace_all("\u2019", "'")
            toks = (pl.DataFrame({"w": texts.str.extract_all(TOKEN_RE)}).with_row_index("row")
                    .explode("w").drop_nulls("w"))
            words = _merge(words, toks.group_by("w").agg(pl.len().alias("n")), "w")
            good = (~pl.col("w").is_in(stop.implode())) & (pl.col("w").str.len_chars() > 1)
            pairs = (toks.with_columns(w2=pl.col("w").shift(-1).over("row"))
                     .drop_nulls("w2")
                     .filter(good & (~pl.col("w2").is_in(stop.implode())) & (pl.col("w2").str.len_chars() > 1))
                     .select(b=pl.col("w") + " " + pl.col("w2")))
            bigrams = _merge(bigrams, pairs.group_by("b").agg(pl.len().alias("n")), "b")
        content_words = None
        if words is not None:
            content_words = words.filter(~pl.col("w").is_in(stop.implode()) & (pl.col("w").str.len_chars() > 1))
        rep = sample[f].filter(sample[f].str.len_chars() > 0).value_counts(sort=True, name="n")
        rep = rep.filter(pl.col("n") > 1).head(8)
        out[f] = {
            "vocabulary": 0 if words is None else words.height,
            "tokens": 0 if words is None else int(words["n"].sum()),
            "words": _top(content_words, "w", top_n),
            "bigrams": _top(bigrams, "b", top_n),
            "repeated": [{"text": t if len(t) <= 200 else t[:197] + "...", "count": int(n)}
                         for t, n in zip(rep[f].to_list(), rep["n"].to_list())],
        }
    return out


# ---------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    """pyplot on the Agg backend (files only, no display needed)."""
    mpl = require("matplotlib", extra="analyze")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thousands() -> Any:
    """Tick labels such as 1,250,000 (plain integers are hard to read at this scale)."""
    from matplotlib.ticker import StrMethodFormatter

    return StrMethodFormatter("{x:,.0f}")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _log_bins(top: int, n: int = 60) -> np.ndarray:
    """Log-spaced bin edges at half-integers: no empty bins between small integer lengths."""
    edges = np.unique(np.round(np.logspace(0, np.log10(max(top, 2) + 1), n)))
    return np.append(edges - 0.5, edges[-1] + 0.5)


def _log_hist(ax: Any, series: list[tuple[str, np.ndarray]], title: str, xlabel: str) -> None:
    """Histograms on log-spaced bins, the first (raw) filled, the others as outlines; empty
    texts (length 0) cannot sit on a log axis, so their count goes into the legend."""
    top = max((int(a.max()) for _, a in series if a.size), default=1)
    bins = _log_bins(top)
    for i, (label, arr) in enumerate(series):
        pos = arr[arr > 0]
        empty = int(arr.size - pos.size)
        med = float(np.median(pos)) if pos.size else 0.0
        text = f"{label}: n={arr.size:,}, median {med:,.0f}" + (f", {empty:,} empty not shown" if empty else "")
        color = f"C{i}"
        filled = i == 0 and len(series) > 1
        ax.hist(pos, bins=bins, histtype="stepfilled" if filled else "step", alpha=0.35 if filled else 1.0,
                linewidth=1.6, color=color, label=text)
        if pos.size:
            ax.axvline(med, color=color, linestyle="--", linewidth=0.9)
    ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # headroom for the legend
    ax.yaxis.set_major_formatter(_thousands())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _ecdf(ax: Any, series: list[tuple[str, np.ndarray]], title: str, xlabel: str) -> None:
    """Cumulative share of records per split: splits of any size compare on one axis."""
    grid = np.linspace(0.0, 1.0, 401)
    for label, arr in series:
        if arr.size == 0:
            continue
        q = np.quantile(np.maximum(arr, 1), grid)  # 0 words would fall off the log axis
        ax.step(q, grid, where="post", linewidth=1.5, label=f"{label}: n={arr.size:,}, median {np.median(arr):,.0f}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of records with at most x words")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _bars(ax: Any, items: list[tuple[str, float]], title: str, color: str = "C0") -> None:
    """Horizontal bars, largest on top, each labelled with its count."""
    if not items:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = [k if len(k) <= 40 else k[:37] + "..." for k, _ in items]
    values = [v for _, v in items]
    y = np.arange(len(items))
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.18 if max(values) > 0 else 1)
    ax.xaxis.set_major_formatter(_thousands())


def draw_all(out: Path, stats: dict, extra: dict, cfg: Any, notes: list[str]) -> dict[str, Path]:
    """Draw every plot into ``out``; returns {name: path}. Missing inputs become notes."""
    plt = _pyplot()
    plots: dict[str, Path] = {}
    arrays, raw = extra["arrays"], extra["raw"]

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for ax, f in zip(axes, ("title", "content")):
        series = []
        if raw is not None and f"{f}_chars" in raw:
            series.append(("raw, all parsed", raw[f"{f}_chars"]))
        series.append(("after cleaning (kept)", arrays[f"{f}_chars"]))
        _log_hist(ax, series, f"{_LABEL[f]}: length in characters", "characters (log scale)")
    plots["lengths_chars"] = _save(fig, out / "lengths_chars.png")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    splits = list(stats["splits"])
    offsets = np.cumsum([0] + [stats["splits"][s]["records"] for s in splits])
    for ax, f in zip(axes, ("title", "content")):
        series = [(s, arrays[f"{f}_words"][offsets[i]:offsets[i + 1]]) for i, s in enumerate(splits)]
        _ecdf(ax, series, f"{_LABEL[f]}: words per record, by split (cleaned)", "words (log scale)")
    plots["lengths_words"] = _save(fig, out / "lengths_words.png")

    for kind, title in (("top_words", "top words"), ("top_bigrams", "top bigrams")):
        k = max(len(stats[kind]["title"]), len(stats[kind]["content"]), 1)
        fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.28 * k))
        for ax, f, color in zip(axes, ("title", "content"), ("C0", "C2")):
            _bars(ax, [(w, c) for w, c in stats[kind][f]], f"{_LABEL[f]}: {title} (sample, stop words removed)", color)
        plots[kind] = _save(fig, out / f"{kind}.png")

    plots["quality"] = _quality_plot(plt, out / "quality.png", stats)
    if cfg.wordclouds:
        plots.update(_wordclouds(out, extra["cloud_words"], cfg.seed, notes))
    return plots


_DUP_LABEL = {"title": "duplicate titles", "content": "duplicate descriptions",
              "title+content": "duplicate title+description pairs"}


def _quality_plot(plt: Any, path: Path, stats: dict) -> Path:
    """Drop reasons beside the duplicates that remain after cleaning. Kept records go in the
    title, not as a bar: next to them the drop reasons would be invisible slivers."""
    drops, dup = stats["drops"], stats["duplicates"]
    dup_items = [(_DUP_LABEL.get(k, k), v["duplicate_records"]) for k, v in dup.items() if isinstance(v, dict)]
    dup_items += [(k.replace("_", " "), v) for k, v in dup.items() if not isinstance(v, dict)]
    has_drops = bool(drops.get("reasons"))
    fig, axes = plt.subplots(1, 2 if has_drops else 1, figsize=(13 if has_drops else 7, 3.8))
    axes = list(np.atleast_1d(axes))
    if has_drops:
        kept = f"kept {drops['kept']:,} of {drops['parsed']:,}; " if "kept" in drops and "parsed" in drops else ""
        _bars(axes[0], list(drops["reasons"].items()),
              f"Cleaning: dropped records by reason\n({kept}from {drops['source']})", "C3")
    _bars(axes[-1], dup_items, "After cleaning: exact duplicates and split overlap", "C1")
    return _save(fig, path)


def _wordclouds(out: Path, words: dict[str, list], seed: int, notes: list[str]) -> dict[str, Path]:
    """One word cloud per field from our own counts (same stop words as the top-words plot)."""
    wc_mod = require("wordcloud", extra="analyze")
    plots = {}
    for f in ("title", "content"):
        freqs = {w: c for w, c in words[f] if c > 0}
        if not freqs:
            notes.append(f"no words in the {_LABEL[f].lower()} sample: word cloud skipped")
            continue
        cloud = wc_mod.WordCloud(width=1200, height=560, background_color="white", random_state=seed,
                                 max_words=200, colormap="viridis", prefer_horizontal=0.95)
        cloud.generate_from_frequencies(freqs)
        path = out / f"wordcloud_{f}.png"
        cloud.to_file(str(path))
        plots[f"wordcloud_{f}"] = path
    return plots


# ---------------------------------------------------------------------------- report.html


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> ``[("a.b", value), ...]`` of scalars; long lists are summarised."""
    rows: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)) and 0 < len(obj) <= 20 and all(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            rows += flatten(v, f"{prefix}[{i}]")
    elif isinstance(obj, (list, tuple)):
        short = len(obj) <= 8 and all(not isinstance(v, (dict, list)) for v in obj)
        text = ", ".join(map(str, obj)) if short else f"[{len(obj)} items]"
        rows.append((prefix, text or "(none)"))
    else:
        rows.append((prefix, obj))
    return rows


def _length_rows(stats: dict) -> list[dict]:
    rows = []
    for stage, label in (("raw", "raw (all parsed)"), ("cleaned", "after cleaning")):
        for f, per in stats["lengths"].get(stage, {}).items():
            for unit, d in per.items():
                rows.append({"text": _LABEL[f], "stage": label, "unit": unit, **d})
    return rows


def _fig(plots: dict, name: str, caption: str) -> str:
    return hr.figure(plots[name], caption) if name in plots else ""


def write_report(path: Path, stats: dict, plots: dict[str, Path]) -> None:
    """report.html: every number and plot of stats.json, images embedded, one file."""
    total = stats["total_records"]
    split_rows = [{"split": s, "records": v["records"], "share": v["share"],
                   "title chars (median)": stats["lengths_by_split"][s]["title"]["chars"]["median"],
                   "description chars (median)": stats["lengths_by_split"][s]["content"]["chars"]["median"]}
                  for s, v in stats["splits"].items()]
    overview = (hr.paragraph(f"Prepared folder: {stats['data']} - {total:,} records after cleaning.")
                + hr.table(split_rows)
                + "".join(hr.paragraph(n, "note") for n in stats.get("notes", [])))

    drops = stats["drops"]
    parsed = drops.get("parsed")
    drop_rows = [{"reason": r, "records": c, **({"share of parsed": c / parsed} if parsed else {})}
                 for r, c in drops["reasons"].items()]
    cleaning = hr.paragraph(f"Drop reasons from {drops['source']}." if drops["source"]
                            else "No drop reasons available (raw_lengths.parquet / quality_report.json).", "meta")
    cleaning += hr.table(drop_rows, floatfmt="{:.2%}") if drop_rows else ""
    dup_rows = [{"text": {"content": "description", "title+content": "title+description"}.get(k, k),
                 "records": v["records"], "distinct": v["distinct"], "duplicate records": v["duplicate_records"]}
                for k, v in stats["duplicates"].items() if isinstance(v, dict)]
    overlap = [{"overlap": k.replace("_", " "), "records": v} for k, v in stats["duplicates"].items()
               if not isinstance(v, dict)]
    kind_stats = stats.get("content_kinds") or {}
    if kind_stats:
        names = sorted({k for d in kind_stats.values() for k in d})
        kind_rows = [{"split": s, **{k: d.get(k, 0) for k in names},
                      "not product": sum(v for k, v in d.items() if k != "product") / max(1, sum(d.values()))}
                     for s, d in kind_stats.items()]
        cleaning += ("<h3>Kinds of description kept</h3>"
                     + hr.paragraph("reviews = only editorial review quotes and their sources; boilerplate = only "
                                    "publisher or format boilerplate; author_bio = only about the author "
                                    "(catalogtune.data.kinds). prepare --drop-kinds drops such records from the "
                                    "train split only.", "meta")
                     + hr.table(kind_rows, floatfmt="{:.1%}"))
    cleaning += "<h3>Exact duplicates after cleaning</h3>" + hr.table(dup_rows)
    cleaning += hr.table(overlap) if overlap else ""
    cleaning += _fig(plots, "quality", "Kept/dropped records and duplicates remaining after cleaning.")
    if stats.get("quality_report") is not None:
        qrows = [{"key": k, "value": v} for k, v in flatten(stats["quality_report"])]
        cleaning += (f"<details><summary><b>quality_report.json</b> ({len(qrows)} values, click to show)"
                     f"</summary>{hr.table(qrows)}</details>")

    lengths = (hr.table(_length_rows(stats), ["text", "stage", "unit", "count", "mean", "median", "p5", "p95", "max"])
               + _fig(plots, "lengths_chars", "Characters per record before and after cleaning (log scale; "
                      "dashed lines are medians).")
               + _fig(plots, "lengths_words", "Words per record in each split, as cumulative shares "
                      "(splits of different sizes compare directly)."))

    ts = stats["text_sample"]
    words = hr.paragraph(
        f"Counted on {ts['records']:,} of {ts['of']:,} records"
        + (f" (random sample, seed {ts['seed']})" if ts["sampled"] else " (all records)")
        + "; lower-cased tokens holding at least one letter. English stop words and one-character tokens are "
        "left out of the top lists; the vocabulary counts every token.", "meta")
    words += hr.table([{"text": _LABEL[f], "vocabulary (distinct tokens)": stats["vocabulary"][f],
                        "tokens": stats["tokens_in_sample"][f]} for f in ("title", "content")])
    k = max(len(v) for v in stats["top_words"].values()) if stats["top_words"] else 0
    rank_rows = []
    for i in range(k):
        row: dict[str, Any] = {"rank": i + 1}
        for f in ("title", "content"):
            for kind, label in (("top_words", "word"), ("top_bigrams", "bigram")):
                lst = stats[kind][f]
                row[f"{_LABEL[f].lower()} {label}"] = f"{lst[i][0]} ({lst[i][1]:,})" if i < len(lst) else ""
        rank_rows.append(row)
    words += _fig(plots, "top_words", "Most frequent words.") + _fig(plots, "top_bigrams", "Most frequent bigrams.")
    words += hr.table(rank_rows)

    clouds = (_fig(plots, "wordcloud_title", "Titles (sample)") + _fig(plots, "wordcloud_content", "Descriptions (sample)")
              or hr.paragraph("Word clouds were not drawn.", "muted"))
    rep_rows = [{"text": _LABEL[f], "repeated text": r["text"], "times in sample": r["count"]}
                for f in ("title", "content") for r in stats["most_repeated_in_sample"][f]]
    repeated = hr.table(rep_rows) if rep_rows else hr.paragraph("No text repeats in the sample.", "muted")
    files = hr.paragraph(
        "stats.json (all numbers), config.yaml, " + ", ".join(sorted(p.name for p in plots.values()))
        + f". Took {stats.get('seconds', 0):.1f} s, peak memory {stats.get('peak_rss_mb', 0):,.0f} MiB.", "meta")

    html = hr.page("Catalogue analysis", [
        ("Overview", overview), ("Cleaning, drops and duplicates", cleaning), ("Lengths", lengths),
        ("Top words and bigrams", words), ("Word clouds", clouds), ("Most repeated texts (sample)", repeated),
        ("Files", files)], subtitle="catalogtune analyze")
    atomic_write_text(path, html)
