"""Fine-tune page: a form that starts training in the background, live progress, Cancel, Resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from catalogtune.app import common, jobs
from catalogtune.core.util import CatalogtuneError

# Fallbacks for when the train stage is not importable; its TrainConfig defaults win otherwise.
FALLBACK_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m", "max_samples": None, "epochs": 2.0, "batch_size": 8,
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lr": 2e-4,
}
FLAGS = {
    "model": "--model", "max_samples": "--max-samples", "epochs": "--epochs", "batch_size": "--batch-size",
    "lora_r": "--lora-r", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "lr": "--lr",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REFRESH_S = 2.0
"""How often the status panel refreshes while a job runs."""


def defaults() -> dict[str, Any]:
    """The form's defaults: the train stage's own (its default preset, else its dataclass)."""
    out = dict(FALLBACK_DEFAULTS)
    try:
        from catalogtune.train import stage as train
    except Exception:  # the stage may not be installed or may fail to import: keep fallbacks
        return out
    for f in dataclasses.fields(train.TrainConfig):
        if f.name in out and f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    preset = getattr(train, "DEFAULT_PRESET", None)
    if preset is not None and Path(preset).is_file():
        from catalogtune.core.config import load_yaml

        with contextlib.suppress(CatalogtuneError):
            out.update({k: v for k, v in load_yaml(preset).items() if k in out})
    return out


def check_model(ws: jobs.Workspace, name: str) -> str:
    """A model the trainer can load: a registered name, a hub id or a model folder in the workspace."""
    from catalogtune.core.models import REGISTRY

    name = (name or "").strip()
    if not name:
        raise CatalogtuneError("the model is empty (e.g. smollm2-135m)")
    if name in REGISTRY:
        return name
    if "/" in name or name.startswith("."):
        local = (ws.root / name).resolve() if not Path(name).is_absolute() else Path(name).resolve()
        if local.exists() or not _HUB_ID.match(name):
            path = ws.resolve(name, must_exist=True, what="model folder")
            if not (path / "config.json").is_file():
                raise CatalogtuneError(f"{ws.rel(path)!r} is not a model folder (no config.json)")
            return str(path)
        return name  # a hub id; the token field supplies HF_TOKEN for gated models
    raise CatalogtuneError(f"unknown model {name!r} (registered: {', '.join(REGISTRY)}; or org/name, or a folder)")


def check_run_dir(ws: jobs.Workspace, run_dir: Path) -> Path:
    """A run folder may not be the workspace itself or another stage's folder (it would clobber it)."""
    reserved = {ws.root, ws.prep, ws.eda, ws.index, ws.eval, ws.root / "runs", ws.root / ".jobs"}
    if run_dir in reserved or any(p in run_dir.parents for p in reserved - {ws.root, ws.root / "runs"}):
        raise CatalogtuneError(f"{ws.rel(run_dir)!r} is not a run folder: use run or runs/NAME")
    return run_dir


def train_argv(prep: Path, run_dir: Path, settings: dict[str, Any], resume: bool = False) -> list[str]:
    """The ``catalogtune train`` arguments for the form's settings."""
    argv = ["train", "--data", str(prep), "--out", str(run_dir)]
    for key, flag in FLAGS.items():
        if settings.get(key) is not None:
            argv += [flag, str(settings[key])]
    if settings.get("overwrite") and not resume:
        argv.append("--overwrite")
    return argv + (["--resume"] if resume else [])


def resume_argv(status: jobs.JobStatus, prep: Path, run_dir: Path, settings: dict[str, Any]) -> list[str]:
    """Resume with the command the run was started with (else the form's settings), plus --resume."""
    if status.argv and status.argv[0] == "train":
        return [a for a in status.argv if a != "--resume"] + ["--resume"]
    # Started elsewhere (CLI, demo): its saved config.yaml knows the settings better than the form.
    saved: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        from catalogtune.core.config import load_yaml

        with contextlib.suppress(CatalogtuneError):
            saved = {k: v for k, v in load_yaml(run_dir / "config.yaml").items() if k in FLAGS and v is not None}
    return train_argv(prep, run_dir, {**settings, **saved}, resume=True)


