"""`catalogtune tune`: hyper-parameter search over the training recipe (Optuna: TPE + median pruning).

``run(TuneConfig(data=DIR, out=TUNE_DIR))`` trains one ordinary run folder per trial,
``TUNE_DIR/trials/trial-NNN`` (``catalogtune evaluate --run`` works on each), and writes
``best.yaml`` (the best trial's recipe: ``catalogtune train --config best.yaml``),
``trials.csv``/``trials.json``, ``importances.json``, ``history.png``, ``params.png`` and
``report.html``. The study lives in ``TUNE_DIR/study.db`` (SQLite): the same command on the same
folder resumes, a trial that was running when the search was killed is marked FAIL and its
parameters are queued again; ``--trials`` and ``--budget`` count the whole study, not one
invocation. ``TUNE_DIR/.lock`` (``fcntl.flock``) refuses a second search on one folder.

Search space (:data:`SPACE`; a key that ``--config BASE.yaml`` sets is fixed at that value),
bounded for a 2-core CPU where a SmolLM2 trial costs minutes, so a budget holds tens of trials:
lr log-uniform 1e-4..3e-3 (below, LoRA barely moves in a few hundred steps; above, it diverges
without a long warmup); LoRA rank {4, 8, 16, 32} with alpha = 2 x rank (the scale alpha/r stays
2, so the rank and the learning rate do not stand in for each other; rank 64 costs memory and
time for no gain at this data size); batch size {4, 8, 16} (16 x 256 tokens is the most a
2-core step holds at a few seconds); target modules all-linear or attention only; lora_dropout
{0, 0.05} (0 keeps the fused CPU kernels, about 2x faster); epochs {1, 2, 3} unless the base
sets epochs or max_steps (longer trials mostly win a best-loss objective, so this range is
short). Pruning compares validation losses at equal optimizer steps (``eval_every`` of the base).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_write_json, require
from catalogtune.train.stage import TrainConfig
from catalogtune.train.tune_report import DECODING_SPACE, PER_TRIAL, _run_dir, write_reports

STUDY = "catalogtune"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGETS = {"all-linear": ["all-linear"], "attention": ATTENTION}
SPACE: dict[str, tuple] = {
    "lr": ("log", 1e-4, 3e-3),
    "lora_r": ("choice", [4, 8, 16, 32]),
    "batch_size": ("choice", [4, 8, 16]),
    "target_modules": ("choice", ["all-linear", "attention"]),
    "lora_dropout": ("choice", [0.0, 0.05]),
    "epochs": ("choice", [1.0, 2.0, 3.0]),
}
"""Searched TrainConfig keys: ("log", low, high) or ("choice", values); with the rouge_l objective
also ``DECODING_SPACE`` (in tune_report, which writes its best values)."""

_BUDGET = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_budget(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``20m``, ``1h`` or ``1h30m``; anything else is a one-line error."""
    m = _BUDGET.fullmatch(text.strip())
    seconds = 0 if m is None else sum(int(g or 0) * k for g, k in zip(m.groups(), (3600, 60, 1)))
    if m is None or seconds <= 0:
        raise CatalogtuneError(f"--budget {text!r}: give a duration such as 90s, 20m, 1h or 1h30m")
    return float(seconds)


