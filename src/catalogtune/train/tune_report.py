"""The reports of `catalogtune tune`: best.yaml, trials.csv/json, importances.json, PNG plots, report.html."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.core.util import atomic_write, atomic_write_json, atomic_write_text, require

PER_TRIAL = ("data", "out", "resume", "overwrite", "memory_probe", "initial_val_loss")
"""Keys each trial sets itself (dropped from the base config and from best.yaml)."""
DECODING_SPACE: dict[str, tuple] = {
    "repetition_penalty": ("choice", [1.0, 1.1, 1.3]),
    "no_repeat_ngram_size": ("choice", [0, 3]),
}
"""Decoding keys searched with ``--objective rouge_l`` only (validation loss does not see decoding):
evaluate's repetition rules, applied to the output tokens as evaluate applies them. The best
values go to ``best_decoding.json`` as evaluate options; best.yaml stays a training preset."""


def _run_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"trial-{number:03d}"


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial that ran: number, state, value, params, steps, wall_s, ..., run_dir."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("WAITING", "RUNNING"):
            continue
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
                     "steps": t.user_attrs.get("steps"), "total_steps": t.user_attrs.get("total_steps"),
                     "wall_s": t.user_attrs.get("wall_s"),
                     "best_val_loss": t.user_attrs.get("best_val_loss"),
                     "pruned_at": t.last_step if t.state.name == "PRUNED" else None,
                     "run_dir": f"trials/trial-{t.number:03d}"})
    return rows


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances; {} with fewer than 3 complete trials (or no variation to explain)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def write_best(study: Any, out: Path, n_trials: int) -> dict[str, Any] | None:
    """OUT/best.yaml: the best trial's resolved config as a preset (no data/out); its summary."""
    import yaml

    try:
        t = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    run_dir = _run_dir(out, t.number)
    preset = {k: v for k, v in config.load_yaml(run_dir / "config.yaml").items() if k not in PER_TRIAL}
    head = (f"# catalogtune tune: best of {n_trials} trials (trial {t.number}, value {t.value:.6g}); run folder {run_dir}\n"
            f"# catalogtune train --config best.yaml --data DIR --out RUN_DIR\n")
    decoding = {k: t.params[k] for k in DECODING_SPACE if k in t.params}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in decoding.items())
    if decoding:  # evaluate options, not training keys: their own file, named in best.yaml's header
        head += f"# decoding of that trial (best_decoding.json): catalogtune evaluate ... {flags}\n"
        atomic_write_json(out / "best_decoding.json", {**decoding, "evaluate_flags": flags, "trial": t.number})
    else:
        (out / "best_decoding.json").unlink(missing_ok=True)
    atomic_write_text(out / "best.yaml", head + yaml.safe_dump(preset, sort_keys=False))
    return {"number": t.number, "value": t.value, "params": dict(t.params), "run_dir": str(run_dir), "config": preset,
            "decoding": decoding}


def write_reports(study: Any, cfg: Any, space: dict[str, tuple], rate: float | None,
                  unpruned: float | None = None) -> dict[str, Any] | None:
    """best.yaml, trials.csv/json, importances.json, history.png, params.png and report.html in OUT."""
    rows = trial_rows(study)
    best = write_best(study, cfg.out, len(rows))
    names = list(dict.fromkeys([*space, *(k for r in rows for k in r["params"])]))
    flat = [{**{k: v for k, v in r.items() if k != "params"}, **r["params"]} for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*(k for k in rows[0] if k != "params"), *names] if rows else ["number"])
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(cfg.out / "trials.csv", buf.getvalue())
    imp = importances(study)
    atomic_write_json(cfg.out / "trials.json", {"objective": cfg.objective, "direction": study.direction.name.lower(),
                                               "best": best, "trials_per_hour": rate,
                                               "trials_per_hour_unpruned": unpruned, "trials": rows})
    atomic_write_json(cfg.out / "importances.json", imp)
    plots = write_plots(cfg.out, rows, cfg.objective, [*imp, *(n for n in names if n not in imp)])
    write_html(cfg.out / "report.html", cfg, rows, best, imp, plots, rate, unpruned)
    return best


def write_plots(out: Path, rows: list[dict], objective: str, order: list[str]) -> list[tuple[Path, str]]:
    """history.png (objective per trial, best so far) and params.png (objective against the two most important keys)."""
    mpl = require("matplotlib", extra="tune")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        return []
    minimise = objective == "val_loss"
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], label="complete", zorder=3)
    best, line = math.inf if minimise else -math.inf, []
    for r in done:
        best = min(best, r["value"]) if minimise else max(best, r["value"])
        line.append(best)
    ax.step([r["number"] for r in done], line, where="post", color="C1", label="best so far")
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    if pruned:
        ax.scatter([r["number"] for r in pruned], [r["best_val_loss"] for r in pruned], marker="x", color="grey",
                   label="pruned (best val loss)" if minimise else None)
    ax.set(xlabel="trial", ylabel=objective, title="Objective per trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    paths = [(_save_png(fig, out / "history.png"), "Objective per trial (pruned trials: their best validation loss)")]
    keys = [k for k in order if len({str(r["params"].get(k)) for r in done}) > 1][:2]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = [(r["params"][key], r["value"]) for r in done if key in r["params"]]
            xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in pts]
            ax.scatter(xs, [p[1] for p in pts])
            if key == "lr":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel=key, ylabel=objective)
        paths.append((_save_png(fig, out / "params.png"), f"Objective against {' and '.join(keys)} (complete trials)"))
    return paths


def _save_png(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path


def write_html(path: Path, cfg: Any, rows: list[dict], best: dict | None, imp: dict[str, float],
               plots: list[tuple[Path, str]], rate: float | None, unpruned: float | None = None) -> None:
    """report.html: summary, best recipe, importances, plots and the trials table (self-contained)."""
    from catalogtune.core import htmlreport as h

    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [f"objective: {cfg.objective}; trials: " + ", ".join(f"{v} {k.lower()}" for k, v in states.items()),
             f"trials per hour (last invocation): {rate:.1f}" if rate else "trials per hour: -"]
    if rate and unpruned:
        lines.append(f"without pruning (pruned trials run to their planned steps at their own pace): {unpruned:.1f} trials per hour")
    if best:
        lines.append(f"best: trial {best['number']}, value {best['value']:.6g}; recipe in best.yaml")
    sections = [("Summary", "".join(h.paragraph(x) for x in lines))]
    if best:
        sections.append(("Best recipe", h.table([{"key": k, "value": v} for k, v in best["config"].items()], ["key", "value"])))
    sections.append(("Parameter importances", h.table([{"parameter": k, "importance": v} for k, v in imp.items()])
                     if imp else h.paragraph("needs at least 3 complete trials with varied parameters", "muted")))
    if plots:
        sections.append(("Plots", "".join(h.figure(p, cap) for p, cap in plots)))
    table = [{k: v for k, v in r.items() if k != "params"} | r["params"] for r in rows]
    sections.append(("Trials", h.table(table)))
    atomic_write_text(path, h.page("catalogtune hyper-parameter search", sections, subtitle=str(cfg.out)))
