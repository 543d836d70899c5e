"""`catalogtune tune`: a resumable Optuna search whose trials are ordinary run folders."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from helpers import write_train_val  # noqa: E402

from catalogtune.cli import main  # noqa: E402
from catalogtune.core import config  # noqa: E402
from catalogtune.core.util import CatalogtuneError  # noqa: E402
from catalogtune.train import tune  # noqa: E402
from catalogtune.train.stage import TrainConfig  # noqa: E402


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    """(data folder, base preset for the tiny model: 4 steps, validation every 2, search folder)."""
    data = write_train_val(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(f"model: {tiny_model_dir}\nmax_length: 48\nmax_steps: 4\neval_every: 2\nsave_every: 2\n"
                    "patience: 0\nmemory_probe: false\n", encoding="utf-8")
    return data, base, tmp_path / "tune"


def _tune(data, base, out, *extra) -> int:
    return main(["tune", "--data", str(data), "--out", str(out), "--config", str(base), *extra])


def _study(out):
    import optuna

    return optuna.load_study(study_name=tune.STUDY, storage=f"sqlite:///{out / 'study.db'}")


def _states(out) -> list[str]:
    return [t.state.name for t in _study(out).get_trials()]


def test_search_resumes_after_a_kill_and_best_yaml_trains(setup, capsys):
    data, base, out = setup
    assert _tune(data, base, out, "--trials", "2") == 0
    assert _states(out) == ["COMPLETE", "COMPLETE"]
    # a search killed mid-trial: one trial left RUNNING in the db, its folder half-written
    study = _study(out)
    stale = study.ask()
    tune.suggest(stale, tune.search_space(tune.load_base(tune.TuneConfig(data, out, base=base))[0]))
    (out / "trials" / "trial-002").mkdir(parents=True)
    (out / "trials" / "trial-002" / "metrics.jsonl").write_text("{}\n", encoding="utf-8")

    assert _tune(data, base, out, "--trials", "3") == 0
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]  # one new trial
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == stale.params
    assert not (out / "trials" / "trial-002").exists()
    assert "trial 2 was running" in capsys.readouterr().out

    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert [r["number"] for r in rows] == [0, 1, 2, 3] and rows[0]["steps"] == 4 and rows[0]["wall_s"] > 0
    # the first trial measured the untrained model's validation loss; later ones reuse it, without the memory probe
    first = json.loads((out / "trials" / "trial-000" / "summary.json").read_text())["initial_val_loss"]
    later = config.load_yaml(out / "trials" / "trial-003" / "config.yaml")
    assert config.load_yaml(out / "trials" / "trial-000" / "config.yaml")["initial_val_loss"] is None
    assert later["initial_val_loss"] == first and later["memory_probe"] is False
    assert json.loads((out / "trials" / "trial-003" / "summary.json").read_text())["initial_val_loss"] == first
    assert len((out / "trials.csv").read_text().splitlines()) == 5
    html = (out / "report.html").read_text()
    assert "Trials" in html and "data:image/png;base64" in html and (out / "history.png").is_file()
    for n in (0, 1, 3):  # ordinary run folders, checkpoints dropped
        run = out / "trials" / f"trial-{n:03d}"
        assert (run / "adapter" / "adapter_config.json").is_file() and (run / "summary.json").is_file()
        assert not (run / "checkpoints").exists()

    assert "initial_val_loss" not in (out / "best.yaml").read_text()  # a retrain on other data measures its own
    cfg = config.build(TrainConfig, out / "best.yaml", data=data, out=out.parent / "retrain")
    best = json.loads((out / "trials.json").read_text())["best"]
    assert cfg.lr == best["params"]["lr"] and cfg.lora_alpha == 2 * cfg.lora_r
    from catalogtune.train.stage import run

    assert run(cfg).summary["steps"] == 4

    assert _tune(data, base, out, "--trials", "3") == 0  # nothing left: reports only
    assert len(_study(out).get_trials()) == 4
    assert _tune(data, base, out, "--trials", "3", "--objective", "rouge_l") == 2
    assert "another objective" in capsys.readouterr().err


def test_a_clearly_worse_trial_is_pruned_and_leaves_a_run_folder(setup, capsys):
    data, base, out = setup
    base.write_text(base.read_text().replace("max_steps: 4", "max_steps: 6") + "lora_r: 4\nbatch_size: 4\n"
                    "lora_dropout: 0.0\ntarget_modules: [all-linear]\n", encoding="utf-8")
    flags = ["--trials", "3", "--startup-trials", "2", "--warmup-steps", "2"]
    cfg = config.build(tune.TuneConfig, dict(data=data, out=out, base=base, startup_trials=2, warmup_steps=2))
    b, checked = tune.load_base(cfg)
    assert list(tune.search_space(b)) == ["lr"]
    out.mkdir()
    study = tune.open_study(cfg, b, checked.eval_every)
    for lr in (3e-3, 3e-3, 1e-4):  # the third learns far slower: worse than the median at step 2
        study.enqueue_trial({"lr": lr})
    assert _tune(data, base, out, *flags) == 0
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert trials[2].last_step == 2
    summary = json.loads((out / "trials" / "trial-002" / "summary.json").read_text())
    assert summary["stopped"] == "pruned" and summary["steps"] == 2
    assert (out / "trials" / "trial-002" / "adapter" / "adapter_config.json").is_file()
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    # without pruning the third trial would have run its 4 remaining steps: a lower rate, printed beside the real one
    report = json.loads((out / "trials.json").read_text())
    pruned = report["trials"][2]
    assert pruned["total_steps"] == 6 and pruned["steps"] == 2
    assert 0 < report["trials_per_hour_unpruned"] < report["trials_per_hour"]
    elapsed = 3 / report["trials_per_hour"] * 3600
    assert elapsed + 2 * pruned["wall_s"] == pytest.approx(3 / report["trials_per_hour_unpruned"] * 3600, rel=1e-6)
    assert "projected without it" in printed.out and "without pruning" in (out / "report.html").read_text()


def test_prune_check_reports_each_validation_and_stops_the_loop():
    class FakeTrial:
        def __init__(self, prune):
            self.reports, self.prune = [], prune

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return self.prune

    loop = SimpleNamespace(state=SimpleNamespace(val_history=[[0, 5.0]]), total=10, stop=SimpleNamespace(signum=None))
    keep = tune.PruneCheck(FakeTrial(False))
    keep(1, loop)
    loop.state.val_history.append([2, 4.0])
    keep(2, loop)
    keep(3, loop)  # no new validation: nothing reported
    assert keep.trial.reports == [(0, 5.0), (2, 4.0)] and loop.stop.signum is None
    drop = tune.PruneCheck(FakeTrial(True), sign=-1.0)  # rouge_l: the study maximises
    drop(2, loop)
    assert drop.trial.reports == [(0, -5.0), (2, -4.0)] and drop.pruned_at == 2 and loop.stop.signum == signal.SIGTERM
    last = tune.PruneCheck(FakeTrial(True))
    loop.stop.signum = None
    last(10, loop)  # the last step: nothing left to save by stopping
    assert last.pruned_at is None and loop.stop.signum is None


def test_ctrl_c_in_a_trial_saves_it_and_the_next_start_reruns_it(setup, monkeypatch, capsys):
    data, base, out = setup
    original = tune.PruneCheck.__call__

    def interrupt(self, step, loop):
        original(self, step, loop)
        if step == 2 and self.trial.number == 0:
            os.kill(os.getpid(), signal.SIGINT)  # the loop's handler: finish the step, save, "cancelled"

    monkeypatch.setattr(tune.PruneCheck, "__call__", interrupt)
    assert _tune(data, base, out, "--trials", "1") == 130
    assert json.loads((out / "trials" / "trial-000" / "summary.json").read_text())["stopped"] == "cancelled"
    assert (out / "report.html").is_file() and "Traceback" not in capsys.readouterr().err
    assert _tune(data, base, out, "--trials", "1") == 0
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0


def test_rouge_l_objective_is_maximised_within_a_study_wide_budget(setup, capsys, monkeypatch):
    import time

    data, base, out = setup
    real = tune.objective

    def slow(*args, **kwargs):  # a trial outlasts the 1 s budget however fast the CPU (it took ~0.6 s on one)
        t0 = time.time()
        value = real(*args, **kwargs)
        time.sleep(max(0.0, 1.5 - (time.time() - t0)))
        return value

    monkeypatch.setattr(tune, "objective", slow)
    flags = ["--budget", "1s", "--objective", "rouge_l", "--rouge-samples", "2", "--rouge-tokens", "4"]
    assert _tune(data, base, out, *flags) == 0  # no trial starts after the budget: exactly one runs
    (t,) = _study(out).get_trials()
    assert _study(out).direction.name == "MAXIMIZE" and 0.0 <= t.value <= 1.0 and t.user_attrs["rouge_l"] == t.value
    # rouge_l also searches evaluate's repetition rules; they go to best_decoding.json, not to the training preset
    assert set(tune.DECODING_SPACE) <= set(t.params)
    dec = json.loads((out / "best_decoding.json").read_text())
    assert dec["repetition_penalty"] == t.params["repetition_penalty"] and dec["trial"] == t.number
    assert dec["evaluate_flags"] == (f"--repetition-penalty {t.params['repetition_penalty']} "
                                     f"--no-repeat-ngram-size {t.params['no_repeat_ngram_size']}")
    best = config.load_yaml(out / "best.yaml")
    assert not set(tune.DECODING_SPACE) & set(best) and "best_decoding.json" in (out / "best.yaml").read_text()
    config.build(TrainConfig, best, data=data, out=out / "again")  # still a train preset
    assert not set(tune.DECODING_SPACE) & set(tune.search_space({}))  # validation loss cannot see decoding
    assert _tune(data, base, out, *flags) == 0  # the budget counts the whole study: spent already
    assert len(_study(out).get_trials()) == 1 and "already reached" in capsys.readouterr().out


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400), (" 2m ", 120)])
def test_budget_parses(text, seconds):
    assert tune.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "20", "1.5h", "20 m", "m", "0s", "1d", "-5m", "20mins", "1H", "30s1m"])
def test_bad_budget_is_a_one_line_error(setup, text, capsys):
    with pytest.raises(CatalogtuneError, match="--budget"):
        tune.parse_budget(text)
    data, base, out = setup
    assert _tune(data, base, out, f"--budget={text}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget" in err and not out.exists()


def test_bad_input_is_a_one_line_error(setup, tmp_path, capsys):
    data, base, out = setup
    assert _tune(tmp_path / "missing", base, out) == 2
    assert capsys.readouterr().err.count("\n") == 1
    full = tmp_path / "full.yaml"
    full.write_text(base.read_text() + "lr: 0.001\nlora_r: 8\nbatch_size: 8\ntarget_modules: [all-linear]\n"
                    "lora_dropout: 0.0\n", encoding="utf-8")
    assert _tune(data, full, out) == 2
    assert "nothing to search" in capsys.readouterr().err


def test_the_lock_refuses_a_second_search(setup, capsys):
    data, base, out = setup
    with tune.folder_lock(out):
        assert _tune(data, base, out, "--trials", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and not (out / "study.db").exists()


def test_base_config_fixes_keys_and_alpha_follows_the_rank(tmp_path):
    assert "epochs" not in tune.search_space({"max_steps": 4}) and "epochs" in tune.search_space({})
    assert list(tune.search_space({"lr": 1e-3, "lora_r": 8, "max_steps": 4})) == [
        "batch_size", "target_modules", "lora_dropout"]
    cfg = tune.trial_config({"max_steps": 4}, {"lora_r": 8, "target_modules": "attention"}, tmp_path, tmp_path / "r")
    assert cfg.lora_alpha == 16 and cfg.target_modules == tune.ATTENTION
    assert tune.trial_config({"lora_alpha": 4}, {"lora_r": 32}, tmp_path, tmp_path / "r").lora_alpha == 4


def test_importing_the_command_stays_light():
    import subprocess
    import sys

    code = "import sys, catalogtune.train.tune; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
