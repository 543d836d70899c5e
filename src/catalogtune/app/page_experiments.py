"""Experiments page: every training run as a sortable leaderboard, loss curves of several runs on
one chart, a hyper-parameter search in the background, and two runs handed to the Compare page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalogtune.app import common, experiments, jobs
from catalogtune.app.page_compare import BASE, PICK_KEY
from catalogtune.core.util import CatalogtuneError

REFRESH_S = 3.0
"""How often the search panel refreshes while a search runs."""
SERIES = {"validation loss": ("val_loss",), "training loss": ("loss",), "both": ("loss", "val_loss")}
SEARCH_DEFAULTS: dict[str, Any] = {"trials": 8, "budget": "", "max_samples": 200, "seed": 0, "objective": "val_loss"}


def open_in_compare(a: str, b: str) -> None:
    """Hand two runs (``a`` may be :data:`BASE`) to the Compare page and switch to it."""
    import streamlit as st
    from streamlit.errors import StreamlitAPIException

    from catalogtune.app import page_compare

    st.session_state[PICK_KEY] = {"a": a, "b": b}
    try:
        st.switch_page(st.Page(page_compare.render, title="Compare", url_path="compare"),
                       query_params={"a": a, "b": b})
    except StreamlitAPIException:  # a page served on its own (tests), without Home.py's navigation
        st.info("Open the Compare page: these two runs are chosen there.")


def _leaderboard(ws: jobs.Workspace, runs: list[str]) -> list[dict[str, Any]]:
    import streamlit as st

    rows = experiments.leaderboard(ws, runs)
    c1, c2 = st.columns(2)
    order = c1.selectbox("Sort by", experiments.SORT_KEYS, key="ex_sort",
                         help="losses and times ascend, scores and speeds descend; click a column to re-sort")
    searches = ["all runs", "runs outside searches", *ws.searches()]
    scope = c2.selectbox("Show", searches, key="ex_scope")
    if scope == "runs outside searches":
        rows = [r for r in rows if not r["search"]]
    elif scope != "all runs":
        rows = [r for r in rows if r["search"] == scope]
    rows = experiments.sort_rows(rows, order)
    # st.dataframe shows cell text as text (no Markdown), and sorts on a header click.
    st.dataframe(rows, hide_index=True, column_config={
        "lr": st.column_config.NumberColumn(format="%.1e"),
        "wall_s": st.column_config.NumberColumn("wall s", format="%.0f"),
        "useful_tokens_per_s": st.column_config.NumberColumn("useful tokens/s", format="%.0f"),
        "best_val_loss": st.column_config.NumberColumn("best val loss", format="%.4f"),
    })
    if not any(r["eval_report"] for r in rows):
        st.caption("No evaluation report names these runs yet: the eval_ columns fill in after "
                   "`catalogtune evaluate --run RUN` (or the Evaluation page).")
    return rows


def _curves(ws: jobs.Workspace, rows: list[dict[str, Any]]) -> None:
    import streamlit as st

    st.subheader("Loss curves")
    names = [r["run"] for r in rows]
    scored = [r["run"] for r in experiments.sort_rows(rows, "best_val_loss") if r["best_val_loss"] is not None]
    chosen = st.multiselect("Runs", names, default=(scored or names)[:3], key="ex_curves")
    which = st.radio("Loss", list(SERIES), horizontal=True, key="ex_series")
    if not chosen:
        st.caption("Choose runs to draw their curves.")
        return
    frame = experiments.curves(ws, chosen, SERIES[which])
    if not len(frame):
        st.caption("These runs have no such loss in their metrics.jsonl yet.")
        return
    import altair as alt  # streamlit's own charting dependency

    chart = alt.Chart(frame).mark_line(point=which == "validation loss").encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title="run"), strokeDash=alt.StrokeDash("series:N", title=None),
        tooltip=["run", "series", "step", "value"],
    )
    st.altair_chart(chart.properties(height=320), width="stretch")


def _pick(runs: list[str]) -> None:
    import streamlit as st

    st.subheader("Compare two runs")
    if not runs:
        st.caption("No training runs yet.")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    a = c1.selectbox("Left", [BASE, *runs], key="ex_pick_a",
                     format_func=lambda r: "base model (no adapter)" if r == BASE else r)
    b = c2.selectbox("Right", runs, key="ex_pick_b")
    c3.write("")  # aligns the button with the boxes
    if c3.button("Open in Compare", key="ex_open", type="primary"):
        if a == b:
            st.error("Choose two different runs (or the base model on the left).")
        else:
            open_in_compare(a, b)


def _search_form(ws: jobs.Workspace) -> tuple[str, dict[str, Any], bool]:
    import streamlit as st

    from catalogtune.app.page_finetune import defaults

    searches = ws.searches()
    with st.form("search_form"):
        folder = st.text_input("Search folder (inside the workspace)", value=searches[0] if searches else "tune",
                               key="ex_out")
        c1, c2, c3 = st.columns(3)
        s: dict[str, Any] = {
            "model": c1.text_input("Base model", value=str(defaults()["model"]), key="ex_model"),
            "trials": c2.number_input("Trials (0 = until the budget)", 0, 10_000, SEARCH_DEFAULTS["trials"], key="ex_trials"),
            "budget": c3.text_input("Time budget (e.g. 20m, 1h; empty = none)", value="", key="ex_budget"),
            "max_samples": c1.number_input("Training records per trial (0 = all)", 0, 100_000_000,
                                           SEARCH_DEFAULTS["max_samples"], key="ex_n"),
            "seed": c2.number_input("Seed", 0, 2**31 - 1, 0, key="ex_seed"),
            "objective": c3.selectbox("Objective", ["val_loss", "rouge_l"], key="ex_objective"),
        }
        started = st.form_submit_button("Start search", type="primary")
    if not s["trials"] and not str(s["budget"]).strip():
        s["trials"] = SEARCH_DEFAULTS["trials"]  # tune needs one of them; never an endless search
    return folder, s, started


def _start(ws: jobs.Workspace, out: Path, settings: dict[str, Any], resume: bool = False,
           status: jobs.JobStatus | None = None) -> int:
    """Start (or resume: the recorded command again, which continues the study) a search."""
    if resume and status is not None and status.argv[:1] == ["tune"]:
        argv = list(status.argv)
    else:
        if not resume and any((out / n).exists() for n in jobs.SEARCH_FILES):
            raise CatalogtuneError(f"{ws.rel(out)!r} already holds a search: Resume it, or choose another folder")
        base = out / "base.yaml"
        argv = experiments.tune_argv(ws, out, settings, base if settings.get("max_samples") or base.is_file() else None)
        if settings.get("max_samples") and not (resume and base.is_file()):
            experiments.write_base(out, settings)  # after the checks: a refused start writes nothing
    log = ws.root / ".jobs" / f"{ws.job_key(out)}.log"
    return jobs.start(ws, out, argv, log, token=common.token(), kind="search")


def _search_panel(ws: jobs.Workspace, out: Path, settings: dict[str, Any]) -> None:
    import streamlit as st

    status = jobs.status(ws, out)
    label = "no search started from here yet" if status.state == "none" else status.state
    st.markdown(f"**{common.md_escape(ws.rel(out))}**: {label}" + (f" (pid {status.pid})" if status.alive else ""))
    trial = experiments.current_trial(ws, out)
    if trial is not None and status.alive:
        rel, prog = trial
        step, total = prog.get("step"), prog.get("total_steps")
        if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
            st.progress(min(1.0, max(0.0, step / total)), text=f"{rel}: step {int(step)} / {int(total)}")
    if (out / "report.html").is_file():
        st.download_button("Download the search report (report.html)", (out / "report.html").read_bytes(),
                           file_name="tune_report.html", mime="text/html", key="ex_report")
    b1, b2 = st.columns(2)
    if b1.button("Cancel search", disabled=not status.alive, key="ex_cancel"):
        jobs.cancel(ws, out)
        st.toast("Cancel requested: the running trial saves its run, then the search writes its reports.")
    can_resume = not status.alive and status.state in ("cancelled", "failed", "died", "finished")
    if b2.button("Resume search", disabled=not can_resume, key="ex_resume",
                 help="the same command again: the study continues up to its trials/budget"):
        with common.guard():
            _start(ws, out, settings, resume=True, status=status)
            st.rerun()
    if status.log_tail:
        with st.expander("search log (end)", expanded=status.state in ("failed", "died")):
            st.code(common.plain(status.log_tail[-3000:]), language=None)
    if status.alive != st.session_state.get("ex_was_alive", status.alive):
        st.session_state["ex_was_alive"] = status.alive
        st.rerun()  # started or ended: redraw the leaderboard and the buttons
    st.session_state["ex_was_alive"] = status.alive


def _search(ws: jobs.Workspace) -> None:
    import streamlit as st

    st.subheader("Hyper-parameter search")
    st.caption("Runs `catalogtune tune` in the background: each trial is a run folder "
               "(SEARCH/trials/trial-NNN) that appears in the leaderboard above.")
    folder, settings, started = _search_form(ws)
    try:
        out = experiments.check_search_dir(ws, folder)
    except CatalogtuneError as exc:
        st.error(common.md_escape(str(exc)))
        return
    if started:
        with common.guard():
            pid = _start(ws, out, settings)
            st.success(f"Search started in the background (pid {pid}); it keeps running if you close the page.")
    alive = jobs.status(ws, out).alive
    st.session_state["ex_was_alive"] = alive
    st.fragment(run_every=REFRESH_S if alive else None)(_search_panel)(ws, out, settings)


def render() -> None:
    """The Experiments page."""
    import streamlit as st

    st.title("Experiments")
    ws = common.workspace()
    runs = ws.all_runs()
    if runs:
        rows = _leaderboard(ws, runs)
        _curves(ws, rows)
    else:
        st.info("No training runs in the workspace yet: start one on the Fine-tune page or below.")
    _pick(runs)
    _search(ws)