@dataclass
class TuneConfig:
    """Options of one hyper-parameter search (`--flags`)."""

    data: Path
    """Prepared data folder with train.parquet and val.parquet."""
    out: Path
    """Search folder: study.db, trials/trial-NNN/, best.yaml, trials.csv, report.html."""
    base: Path | None = None
    """TrainConfig preset every trial starts from (--config); the searched keys it sets stay fixed."""
    model: str | None = None
    """Base model (overrides the base config's)."""
    trials: int | None = None
    """Trials in the whole study, complete or pruned; 20 when neither this nor --budget is given."""
    budget: str | None = None
    """Time for the whole study, such as 90s, 20m, 1h or 1h30m; no trial starts after it (the last one may run past)."""
    seed: int = 0
    """Seed of the TPE sampler (a fresh folder with the same seed proposes the same trials)."""
    objective: str = "val_loss"
    """val_loss (the trial's best validation loss, minimised) or rouge_l (greedy outputs on the first validation records, maximised)."""
    startup_trials: int = 3
    """Trials that run to the end before the median pruner may stop any."""
    warmup_steps: int | None = None
    """Steps before a trial may be pruned (default: the base config's eval_every)."""
    rouge_samples: int = 16
    """rouge_l: validation records generated per trial."""
    rouge_tokens: int = 48
    """rouge_l: new tokens per output."""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.base = None if self.base is None else Path(self.base)
        if self.budget is not None:
            parse_budget(str(self.budget))
        elif self.trials is None:
            self.trials = 20
        if self.trials is not None and self.trials <= 0:
            raise CatalogtuneError(f"--trials must be positive (got {self.trials})")
        if self.objective not in ("val_loss", "rouge_l"):
            raise CatalogtuneError(f"--objective must be val_loss or rouge_l (got {self.objective!r})")
        if self.startup_trials < 0 or (self.warmup_steps or 0) < 0 or self.rouge_samples <= 0 or self.rouge_tokens <= 0:
            raise CatalogtuneError("startup_trials and warmup_steps may not be negative; rouge_samples and rouge_tokens must be positive")

    @property
    def budget_s(self) -> float | None:
        """--budget in seconds (None: no time limit)."""
        return None if self.budget is None else parse_budget(str(self.budget))


@dataclass
class TuneResult:
    """What a search left in its folder."""

    out: Path
    """The search folder."""
    best: dict[str, Any] | None
    """The best trial: number, value, params, run_dir (None before the first complete trial)."""
    counts: dict[str, int]
    """Trials per state (COMPLETE, PRUNED, FAIL) in the whole study."""
    trials_per_hour: float | None
    """Trials finished per hour in this invocation."""
    interrupted: bool = False
    """Ctrl-C/SIGTERM stopped the search (the reports were written all the same)."""
    trials_per_hour_unpruned: float | None = None
    """The same invocation's rate had its pruned trials run to the end (:func:`unpruned_rate`)."""


# -- search space and trials -----------------------------------------------------------------
def search_space(base: dict[str, Any], objective: str = "val_loss") -> dict[str, tuple]:
    """The part of :data:`SPACE` that ``base`` leaves open (max_steps fixes the length: no epochs),
    plus :data:`DECODING_SPACE` when the objective scores generated text."""
    fixed = set(base) | ({"epochs"} if base.get("max_steps") is not None else set())
    return {k: v for k, v in SPACE.items() if k not in fixed} | (DECODING_SPACE if objective == "rouge_l" else {})


def suggest(trial: Any, space: dict[str, tuple]) -> dict[str, Any]:
    """Draw one value per open key from ``trial`` (Optuna labels: target_modules is a name)."""
    return {k: trial.suggest_float(k, s[1], s[2], log=True) if s[0] == "log" else trial.suggest_categorical(k, s[1])
            for k, s in space.items()}


def trial_config(base: dict[str, Any], params: dict[str, Any], data: Path, run_dir: Path,
                 initial_val_loss: float | None = None) -> TrainConfig:
    """The TrainConfig of one trial: base, then params; alpha = 2 x rank unless the base fixes alpha.

    Trials skip the memory probe (a trial too big for memory ends FAIL and the search goes on)
    and, once the study knows it, the step-0 validation (``initial_val_loss``: the same base model
    on the same validation records in every trial); together about 15 % of a 16-step trial of
    smollm2-135m on 2 cores.
    """
    values = {**base, **params, "memory_probe": False, "initial_val_loss": initial_val_loss}
    if "target_modules" in params:
        values["target_modules"] = TARGETS[params["target_modules"]]
    if "lora_alpha" not in base:
        values["lora_alpha"] = 2 * int(values.get("lora_r", 16))
    return config.build(TrainConfig, values, data=data, out=run_dir, overwrite=True)