def fmt_eta(seconds: Any) -> str:
    """Seconds as ``1h 02m`` / ``3m 05s`` / ``12s``; unknown -> ``?``."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def loss_frame(rows: list[dict[str, Any]]):
    """metrics.jsonl rows as a long table (step, value, series) for one chart of both losses."""
    import pandas as pd

    data = [
        {"step": r["step"], "value": float(r[k]), "series": k}
        for r in rows
        for k in ("loss", "val_loss")
        if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
    ]
    return pd.DataFrame(data, columns=["step", "value", "series"])


def _form(ws: jobs.Workspace) -> tuple[str, dict[str, Any], bool]:
    import streamlit as st

    d = defaults()
    with st.form("train_form"):
        run_text = st.text_input("Run folder (inside the workspace)", value="runs/app-run", key="ft_run")
        model = st.text_input("Base model", value=str(d["model"]), key="ft_model",
                              help="a registered name (smollm2-135m, gemma3-270m, tiny-random), org/name, or a folder")
        c1, c2, c3 = st.columns(3)
        s = {
            "max_samples": c1.number_input("Training samples (0 = all)", 0, 100_000_000, int(d["max_samples"] or 0),
                                           key="ft_n"),
            "epochs": c2.number_input("Epochs", 0.01, 1000.0, float(d["epochs"]), 0.5, key="ft_epochs"),
            "batch_size": c3.number_input("Batch size", 1, 1024, int(d["batch_size"]), key="ft_bs"),
            "lora_r": c1.number_input("LoRA rank", 1, 1024, int(d["lora_r"]), key="ft_r"),
            "lora_alpha": c2.number_input("LoRA alpha", 1, 4096, int(d["lora_alpha"]), key="ft_alpha"),
            "lora_dropout": c3.number_input("LoRA dropout", 0.0, 0.9, float(d["lora_dropout"]), 0.01, key="ft_drop"),
            "lr": c1.number_input("Learning rate", 1e-7, 1.0, float(d["lr"]), format="%.1e", key="ft_lr"),
        }
        s["max_samples"] = s["max_samples"] or None  # 0 = every training record
        s["overwrite"] = st.checkbox("Overwrite a finished or stopped run in this folder", key="ft_overwrite")
        s["model"] = model
        started = st.form_submit_button("Start", type="primary")
    return run_text, s, started


def _status_panel(ws: jobs.Workspace, run_dir: Path, settings: dict[str, Any]) -> None:
    import streamlit as st

    status = jobs.status(ws, run_dir)
    prog = status.progress
    label = "no job started from here yet" if status.state == "none" else status.state
    st.markdown(f"**{common.md_escape(ws.rel(run_dir))}**: {label}" + (f" (pid {status.pid})" if status.alive else ""))
    step, total = prog.get("step"), prog.get("total_steps")
    if isinstance(step, (int, float)) and isinstance(total, (int, float)) and total > 0:
        st.progress(min(1.0, max(0.0, step / total)), text=f"step {int(step)} / {int(total)}")
    c = st.columns(4)
    c[0].metric("ETA", fmt_eta(prog.get("eta_s")) if status.alive else "-")
    for col, key in ((c[1], "loss"), (c[2], "val_loss")):
        v = prog.get(key)
        col.metric(key.replace("_", " "), f"{v:.4f}" if isinstance(v, (int, float)) else "-")
    rows = jobs.read_metrics(run_dir)
    tps = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
    c[3].metric("tokens/s", f"{tps[-1]:,.0f}" if tps else "-")
    frame = loss_frame(rows)
    if len(frame):
        import altair as alt  # streamlit's own charting dependency

        # Points as well as lines: validation loss is sparse and an early run has one step.
        chart = alt.Chart(frame).mark_line(point=True).encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title=None),
        )
        st.altair_chart(chart.properties(height=260), width="stretch")
    summary = common.json_or_none(run_dir / "summary.json") if not status.alive else None
    if isinstance(summary, dict):
        with st.expander("summary.json", expanded=status.state == "finished"):
            st.json(summary, expanded=True)
    b1, b2 = st.columns(2)
    if b1.button("Cancel", disabled=not status.alive, key="ft_cancel"):
        jobs.cancel(ws, run_dir)
        st.toast("Cancel requested: the trainer saves a checkpoint, then stops.")
    can_resume = not status.alive and status.state in ("cancelled", "failed", "died")
    if b2.button("Resume", disabled=not can_resume, key="ft_resume"):
        with common.guard():
            argv = resume_argv(status, ws.prep, run_dir, settings)
            jobs.start(ws, run_dir, argv, run_dir / "train.log", token=common.token(), kind="training")
            st.rerun()
    if status.log_tail:
        with st.expander("train.log (end)", expanded=status.state in ("failed", "died")):
            st.code(status.log_tail[-3000:], language=None)
    if status.alive != st.session_state.get("ft_was_alive", status.alive):
        st.session_state["ft_was_alive"] = status.alive
        st.rerun()  # the job started or ended: redraw the page (buttons, refresh timer)
    st.session_state["ft_was_alive"] = status.alive


def render() -> None:
    """The Fine-tune page."""
    import streamlit as st

    st.title("Fine-tune")
    ws = common.workspace()
    if ws.runs():
        st.caption("Runs in the workspace: " + ", ".join(ws.runs()))
    run_text, settings, started = _form(ws)
    try:
        run_dir = check_run_dir(ws, ws.resolve(run_text, what="run folder"))
    except CatalogtuneError as exc:
        st.error(common.md_escape(str(exc)))  # it quotes the typed path
        return
    if started:
        with common.guard():
            if not (ws.prep / "train.parquet").is_file():
                raise CatalogtuneError(f"no prepared data in {ws.rel(ws.prep)}/: run `catalogtune prepare` first")
            settings["model"] = check_model(ws, settings["model"])
            busy = jobs.status(ws, run_dir).alive  # then jobs.start says "already running"
            used = (run_dir / "checkpoints").is_dir() or (run_dir / "summary.json").is_file()
            if not busy and not settings.get("overwrite") and used:
                raise CatalogtuneError(f"{ws.rel(run_dir)!r} already holds a run: Resume it, tick Overwrite, "
                                       "or choose another run folder")
            pid = jobs.start(ws, run_dir, train_argv(ws.prep, run_dir, settings), run_dir / "train.log",
                             token=common.token(), kind="training")
            st.success(f"Training started in the background (pid {pid}); it keeps running if you close the page.")
    alive = jobs.status(ws, run_dir).alive
    st.session_state["ft_was_alive"] = alive
    st.subheader("Progress")
    st.fragment(run_every=REFRESH_S if alive else None)(_status_panel)(ws, run_dir, settings)
