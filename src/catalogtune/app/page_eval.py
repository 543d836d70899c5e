"""Evaluation page: the report's tables and plots; start an evaluation in the background."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from catalogtune.app import common, jobs
from catalogtune.evaluate import compare
from catalogtune.core.util import CatalogtuneError

METRICS = ("perplexity", "rouge_l", "chrf", "cosine", "unsupported_rate", "invented_attribution_rate",
           "quote_style_share", "top_opening_share", "n")
"""Columns shown first, in this order; other numeric fields follow."""
SYSTEM_ORDER = ("base", "finetuned", "base+rag", "finetuned+rag", "title-copy", "retrieval-only")
DIFF_METRICS = ("rouge_l", "cosine", "bertscore_f1", "perplexity", "unsupported_rate", "invented_attribution", "quote_style")
"""Differences shown with their paired bootstrap intervals."""


def comparisons_table(comparisons: Any) -> list[dict[str, Any]]:
    """One row per (system, versus) pair: each metric's difference and 95 % interval as text."""
    if not isinstance(comparisons, list):
        return []
    rows = []
    for c in comparisons:
        if not isinstance(c, dict) or not isinstance(c.get("metrics"), dict):
            continue
        rows.append({"system": str(c.get("system")), "versus": str(c.get("versus")),
                     **{m: compare.fmt_diff(c["metrics"].get(m), ns=" not significant", no_interval="")
                        for m in DIFF_METRICS}})
    return rows
REFRESH_S = 3.0


def systems_table(systems: Any) -> list[dict[str, Any]]:
    """One row per system with its numeric metrics (known ones first); bad entries are skipped."""
    if not isinstance(systems, dict):
        return []
    names = [s for s in SYSTEM_ORDER if s in systems] + sorted(s for s in systems if s not in SYSTEM_ORDER)
    rows = []
    for name in names:
        m = systems[name]
        if not isinstance(m, dict):
            continue
        extra = sorted(k for k, v in m.items()
                       if k not in METRICS and isinstance(v, (int, float)) and not isinstance(v, bool))
        row: dict[str, Any] = {"system": name}
        for key in (*METRICS, *extra):
            v = m.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[key] = round(float(v), 4) if math.isfinite(v) and key != "n" else v
        rows.append(row)
    return rows


def eval_argv(ws: jobs.Workspace, run_dir: Path, limit: int, seen_limit: int | None = None) -> list[str]:
    """The ``catalogtune evaluate`` arguments for the page's settings."""
    if not (ws.prep / "test.parquet").is_file():
        raise CatalogtuneError(f"no test split in {ws.rel(ws.prep)}/: run `catalogtune prepare` first")
    argv = ["evaluate", "--data", str(ws.prep), "--run", str(run_dir)]
    if ws.index.is_dir():
        argv += ["--index", str(ws.index)]
    argv += ["--out", str(ws.eval)] + (["--limit", str(int(limit))] if limit else [])
    return argv + (["--seen-limit", str(int(seen_limit))] if seen_limit is not None else [])


def _report(ws: jobs.Workspace) -> None:
    import streamlit as st

    report = common.json_or_none(ws.eval / "report.json")
    if not isinstance(report, dict):
        st.info(f"No evaluation report in {ws.rel(ws.eval)}/ yet: start one below or run the demo.")
        return
    rows = systems_table(report.get("systems"))
    st.subheader("Test records (unseen products)")
    if rows:
        st.dataframe(rows, hide_index=True)
    else:
        st.warning("report.json has no systems")
    for verdict in report.get("verdicts") or []:
        st.text(str(verdict))  # plain text: never rendered as Markdown
    diffs = comparisons_table(report.get("comparisons"))
    if diffs:
        st.subheader("Differences (paired bootstrap 95 % intervals)")
        st.caption("A difference whose interval contains 0 is marked 'not significant'.")
        st.dataframe(diffs, hide_index=True)
    collapse = report.get("collapse")
    if isinstance(collapse, dict) and collapse:
        st.subheader("Collapse and diversity (reference = the real descriptions)")
        st.dataframe(systems_table(collapse), hide_index=True)
    seen = report.get("seen")
    if isinstance(seen, dict) and systems_table(seen.get("systems")):
        st.subheader("Training records (seen products)")
        st.dataframe(systems_table(seen.get("systems")), hide_index=True)
    common.show_images(ws.eval)
    html = ws.eval / "report.html"
    if html.is_file():
        st.download_button("Download report.html", html.read_bytes(), file_name="eval_report.html", mime="text/html")
    md = ws.eval / "report.md"
    if md.is_file():
        with st.expander("report.md"):
            # as source, not rendered: it quotes titles, paths and notes (the tables are above)
            st.code(common.plain(md.read_text(encoding="utf-8", errors="replace")), language="markdown")


def _status_panel(ws: jobs.Workspace) -> None:
    import streamlit as st

    status = jobs.status(ws, ws.eval)
    if status.state == "none":
        return
    st.markdown(f"Evaluation job: **{status.state}**" + (f" (pid {status.pid})" if status.alive else ""))
    if st.button("Cancel evaluation", disabled=not status.alive, key="ev_cancel"):
        jobs.cancel(ws, ws.eval)
    if status.log_tail:
        with st.expander("evaluation log (end)", expanded=status.state == "failed"):
            st.code(status.log_tail[-3000:], language=None)
    if status.alive != st.session_state.get("ev_was_alive", status.alive):
        st.session_state["ev_was_alive"] = status.alive
        st.rerun()  # finished: redraw the report
    st.session_state["ev_was_alive"] = status.alive


def render() -> None:
    """The Evaluation page."""
    import streamlit as st

    st.title("Evaluation")
    ws = common.workspace()
    _report(ws)
    st.subheader("Start an evaluation")
    runs = ws.runs()
    with st.form("eval_form"):
        run_text = st.text_input("Run folder", value=runs[0] if runs else "run", key="ev_run")
        c1, c2 = st.columns(2)
        limit = c1.number_input("Test records per system (0 = the whole test split)", 0, 100_000, 0, key="ev_limit")
        seen = c2.number_input("Training records per system (seen products; 0 = skip)", 0, 100_000, 20,
                               key="ev_seen")
        go = st.form_submit_button("Start evaluation", type="primary")
    if go:
        with common.guard():
            run_dir = ws.resolve(run_text, must_exist=True, what="run folder")
            pid = jobs.start(ws, ws.eval, eval_argv(ws, run_dir, int(limit), int(seen)), ws.root / ".jobs" / "eval.log",
                             token=common.token(), kind="evaluation")
            st.success(f"Evaluation started in the background (pid {pid}).")
    alive = jobs.status(ws, ws.eval).alive
    st.session_state["ev_was_alive"] = alive
    st.fragment(run_every=REFRESH_S if alive else None)(_status_panel)(ws)
