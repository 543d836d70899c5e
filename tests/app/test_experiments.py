"""The Experiments page (leaderboard, curves, search job, hand-off to Compare) and Compare's run boxes."""

from __future__ import annotations

import json
import sys

from helpers import wait_until
from pathlib import Path

import pytest

from catalogtune.app import experiments, jobs
from catalogtune.core.util import CatalogtuneError, atomic_write_json

# A stand-in for `catalogtune tune`: one trial folder, then trials.json; stops cleanly on SIGTERM.
FAKE_TUNE = r'''
import json, os, signal, sys, time
argv = sys.argv[1:]
out = argv[argv.index("--out") + 1]
os.makedirs(os.path.join(out, "trials", "trial-000"), exist_ok=True)
with open(os.path.join(out, "argv.json"), "w") as fh:
    json.dump(argv, fh)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
for _ in range(int(os.environ.get("FAKE_TUNE_TICKS", "2000"))):
    time.sleep(0.01)
with open(os.path.join(out, "trials.json"), "w") as fh:
    json.dump({"trials": []}, fh)
'''


def _run(root: Path, rel: str, lr: float, best: float | None, losses: list[float], **summary) -> Path:
    run = root / rel
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: tiny-random\nlr: {lr}\nlora_r: 8\nepochs: 2.0\nbatch_size: 4\n")
    if best is not None:
        atomic_write_json(run / "summary.json", {"best_val_loss": best, "steps": 10 * len(losses), "wall_s": 12.5,
                                                 "useful_tokens_per_s": 900.0, **summary})
    rows = [{"step": 10 * (i + 1), "loss": v + 0.3, "val_loss": v} for i, v in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')
    return run


@pytest.fixture()
def ews(tmp_path, monkeypatch) -> jobs.Workspace:
    """Two workspace runs, a two-trial search (one pruned) and an evaluation report naming `run`."""
    root = tmp_path / "ws"
    _run(root, "run", 2e-4, 1.5, [2.0, 1.5])
    _run(root, "runs/[x](javascript:alert(1))", 1e-3, None, [])  # a hostile folder name, no summary yet
    _run(root, "tune/trials/trial-000", 3e-4, 1.2, [1.8, 1.2])
    _run(root, "tune/trials/trial-001", 1e-4, 2.4, [2.4], stopped="pruned")
    atomic_write_json(root / "tune" / "trials.json", {"trials": [
        {"number": 0, "state": "COMPLETE", "run_dir": "trials/trial-000"},
        {"number": 1, "state": "PRUNED", "run_dir": "trials/trial-001"}]})
    (root / "prep").mkdir()
    for split in ("train", "val"):
        (root / "prep" / f"{split}.parquet").write_bytes(b"x")
    atomic_write_json(root / "eval" / "report.json", {
        "systems": {"finetuned": {"rouge_l": 0.31, "chrf": 28.0, "cosine": 0.7, "perplexity": 8.0}},
        "config": {"run": "ws/run"}})  # relative to where `evaluate` ran, as the demo writes it
    monkeypatch.setenv("CATALOGTUNE_WORKSPACE", str(root))
    return jobs.Workspace()


def _page(name: str):
    from streamlit.testing.v1 import AppTest

    def script(name: str):
        import importlib

        importlib.import_module(f"catalogtune.app.{name}").render()

    return AppTest.from_function(script, kwargs={"name": name}, default_timeout=30)


def test_discovery_leaderboard_and_curves(ews):
    assert ews.searches() == ["tune"]
    assert ews.all_runs() == ["run", "runs/[x](javascript:alert(1))", "tune/trials/trial-000", "tune/trials/trial-001"]
    rows = {r["run"]: r for r in experiments.leaderboard(ews)}
    assert rows["run"]["eval_rouge_l"] == pytest.approx(0.31) and rows["run"]["eval_report"] == "eval"
    assert rows["tune/trials/trial-000"]["eval_rouge_l"] is None  # the report names another run
    assert rows["tune/trials/trial-001"]["state"] == "pruned" and rows["tune/trials/trial-000"]["search"] == "tune"
    assert rows["run"]["lr"] == pytest.approx(2e-4) and rows["run"]["model"] == "tiny-random"
    order = [r["run"] for r in experiments.sort_rows(list(rows.values()), "best_val_loss")]
    assert order == ["tune/trials/trial-000", "run", "tune/trials/trial-001", "runs/[x](javascript:alert(1))"]
    assert [r["run"] for r in experiments.sort_rows(list(rows.values()), "eval_rouge_l")][0] == "run"
    with pytest.raises(CatalogtuneError, match="cannot sort"):
        experiments.sort_rows([], "nope")
    frame = experiments.curves(ews, ["run", "tune/trials/trial-000"], ("val_loss",))
    assert set(frame["run"]) == {"run", "tune/trials/trial-000"} and len(frame) == 4  # the torn line is skipped
    assert list(frame[frame["run"] == "run"]["value"]) == [2.0, 1.5]


def test_experiments_page_shows_runs_and_opens_compare(ews, monkeypatch):
    at = _page("page_experiments").run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["run"])[:2] == ["tune/trials/trial-000", "run"]  # best validation loss first
    assert "runs/[x](javascript:alert(1))" in list(table["run"])  # shown as text in the table
    assert at.multiselect(key="ex_curves").value == ["tune/trials/trial-000", "run", "tune/trials/trial-001"]
    assert len(at.get("vega_lite_chart")) == 1  # the curves of the three best runs on one chart
    at.selectbox(key="ex_scope").select("tune").run()
    assert set(at.dataframe[0].value["run"]) == {"tune/trials/trial-000", "tune/trials/trial-001"}
    at.selectbox(key="ex_pick_a").select("run")
    at.selectbox(key="ex_pick_b").select("run")
    at.button(key="ex_open").click().run()
    assert any("two different runs" in e.value for e in at.error)
    at.selectbox(key="ex_pick_b").select("tune/trials/trial-000")
    at.button(key="ex_open").click().run()
    assert at.session_state["cmp_pick"] == {"a": "run", "b": "tune/trials/trial-000"}
    # The Compare page preselects them (the page run on its own: from session state, then the URL).
    cmp = _page("page_compare")
    cmp.session_state["cmp_pick"] = {"a": "run", "b": "tune/trials/trial-000"}
    cmp.run()
    assert not cmp.exception
    assert cmp.selectbox(key="cmp_versus").value == "run"
    assert cmp.selectbox(key="cmp_pick_run").value == "tune/trials/trial-000"
    url = _page("page_compare")
    url.query_params["a"], url.query_params["b"] = "nowhere", "runs/not-listed"
    url.run()
    assert url.selectbox(key="cmp_versus").value == "base" and url.text_input(key="cmp_run").value == "runs/not-listed"
    assert any("not a run of this workspace" in w.value for w in url.warning)
    url.text_input(key="cmp_title").input("Red Kettle")
    url.button[0].click().run()
    assert any("does not exist" in e.value for e in url.error)  # a one-line message, no traceback