class PruneCheck:
    """Step callback: reports each new validation loss to the trial; asks the loop to stop once pruned.

    The stop goes through the loop's own SIGTERM path (finish the step, write the adapter and
    summary.json), so a pruned trial is still a complete run folder and no traceback is printed.
    """

    def __init__(self, trial: Any, sign: float = 1.0):
        self.trial, self.sign, self.seen, self.pruned_at = trial, sign, 0, None

    def __call__(self, step: int, loop: Any) -> None:
        history = loop.state.val_history
        for at, val in history[self.seen:]:
            self.trial.report(self.sign * val, int(at))  # sign: the study's direction (rouge_l maximises)
        fresh, self.seen = len(history) > self.seen, len(history)
        if fresh and step < loop.total and self.trial.should_prune():
            self.pruned_at = step
            loop.stop.signum = signal.SIGTERM


def objective(trial: Any, cfg: TuneConfig, base: dict[str, Any], space: dict[str, tuple], flags: dict) -> float:
    """Train one trial's run folder; its best validation loss (or ROUGE-L). Raises TrialPruned when pruned.

    Ctrl-C/SIGTERM during training: the loop saves the run, the trial ends FAIL (value NaN, no
    traceback), its parameters are queued for the next start and the study stops.
    """
    import optuna

    from catalogtune.train.stage import run as train

    run_dir = _run_dir(cfg.out, trial.number)
    known = trial.study.user_attrs.get("initial_val_loss")
    params = suggest(trial, space)
    decoding = {k: params.pop(k) for k in DECODING_SPACE if k in params}
    tcfg = trial_config(base, params, cfg.data, run_dir, known)
    check = PruneCheck(trial, 1.0 if cfg.objective == "val_loss" else -1.0)
    try:
        s = train(tcfg, callback=check).summary
    except KeyboardInterrupt:  # before or after the loop's own signal handling
        trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    for key in ("steps", "total_steps", "wall_s", "best_val_loss", "best_step"):
        trial.set_user_attr(key, s.get(key))
    if known is None and s.get("initial_val_loss") is not None:
        trial.study.set_user_attr("initial_val_loss", float(s["initial_val_loss"]))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # adapter + summary stay; GBs over a search
    if check.pruned_at is not None:
        atomic_write_json(run_dir / "summary.json", {**s, "stopped": "pruned"})
        raise optuna.TrialPruned(f"pruned at step {check.pruned_at}")
    if s["stopped"] == "cancelled":
        trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        flags["interrupted"] = True
        trial.study.stop()
        return math.nan
    if cfg.objective == "rouge_l":
        value = rouge_l(run_dir, cfg.data, cfg.rouge_samples, cfg.rouge_tokens, decoding)
        trial.set_user_attr("rouge_l", value)
        return value
    return float(s["best_val_loss"])


def rouge_l(run_dir: Path, data: Path, n: int, max_new_tokens: int, decoding: dict[str, Any] | None = None) -> float:
    """Mean ROUGE-L F (stemmed, as ``evaluate``) of greedy outputs for the first ``n`` validation records.

    ``decoding`` overrides evaluate's ``repetition_penalty`` / ``no_repeat_ngram_size`` (the trial's).

    A minimal copy of ``infer.Generator`` + ``evaluate.metrics.rouge``: `train` may not import
    those later stages (tests/test_layout.py), so this uses core and peft directly.
    """
    import peft
    import torch

    from catalogtune.core import models, prompt
    from catalogtune.core.decoding import DECODING, output_rules
    from catalogtune.train.batches import read_split
    from catalogtune.train.model import bf16_supported
    from catalogtune.train.stage import load_config

    scorer = require("rouge_score.rouge_scorer", extra="eval", package="rouge-score").RougeScorer(["rougeL"], use_stemmer=True)
    rows = read_split(data, "val", limit=n)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base, tok = models.load(load_config(run_dir).model, device=device)
    model = peft.PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    tok.padding_side = "left"
    special = not getattr(tok, "chat_template", None)  # chat templates write their own BOS
    kw = DECODING.kwargs(max_new_tokens=max_new_tokens)
    kw.pop("ground_penalty", None)  # off by default; this bare loop has no GroundedNames (rouge objective only)
    kw.pop("guidance", None)  # nor title guidance: trials compare recipes under the plain greedy rule, at half the cost
    rules = (kw.pop("repetition_penalty"), kw.pop("no_repeat_ngram_size"))
    if decoding:
        rules = (float(decoding.get("repetition_penalty", rules[0])), int(decoding.get("no_repeat_ngram_size", rules[1])))
    if kw.pop("penalty_scope") == "all":
        kw.update(repetition_penalty=rules[0], no_repeat_ngram_size=rules[1])
        rules = (1.0, 0)
    fast = device == "cpu" and bf16_supported()
    outs: list[str] = []
    for i in range(0, len(rows), 8):
        enc = tok([prompt.build_prompt(tok, r["title"]) for r in rows[i:i + 8]], return_tensors="pt",
                  padding=True, add_special_tokens=special).to(device)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            ids = model.generate(**enc, **kw, eos_token_id=prompt.stop_token_ids(tok), pad_token_id=tok.pad_token_id,
                                 logits_processor=output_rules(enc["input_ids"].shape[1], *rules))
        outs += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    scores = [scorer.score(r["content"], o.strip())["rougeL"].fmeasure for r, o in zip(rows, outs)]
    return float(sum(scores) / max(1, len(scores)))


