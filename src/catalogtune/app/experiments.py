"""The Experiments page's data, without Streamlit: a leaderboard of the workspace's runs, their
loss curves, the evaluation reports that belong to them, and the ``catalogtune tune`` command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from catalogtune.app import common, jobs
from catalogtune.core.util import CatalogtuneError

RECIPE = ("model", "lr", "lora_r", "lora_alpha", "batch_size", "epochs", "max_samples")
"""config.yaml keys shown in the leaderboard."""
SUMMARY = ("best_val_loss", "steps", "wall_s", "useful_tokens_per_s")
"""summary.json keys shown in the leaderboard."""
EVAL_METRICS = ("rouge_l", "chrf", "cosine", "perplexity")
"""The fine-tuned system's metrics taken from an evaluation report of the run."""
SORT_KEYS = ("best_val_loss", "eval_rouge_l", "wall_s", "useful_tokens_per_s", "steps", "run")
"""Leaderboard orders offered on the page; losses and times ascend, scores and speeds descend."""
_DESCENDING = {"eval_rouge_l", "useful_tokens_per_s", "steps"}
MAX_POINTS = 400
"""Training-loss points per run on the chart (every k-th row); validation rows are all kept."""


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _yaml(path: Path) -> dict[str, Any]:
    from catalogtune.core.config import load_yaml

    try:
        data = load_yaml(path) if path.is_file() else {}
    except (CatalogtuneError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _report_run(ws: jobs.Workspace, report: dict[str, Any]) -> Path | None:
    """The run folder an evaluation report was made for (its config.run, relative paths tried in turn)."""
    run = (report.get("config") or {}).get("run") if isinstance(report.get("config"), dict) else None
    if not isinstance(run, str) or not run.strip():
        return None
    path = Path(run).expanduser()
    # The demo passes paths relative to where it ran (demo-out/run); the app passes absolute ones.
    for cand in ([path] if path.is_absolute() else [Path.cwd() / path, ws.root / path, ws.root.parent / path]):
        if cand.is_dir():
            return cand.resolve()
    return None


def eval_reports(ws: jobs.Workspace) -> dict[Path, tuple[str, dict[str, Any]]]:
    """Run folder -> (report folder, the report's systems) for every evaluation report found.

    Reports are ``eval/report.json`` and any ``report.json`` one or two levels down (``evals/x/``,
    ``runs/x/eval/``); when several name one run, the newest wins.
    """
    cands = [ws.eval, *ws._folders()]
    cands += [p / "eval" for p in cands if (p / "eval").is_dir()]
    found: dict[Path, tuple[float, str, dict[str, Any]]] = {}
    for folder in dict.fromkeys(cands):
        path = folder / "report.json"
        report = common.json_or_none(path) if path.is_file() else None
        if not isinstance(report, dict) or not isinstance(report.get("systems"), dict):
            continue
        run = _report_run(ws, report)
        if run is not None and (run not in found or path.stat().st_mtime > found[run][0]):
            found[run] = (path.stat().st_mtime, ws.rel(folder), report["systems"])
    return {run: (where, systems) for run, (_, where, systems) in found.items()}


def _trial_states(ws: jobs.Workspace) -> dict[str, str]:
    """Run path -> COMPLETE/PRUNED/FAIL from each search's trials.json."""
    states = {}
    for search in ws.searches():
        data = common.json_or_none(ws.root / search / "trials.json")
        for t in (data or {}).get("trials") or [] if isinstance(data, dict) else []:
            if isinstance(t, dict) and isinstance(t.get("run_dir"), str):
                states[f"{search}/{t['run_dir']}"] = str(t.get("state", "")).lower()
    return states


def run_state(run_dir: Path, summary: dict[str, Any], trial_state: str | None) -> str:
    """One word for a run: running, finished, cancelled, pruned, ... (progress.json, summary, trials.json)."""
    progress = common.json_or_none(run_dir / "progress.json")
    state = progress.get("state") if isinstance(progress, dict) else None
    if summary.get("stopped") == "pruned" or trial_state == "pruned":
        return "pruned"
    if state == "running" and not jobs.pid_alive(progress.get("pid")):
        return "died"
    return str(state or summary.get("stopped") or trial_state or ("finished" if summary else "-"))


def leaderboard(ws: jobs.Workspace, runs: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per run: recipe (config.yaml), results (summary.json), state, and evaluation metrics."""
    runs = ws.all_runs() if runs is None else runs
    reports, states, searches = eval_reports(ws), _trial_states(ws), ws.searches()
    rows = []
    for rel in runs:
        run_dir = ws.root / rel
        cfg, summary = _yaml(run_dir / "config.yaml"), common.json_or_none(run_dir / "summary.json")
        summary = summary if isinstance(summary, dict) else {}
        row: dict[str, Any] = {
            "run": rel, "search": next((s for s in searches if rel.startswith(s + "/trials/")), ""),
            "state": run_state(run_dir, summary, states.get(rel)),
        }
        model = str(cfg.get("model") or "")
        row["model"] = common.plain(Path(model).name if Path(model).is_absolute() else model)  # a folder: its name
        for key in RECIPE[1:]:
            row[key] = _number(cfg.get(key))
        for key in SUMMARY:
            row[key] = _number(summary.get(key))
        where, systems = reports.get(run_dir.resolve(), ("", {}))
        tuned = systems.get("finetuned") if isinstance(systems.get("finetuned"), dict) else {}
        for key in EVAL_METRICS:
            row[f"eval_{key}"] = _number(tuned.get(key))
        row["eval_report"] = where
        rows.append(row)
    return rows


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows ordered by ``key`` (see :data:`SORT_KEYS`); rows without a value go last."""
    if key not in SORT_KEYS:
        raise CatalogtuneError(f"cannot sort by {key!r} (one of {', '.join(SORT_KEYS)})")
    if key == "run":
        return sorted(rows, key=lambda r: r["run"])
    sign = -1.0 if key in _DESCENDING else 1.0
    return sorted(rows, key=lambda r: (r.get(key) is None, sign * (r.get(key) or 0.0), r["run"]))


def curves(ws: jobs.Workspace, runs: list[str], series: tuple[str, ...] = ("val_loss",)):
    """metrics.jsonl of several runs as one long table (step, value, run, series) for one chart."""
    import pandas as pd

    data = []
    for rel in runs:
        rows = jobs.read_metrics(ws.resolve(rel, what="run folder"))
        for name in series:
            pts = [r for r in rows if _number(r.get(name)) is not None]
            if name == "loss" and len(pts) > MAX_POINTS:
                pts = pts[:: math.ceil(len(pts) / MAX_POINTS)] + pts[-1:]
            data += [{"step": r["step"], "value": float(r[name]), "run": rel, "series": name} for r in pts]
    return pd.DataFrame(data, columns=["step", "value", "run", "series"])


def check_search_dir(ws: jobs.Workspace, text: str) -> Path:
    """A folder for a new search: inside the workspace, not another stage's folder nor a training run."""
    from catalogtune.app.page_finetune import check_run_dir

    path = ws.resolve(text, what="search folder")
    try:
        check_run_dir(ws, path)
    except CatalogtuneError:
        raise CatalogtuneError(f"{ws.rel(path)!r} is not a search folder: use e.g. tune or tune/NAME") from None
    if path == ws.root / "runs" or (path / "config.yaml").is_file() or (path / "adapter").is_dir():
        raise CatalogtuneError(f"{ws.rel(path)!r} holds a training run, not a search: choose another folder")
    return path


def tune_argv(ws: jobs.Workspace, out: Path, settings: dict[str, Any], base: Path | None = None) -> list[str]:
    """The ``catalogtune tune`` arguments for the page's settings (budget and trials both optional;
    ``base``: the preset every trial starts from)."""
    from catalogtune.app.page_finetune import check_model

    if not (ws.prep / "train.parquet").is_file() or not (ws.prep / "val.parquet").is_file():
        raise CatalogtuneError(f"no prepared train/val splits in {ws.rel(ws.prep)}/: run `catalogtune prepare` first")
    argv = ["tune", "--data", str(ws.prep), "--out", str(out), "--model", check_model(ws, settings.get("model", ""))]
    budget = str(settings.get("budget") or "").strip()
    if budget:
        from catalogtune.train.tune import parse_budget

        parse_budget(budget)  # "20 minutes" -> one line now, not a failed job
        argv += ["--budget", budget]
    if settings.get("trials"):
        argv += ["--trials", str(int(settings["trials"]))]
    argv += ["--seed", str(int(settings.get("seed") or 0)), "--objective", str(settings.get("objective", "val_loss"))]
    return argv + (["--config", str(base)] if base is not None else [])


def write_base(out: Path, settings: dict[str, Any]) -> None:
    """``OUT/base.yaml``: the fixed part of every trial's recipe (the training-record cap)."""
    from catalogtune.core.util import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "base.yaml", f"max_samples: {int(settings['max_samples'])}\n")


def current_trial(ws: jobs.Workspace, search: Path) -> tuple[str, dict[str, Any]] | None:
    """The newest trial folder of a search and its progress.json (None before the first trial)."""
    trials = sorted((search / "trials").glob("trial-*")) if (search / "trials").is_dir() else []
    for trial in reversed(trials):
        progress = common.json_or_none(trial / "progress.json")
        if isinstance(progress, dict):
            return ws.rel(trial), progress
    return None