def test_search_job_start_cancel_resume(ews, tmp_path, monkeypatch):
    script = tmp_path / "fake_tune.py"
    script.write_text(FAKE_TUNE)
    monkeypatch.setattr(jobs, "LAUNCHER", [sys.executable, str(script)])
    at = _page("page_experiments").run()
    at.text_input(key="ex_out").input("prep")
    at.button(key="FormSubmitter:search_form-Start search").click().run()
    assert any("not a search folder" in e.value for e in at.error)
    at.text_input(key="ex_out").input("tune")
    at.button(key="FormSubmitter:search_form-Start search").click().run()
    assert any("already holds a search" in e.value for e in at.error)
    at.text_input(key="ex_out").input("tune/b")
    at.text_input(key="ex_budget").input("20 minutes")
    at.button(key="FormSubmitter:search_form-Start search").click().run()
    assert any("give a duration" in e.value for e in at.error)  # checked before anything starts
    assert not (ews.root / "tune" / "b").exists()
    at.text_input(key="ex_budget").input("")
    at.text_input(key="ex_model").input("tiny-random")
    at.number_input(key="ex_trials").set_value(3)
    at.number_input(key="ex_n").set_value(40)
    at.button(key="FormSubmitter:search_form-Start search").click().run()
    assert not at.error, [e.value for e in at.error]
    out = ews.root / "tune" / "b"
    assert wait_until(lambda: (out / "argv.json").is_file())
    argv = json.loads((out / "argv.json").read_text())
    assert argv[0] == "tune" and argv[argv.index("--trials") + 1] == "3" and argv[argv.index("--model") + 1] == "tiny-random"
    assert argv[argv.index("--config") + 1] == str(out / "base.yaml") and "max_samples: 40" in (out / "base.yaml").read_text()
    at.button(key="ex_cancel").click().run()
    assert wait_until(lambda: jobs.status(ews, out).state == "cancelled")  # not "failed": it was asked to stop
    (out / "argv.json").unlink()
    at.run()
    at.button(key="ex_resume").click().run()  # the same command again continues the study
    assert wait_until(lambda: (out / "argv.json").is_file())
    assert json.loads((out / "argv.json").read_text()) == argv
    jobs.cancel(ews, out, wait_s=10)
    assert wait_until(lambda: not jobs.status(ews, out).alive)


class _Gen:
    def __init__(self, run_dir):
        self.name = Path(run_dir).name

    @classmethod
    def from_run(cls, run_dir):
        return cls(run_dir)

    def prompt(self, title, context=None):
        return f"{title}|{len(context or [])}"

    def generate(self, prompts, use_adapter=True, **decoding):
        import types

        text = f"{self.name if use_adapter else 'base'}: {prompts[0]}"
        return [types.SimpleNamespace(text=text, new_tokens=3, seconds=0.01, stopped_at_eos=True)]


def test_compare_page_run_against_run_from_the_boxes(ews, monkeypatch):
    import types

    fake = types.ModuleType("catalogtune.infer.generate")
    fake.Generator = _Gen
    monkeypatch.setitem(sys.modules, "catalogtune.infer.generate", fake)
    for rel in ("run", "tune/trials/trial-000"):
        (ews.root / rel / "adapter").mkdir()
    at = _page("page_compare").run()
    assert at.selectbox(key="cmp_pick_run").options == ews.all_runs()  # the workspace's runs, no typing
    assert at.selectbox(key="cmp_index").value == ""  # no index here: the box says so
    at.text_input(key="cmp_title").input("Red Kettle")
    at.selectbox(key="cmp_pick_run").select("tune/trials/trial-000")
    at.button[0].click().run()
    shown = " ".join(t.value for t in at.text)
    assert "base: Red Kettle|0" in shown and "trial-000: Red Kettle|0" in shown  # base vs that run
    at.selectbox(key="cmp_versus").select("run")
    at.button[0].click().run()
    shown = " ".join(t.value for t in at.text)
    assert "run: Red Kettle|0" in shown and "trial-000: Red Kettle|0" in shown and "base:" not in shown
    from catalogtune.app.common import md_escape

    assert [h.value for h in at.subheader][:2] == ["run", md_escape("tune/trials/trial-000")]  # names escaped
    at.selectbox(key="cmp_pick_run").select("runs/[x](javascript:alert(1))")
    at.button[0].click().run()
    assert any("no adapter" in e.value for e in at.error)