# -- the study -------------------------------------------------------------------------------
def folder_lock(out: Path) -> Any:
    """Hold ``OUT/.lock`` for the search (``core.locks``: dies with the process); a second search is a one-line error."""
    from catalogtune.core.locks import folder_lock as _folder_lock

    out.mkdir(parents=True, exist_ok=True)
    return _folder_lock(out / ".lock", f"the search in {out}", target=out)


def open_study(cfg: TuneConfig, base: dict[str, Any], eval_every: int) -> Any:
    """Create or load ``OUT/study.db``; refuse one made with another objective or base config."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{(cfg.out / 'study.db').resolve()}", study_name=STUDY, load_if_exists=True,
        direction="minimize" if cfg.objective == "val_loss" else "maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                           n_warmup_steps=eval_every if cfg.warmup_steps is None else cfg.warmup_steps))
    settings = {"objective": cfg.objective, "base": base}
    old = study.user_attrs.get("settings")
    if old is None:
        study.set_user_attr("settings", settings)
    elif old != settings:
        changed = sorted(k for k in set(old["base"]) | set(settings["base"]) if old["base"].get(k) != base.get(k))
        what = "objective" if old["objective"] != cfg.objective else "base config (" + ", ".join(changed) + ")"
        raise CatalogtuneError(f"{cfg.out} holds a search with another {what}; use another --out")
    return study


def recover(study: Any, out: Path) -> list[int]:
    """Trials left RUNNING by a killed search: mark FAIL, drop their half-written folder, queue their params."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        if not (_run_dir(out, t.number) / "summary.json").is_file():
            shutil.rmtree(_run_dir(out, t.number), ignore_errors=True)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [t.number for t in stale]


