"""Data page: the prepared splits (search by title), the analysis report, the quality report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalogtune.app import common
from catalogtune.core.util import CatalogtuneError

SPLITS = ("train", "val", "test")
PREVIEW_ROWS = 200
"""Rows shown at most: the table is a preview, not an export."""


def search_split(prep: Path, split: str, query: str = "", limit: int = PREVIEW_ROWS) -> tuple[Any, int]:
    """(first ``limit`` rows whose title contains ``query``, case-insensitive; number of matches)."""
    import polars as pl

    if split not in SPLITS:
        raise CatalogtuneError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    path = prep / f"{split}.parquet"
    if not path.is_file():
        raise CatalogtuneError(f"no {split} split in {prep.name}/ (run `catalogtune prepare` first)")
    if len(query) > common.MAX_INPUT_CHARS:
        raise CatalogtuneError(f"the search text is too long ({len(query):,} characters)")
    try:
        lf = pl.scan_parquet(path).select("id", "title", "content")
        q = " ".join(query.split()).lower()
        if q:
            lf = lf.filter(pl.col("title").str.to_lowercase().str.contains(q, literal=True))
        total = lf.select(pl.len()).collect().item()
        rows = lf.head(limit).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise CatalogtuneError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    return rows, int(total)


def _scalars_and_tables(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    scalars = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) or v is None}
    nested = {k: v for k, v in obj.items() if k not in scalars}
    return scalars, nested


def show_report(obj: Any, title: str) -> None:
    """A JSON report: its top-level numbers as a table, each nested mapping as its own table."""
    import streamlit as st

    if not isinstance(obj, dict):
        st.json(obj)
        return
    scalars, nested = _scalars_and_tables(obj)
    if scalars:
        st.dataframe([{"key": k, "value": str(v)} for k, v in scalars.items()], hide_index=True)
    for key, value in nested.items():
        st.markdown(f"**{common.md_escape(key.replace('_', ' '))}**")
        if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
            st.dataframe([{"item": k, "value": v} for k, v in value.items()], hide_index=True)
        else:
            st.json(value, expanded=False)
    with st.expander(f"{title} (raw JSON)"):
        st.json(obj, expanded=False)


def length_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """stats.json's cleaned length summaries as rows (field, unit, median, p95, ...); bad parts skipped."""
    cleaned = (stats.get("lengths") or {}).get("cleaned") if isinstance(stats.get("lengths"), dict) else None
    rows = []
    for fld, units in (cleaned or {}).items():
        for unit, d in (units or {}).items() if isinstance(units, dict) else ():
            if isinstance(d, dict):
                flat = {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
                rows.append({"field": fld, "unit": unit, **flat})
    return rows


def _key_stats(stats: dict[str, Any]) -> None:
    import streamlit as st

    splits = stats.get("splits") if isinstance(stats.get("splits"), dict) else {}
    cols = st.columns(1 + len(splits))
    total = stats.get("total_records")
    cols[0].metric("records", f"{total:,}" if isinstance(total, int) else "?")
    for col, (name, d) in zip(cols[1:], splits.items()):
        n = d.get("records") if isinstance(d, dict) else None
        col.metric(name, f"{n:,}" if isinstance(n, int) else "?")
    rows = length_rows(stats)
    if rows:
        st.markdown("**Lengths after cleaning**")
        st.dataframe(rows, hide_index=True)
    for note in stats.get("notes") or [] if isinstance(stats.get("notes"), list) else []:
        st.markdown(f"- {common.md_escape(note)}")  # notes quote file names and errors


def _splits(ws) -> None:
    import streamlit as st

    st.subheader("Prepared splits")
    if not ws.prep.is_dir():
        st.info(f"No prepared data in {ws.rel(ws.prep)}/ yet: run `catalogtune prepare` or the demo.")
        return
    c1, c2 = st.columns([1, 3])
    split = c1.selectbox("Split", SPLITS, key="data_split")
    query = c2.text_input("Search titles", key="data_query", placeholder="e.g. guitar")
    with common.guard():
        rows, total = search_split(ws.prep, split, query or "")
        st.caption(f"{total:,} matching record(s) in {split}; showing {min(total, PREVIEW_ROWS)}.")
        st.dataframe(rows, hide_index=True, height=320)


def _analysis(ws) -> None:
    import streamlit as st

    st.subheader("Analysis report")
    stats = common.json_or_none(ws.eda / "stats.json")
    if stats is None and not common.images(ws.eda):
        st.info(f"No analysis report in {ws.rel(ws.eda)}/ yet: run `catalogtune analyze`.")
        return
    if isinstance(stats, dict):
        _key_stats(stats)
    common.show_images(ws.eda)
    if stats is not None:
        with st.expander("stats.json (all statistics)"):
            st.json(stats, expanded=1)
    html = ws.eda / "report.html"
    if html.is_file():
        st.download_button("Download report.html", html.read_bytes(), file_name="report.html", mime="text/html")


def _quality(ws) -> None:
    import streamlit as st

    st.subheader("Quality report")
    report = common.json_or_none(ws.prep / "quality_report.json")
    if report is None:
        st.info(f"No quality report in {ws.rel(ws.prep)}/ yet.")
        return
    if isinstance(report, dict) and isinstance(report.get("dropped"), dict):
        _quality_view(report)
    else:
        show_report(report, "quality_report.json")


def drop_rows(report: dict[str, Any], key: str = "dropped") -> list[dict[str, Any]]:
    """A report's reason -> count mapping as rows, largest first, zero counts left out."""
    parsed = report.get("parsed") if isinstance(report.get("parsed"), int) else None
    reasons = report.get(key) if isinstance(report.get(key), dict) else {}
    rows = [{"reason": str(r).replace("_", " "), "records": n,
             "share of parsed": round(n / parsed, 4) if parsed else None}
            for r, n in reasons.items() if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return sorted(rows, key=lambda r: -r["records"])


def _quality_view(report: dict[str, Any]) -> None:
    import streamlit as st

    cols = st.columns(4)
    for col, (label, key) in zip(cols, [("read", "records_read"), ("kept", "kept"),
                                        ("dropped", "dropped_total"), ("malformed", "malformed_total")]):
        v = report.get(key)
        col.metric(label, f"{v:,}" if isinstance(v, int) else "-")
    for title, key in (("Why records were dropped", "dropped"), ("Malformed input lines", "malformed"),
                       ("Kept records changed by cleaning", "cleaned")):
        rows = drop_rows(report, key)
        st.markdown(f"**{title}**")
        if rows:
            st.dataframe(rows, hide_index=True)
        else:
            st.caption("none")
    with st.expander("quality_report.json (raw)"):
        st.json(report, expanded=1)


def render() -> None:
    """The Data page."""
    import streamlit as st

    st.title("Data")
    ws = common.workspace()
    tab_splits, tab_eda, tab_quality = st.tabs(["Splits", "Analysis", "Quality"])
    with tab_splits:
        _splits(ws)
    with tab_eda:
        _analysis(ws)
    with tab_quality:
        _quality(ws)