def load_base(cfg: TuneConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The base preset (minus per-trial keys, plus --model) and its TrainConfig, checked before any training."""
    from catalogtune.train.batches import read_split

    base = config.load_yaml(cfg.base) if cfg.base is not None else {}
    base = {k: v for k, v in base.items() if k not in PER_TRIAL}
    if cfg.model:
        base["model"] = cfg.model
    checked = config.build(TrainConfig, base, data=cfg.data, out=cfg.out)
    if cfg.objective == "val_loss" and checked.eval_every == 0:
        raise CatalogtuneError("objective val_loss needs validation: the base config sets eval_every 0")
    read_split(cfg.data, "train", limit=1)  # missing data -> one-line error now
    read_split(cfg.data, "val", limit=1)
    if not search_space(base, cfg.objective):
        raise CatalogtuneError(f"the base config fixes every searched key ({', '.join(SPACE)}): nothing to search")
    return base, checked


def run(cfg: TuneConfig) -> TuneResult:
    """Run (or resume) the search in ``cfg.out`` until --trials or --budget; then write the reports."""
    require("optuna", extra="tune")
    require("matplotlib", extra="tune")
    from optuna.trial import TrialState

    base, checked = load_base(cfg)
    space = search_space(base, cfg.objective)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    with folder_lock(cfg.out):
        study = open_study(cfg, base, checked.eval_every)
        for n in recover(study, cfg.out):
            print(f"trial {n} was running when the last search stopped: marked FAIL, queued again", flush=True)
        spent = float(study.user_attrs.get("spent_s", 0.0))
        left_n = None if cfg.trials is None else cfg.trials - len(study.get_trials(deepcopy=False, states=done_states))
        left_s = None if cfg.budget_s is None else cfg.budget_s - spent
        print(f"searching {', '.join(space)}; fixed by the base: {', '.join(sorted(set(SPACE) - set(space))) or '-'}", flush=True)
        t0, finished, flags = time.time(), [], {"interrupted": False}

        def after_trial(study: Any, t: Any) -> None:
            finished.append(t.number)
            study.set_user_attr("spent_s", spent + time.time() - t0)
            print(f"trial {t.number}: {t.state.name.lower()} value {t.value} steps {t.user_attrs.get('steps')} "
                  f"{t.user_attrs.get('wall_s')} s {t.params}", flush=True)

        try:
            if (left_n is None or left_n > 0) and (left_s is None or left_s > 0):
                with _sigterm_interrupts():
                    study.optimize(lambda t: objective(t, cfg, base, space, flags), n_trials=left_n, timeout=left_s,
                                   callbacks=[after_trial], catch=(MemoryError, RuntimeError), gc_after_trial=True)
            else:
                print("the study already reached --trials/--budget: writing the reports only", flush=True)
        except KeyboardInterrupt:
            flags["interrupted"] = True
        finally:
            hours = (time.time() - t0) / 3600
            study.set_user_attr("spent_s", spent + hours * 3600)
        rate = len(finished) / hours if finished and hours > 0 else None
        unpruned = unpruned_rate(study, finished, hours * 3600)
        best = write_reports(study, cfg, space, rate, unpruned)
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in (*done_states, TrialState.FAIL)}
    return TuneResult(cfg.out, best, counts, rate, flags["interrupted"], unpruned)


def unpruned_rate(study: Any, numbers: list[int], elapsed_s: float) -> float | None:
    """Trials/hour this invocation would have reached without pruning: each pruned trial run to its end.

    A pruned trial's training time is extended at its own measured pace to the steps it had
    planned (``wall_s x total_steps / steps``); everything else (loading, the reports) is kept as
    measured. None when no trial finished here.
    """
    if not numbers or elapsed_s <= 0:
        return None
    extra = 0.0
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.number in numbers and t.state.name == "PRUNED" and a.get("steps") and a.get("total_steps") and a.get("wall_s"):
            extra += float(a["wall_s"]) * (int(a["total_steps"]) / int(a["steps"]) - 1.0)
    return len(numbers) / ((elapsed_s + extra) / 3600)


@contextlib.contextmanager
def _sigterm_interrupts() -> Any:
    """SIGTERM between trials acts as Ctrl-C, so the reports are still written (each trial's loop has its own)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str]) -> int:
    """`catalogtune tune --data DIR --out TUNE_DIR [--model NAME] [--trials N] [--budget 20m] [--config BASE.yaml]`."""
    p = argparse.ArgumentParser(prog="catalogtune tune", description=__doc__.splitlines()[0])
    p.add_argument("--config", dest="base", default=None, metavar="BASE.yaml",
                   help="TrainConfig preset every trial starts from; the searched keys it sets stay fixed")
    config.add_arguments(p, TuneConfig, skip=("base",))
    ns = p.parse_args(argv)
    if ns.data is None:
        raise CatalogtuneError("--data DIR is required (a folder made by `catalogtune prepare`)")
    if ns.out is None:
        raise CatalogtuneError("--out TUNE_DIR is required")
    res = run(config.from_namespace(TuneConfig, ns))
    rate = f"{res.trials_per_hour:.1f} trials/hour" if res.trials_per_hour else "no trial ran"
    if res.trials_per_hour and res.trials_per_hour_unpruned:
        rate += f" with pruning ({res.trials_per_hour_unpruned:.1f} projected without it)"
    best = (f"best trial {res.best['number']}: {res.best['value']:.6g} {res.best['params']}" if res.best
            else "no complete trial yet")
    print(f"{'interrupted; ' if res.interrupted else ''}{res.counts} in {res.out}; {rate}; {best}; "
          f"report {res.out / 'report.html'}")
    return 130 if res.interrupted else 0
