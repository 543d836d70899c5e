"""The app's job control (pure Python) and each page's logic through Streamlit's AppTest."""

from __future__ import annotations

import json
import os
import sys
import threading
import types

import pytest

from catalogtune.app import jobs
from catalogtune.core.util import CatalogtuneError, atomic_write_json
from helpers import make_run, wait_until

SECRET = "hf_testSECRETtoken123"

# A stand-in for `catalogtune train`: progress.json + metrics.jsonl, checkpoints on SIGTERM.
FAKE_STAGE = r'''
import json, os, signal, sys, time
argv = sys.argv[1:]
out = argv[argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
total = int(os.environ.get("FAKE_STEPS", "100000"))
state = {"stop": False}
signal.signal(signal.SIGTERM, lambda *a: state.update(stop=True))
def progress(st, step):
    tmp = os.path.join(out, ".progress.tmp")
    with open(tmp, "w") as fh:
        json.dump({"state": st, "step": step, "total_steps": total, "eta_s": (total - step) * 0.02,
                   "loss": 3.0 / (step + 1), "val_loss": None, "pid": os.getpid()}, fh)
    os.replace(tmp, os.path.join(out, "progress.json"))
def write(name, text):  # atomic, so the test never reads half a file
    with open(os.path.join(out, name + ".tmp"), "w") as fh:
        fh.write(text)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
write("token_seen", "yes" if os.environ.get("HF_TOKEN") else "no")
write("argv.json", json.dumps(argv))
for step in range(1, total + 1):
    with open(os.path.join(out, "metrics.jsonl"), "a") as fh:
        fh.write(json.dumps({"step": step, "loss": 3.0 / step, "lr": 1e-4, "tokens_per_s": 100.0}) + "\n")
    progress("running", step)
    if state["stop"]:
        os.makedirs(os.path.join(out, "checkpoints", f"step-{step}"), exist_ok=True)
        progress("cancelled", step)
        sys.exit(0)
    time.sleep(0.02)
progress("finished", total)
'''


@pytest.fixture()
def fake_launcher(tmp_path, monkeypatch):
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    monkeypatch.setattr(jobs, "LAUNCHER", [sys.executable, str(script)])
    return script


@pytest.fixture()
def ws(tmp_path, monkeypatch) -> jobs.Workspace:
    """A small fake workspace: prep/ (parquet + quality report), eda/, eval/, run/."""
    import polars as pl

    root = tmp_path / "ws"
    prep = root / "prep"
    prep.mkdir(parents=True)
    titles = ["Blue Guitar Strings", "Red Kettle", "Guitar Picks (12 pack)", "Garden Hose"]
    for split in ("train", "val", "test"):
        pl.DataFrame({
            "id": [f"{split}{i}" for i in range(len(titles))],
            "title": titles, "content": [f"About {t}." for t in titles],
        }).write_parquet(prep / f"{split}.parquet")
    atomic_write_json(prep / "quality_report.json",
                      {"parsed": 10, "kept": 4, "dropped": {"empty_content": 1, "duplicate": 5, "x": 0}})
    png = _png()
    (root / "eda").mkdir()
    atomic_write_json(root / "eda" / "stats.json", {
        "total_records": 12, "splits": {s: {"records": 4} for s in ("train", "val", "test")},
        "lengths": {"cleaned": {"title": {"chars": {"count": 4, "median": 12, "max": 22}}, "content": "bad"}}})
    (root / "eda" / "title_lengths.png").write_bytes(png)
    (root / "eval").mkdir()
    metrics = {"perplexity": 9.5, "rouge_l": 0.21, "chrf": 30.1, "cosine": 0.6, "unsupported_rate": 0.1, "n": 4}
    atomic_write_json(root / "eval" / "report.json", {"systems": {
        "base": metrics, "finetuned": {**metrics, "rouge_l": 0.35}, "base+rag": metrics, "finetuned+rag": "bad"}})
    (root / "eval" / "plots").mkdir()
    (root / "eval" / "plots" / "metrics.png").write_bytes(png)  # where evaluate puts its plots
    (root / "run").mkdir()
    monkeypatch.setenv("CATALOGTUNE_WORKSPACE", str(root))
    return jobs.Workspace()


def _png() -> bytes:
    import base64

    return base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    )


# --- jobs.py ------------------------------------------------------------------------------------


def test_resolve_keeps_paths_inside_the_workspace(ws, tmp_path):
    assert ws.resolve("run") == ws.root / "run"
    assert ws.resolve(str(ws.root / "runs" / "x")) == ws.root / "runs" / "x"
    for bad in ("../outside", "/etc", "runs/../../x", str(tmp_path)):
        with pytest.raises(CatalogtuneError, match="outside the workspace"):
            ws.resolve(bad)
    (ws.root / "link").symlink_to(tmp_path)  # a symlink that leads out is an escape too
    with pytest.raises(CatalogtuneError, match="outside"):
        ws.resolve("link/x")
    with pytest.raises(CatalogtuneError, match="empty"):
        ws.resolve("  ")
    with pytest.raises(CatalogtuneError, match="does not exist"):
        ws.resolve("runs/nope", must_exist=True)


def test_start_status_cancel_resume(ws, fake_launcher):
    run_dir = ws.root / "runs" / "a"
    pid = jobs.start(ws, run_dir, ["train", "--out", str(run_dir)], run_dir / "train.log", token=SECRET)
    assert wait_until(lambda: jobs.status(ws, run_dir).progress.get("state") == "running")  # the stage has begun
    st = jobs.status(ws, run_dir)
    assert st.alive and st.pid == pid and st.progress["step"] >= 1
    with pytest.raises(CatalogtuneError, match="already running"):
        jobs.start(ws, run_dir, ["train", "--out", str(run_dir)], run_dir / "train.log")
    assert jobs.cancel(ws, run_dir, wait_s=10)
    assert wait_until(lambda: jobs.status(ws, run_dir).state == "cancelled")
    st = jobs.status(ws, run_dir)
    assert not st.alive and list((run_dir / "checkpoints").iterdir())
    assert (run_dir / "token_seen").read_text() == "yes"  # reached the child via its environment
    assert len(jobs.read_metrics(run_dir)) >= st.progress["step"]
    # Resume after the end: allowed again, and the record keeps the argv for the page's Resume.
    assert st.argv == ["train", "--out", str(run_dir)]
    jobs.start(ws, run_dir, [*st.argv, "--resume"], run_dir / "train.log")
    assert wait_until(lambda: jobs.status(ws, run_dir).alive)
    jobs.cancel(ws, run_dir, wait_s=10)
    # The token is nowhere on disk: not in the record, the log, argv or progress files.
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_concurrent_starts_only_one_wins(ws, fake_launcher):
    run_dir = ws.root / "runs" / "b"
    results: list[object] = []

    def go():
        try:
            results.append(jobs.start(ws, run_dir, ["train", "--out", str(run_dir)], run_dir / "train.log"))
        except CatalogtuneError as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = [r for r in results if isinstance(r, int)]
    assert len(pids) == 1, results
    jobs.cancel(ws, run_dir, wait_s=10)


def test_dead_job_and_bad_metrics(ws):
    run_dir = ws.root / "run"
    # progress.json says running, but its pid is gone: the page must say so, not wait forever.
    atomic_write_json(run_dir / "progress.json", {"state": "running", "step": 3, "total_steps": 9, "pid": 2**22 + 7})
    assert jobs.status(ws, run_dir).state == "died"
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"loss": 1}\n{"step": 2, "loss": 1.5, "val_loss": 1.7}\n{"step": 3, "lo')
    assert [r["step"] for r in jobs.read_metrics(run_dir)] == [1, 2]
    assert jobs.status(ws, ws.root / "runs" / "never").state == "none"
    assert not jobs.cancel(ws, run_dir)


def test_pid_alive_rejects_reused_pids():
    me = os.getpid()
    assert jobs.pid_alive(me)
    start = jobs._proc_start_time(me)
    assert jobs.pid_alive(me, start) and not jobs.pid_alive(me, start + 1)
    assert not jobs.pid_alive(None) and not jobs.pid_alive(-1)


# --- pages (AppTest) ----------------------------------------------------------------------------


def _page(name: str):
    from streamlit.testing.v1 import AppTest

    def script(name: str):
        import importlib

        importlib.import_module(f"catalogtune.app.{name}").render()

    return AppTest.from_function(script, kwargs={"name": name}, default_timeout=30)


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_data_page_search_and_reports(ws):
    at = _page("page_data").run()
    assert not at.exception and not _errors(at)
    assert len(at.dataframe[0].value) == 4
    at.text_input(key="data_query").input("GUITAR").run()
    titles = list(at.dataframe[0].value["title"])
    assert titles == ["Blue Guitar Strings", "Guitar Picks (12 pack)"]
    at.selectbox(key="data_split").select("test").run()
    assert set(at.dataframe[0].value["id"]) == {"test0", "test2"}
    lengths = [d.value for d in at.dataframe if "field" in d.value.columns]
    assert len(lengths) == 1 and list(lengths[0]["median"]) == [12]  # the malformed field is skipped
    assert [m.value for m in at.metric][:2] == ["12", "4"]
    assert len(at.get("image")) == 1  # the analysis PNG
    drops = [d.value for d in at.dataframe if "reason" in d.value.columns][0]
    assert list(drops["reason"]) == ["duplicate", "empty content"]  # largest first, zeros left out
    assert list(drops["share of parsed"]) == [0.5, 0.1]
    # An empty workspace says what to run instead of failing.
    os.environ["CATALOGTUNE_WORKSPACE"] = str(ws.root / "empty")
    at = _page("page_data").run()
    assert not at.exception and any("No prepared data" in i.value for i in at.info)


def test_eval_page_table_and_bad_run(ws, fake_launcher):
    at = _page("page_eval").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["system"]) == ["base", "finetuned", "base+rag"]  # the malformed entry is skipped
    assert float(table.loc[table["system"] == "finetuned", "rouge_l"].iloc[0]) == pytest.approx(0.35)
    assert len(at.get("image")) == 1
    at.text_input(key="ev_run").input("runs/does-not-exist")
    at.button[0].click().run()
    assert any("does not exist" in e for e in _errors(at))
    at.text_input(key="ev_run").input("../../etc")
    at.button[0].click().run()
    assert any("outside the workspace" in e for e in _errors(at))
    at.text_input(key="ev_run").input("run")
    at.number_input(key="ev_limit").set_value(7)
    at.number_input(key="ev_seen").set_value(0)
    at.button[0].click().run()
    assert not _errors(at), _errors(at)
    assert wait_until(lambda: (ws.eval / "argv.json").is_file())
    argv = json.loads((ws.eval / "argv.json").read_text())
    assert argv[:1] == ["evaluate"] and argv[argv.index("--run") + 1] == str(ws.root / "run")
    assert argv[argv.index("--limit") + 1] == "7" and argv[argv.index("--seen-limit") + 1] == "0"
    assert "--index" not in argv  # no index in this workspace
    at.button[0].click().run()
    assert any("already running" in e for e in _errors(at))
    at.button(key="ev_cancel").click().run()
    assert wait_until(lambda: not jobs.status(ws, ws.eval).alive)


def test_finetune_page_starts_and_refuses_bad_input(ws, fake_launcher):
    at = _page("page_finetune").run()
    assert not at.exception and not _errors(at)
    assert at.number_input(key="ft_r").value >= 1 and at.text_input(key="ft_model").value
    at.text_input(key="ft_run").input("../escape")
    at.button[0].click().run()  # form fields are submitted with the Start button
    assert any("outside the workspace" in e for e in _errors(at))
    at.text_input(key="ft_run").input("prep")
    at.button[0].click().run()
    assert any("not a run folder" in e for e in _errors(at))
    at.text_input(key="ft_run").input("runs/ui")
    at.text_input(key="ft_model").input("no-such-model")
    at.button[0].click().run()
    assert any("unknown model" in e for e in _errors(at))
    at.text_input(key="ft_model").input("tiny-random")
    at.number_input(key="ft_r").set_value(4)
    at.button[0].click().run()
    assert not _errors(at), _errors(at)
    run_dir = ws.root / "runs" / "ui"
    assert wait_until(lambda: (run_dir / "argv.json").is_file())
    argv = json.loads((run_dir / "argv.json").read_text())
    assert argv[argv.index("--lora-r") + 1] == "4" and argv[argv.index("--model") + 1] == "tiny-random"
    # A second Start while it runs is refused on the page.
    at.button[0].click().run()
    assert any("already running" in e for e in _errors(at))
    at.button(key="ft_cancel").click().run()  # Cancel on the page: SIGTERM, checkpoint, "cancelled"
    assert wait_until(lambda: jobs.status(ws, run_dir).state == "cancelled")
    at.run()
    assert "cancelled" in " ".join(m.value for m in at.markdown)
    (run_dir / "argv.json").unlink()
    at.button(key="ft_resume").click().run()  # Resume: the same command plus --resume
    assert wait_until(lambda: (run_dir / "argv.json").is_file())
    resumed = json.loads((run_dir / "argv.json").read_text())
    assert resumed == [*argv, "--resume"]
    jobs.cancel(ws, run_dir, wait_s=10)
    assert wait_until(lambda: not jobs.status(ws, run_dir).alive)
    at.button[0].click().run()  # Start again on a folder that holds a run: refused without Overwrite
    assert any("already holds a run" in e for e in _errors(at))


class _FakeGen:
    loads = 0
    decoding: list[dict] = []

    @classmethod
    def from_run(cls, run_dir):
        cls.loads += 1
        return cls()

    def prompt(self, title, context=None):
        return f"{title}|{len(context or [])}"

    def generate(self, prompts, use_adapter=True, **decoding):
        _FakeGen.decoding.append(decoding)
        text = ("tuned: " if use_adapter else "base: ") + prompts[0]
        return [types.SimpleNamespace(text=text, new_tokens=5, seconds=0.01, stopped_at_eos=True)]


def test_compare_page_with_fake_generator(ws, monkeypatch):
    fake = types.ModuleType("catalogtune.infer.generate")
    fake.Generator = _FakeGen
    monkeypatch.setitem(sys.modules, "catalogtune.infer.generate", fake)
    (ws.root / "run" / "adapter").mkdir()
    at = _page("page_compare").run()
    assert not at.exception
    at.button[0].click().run()
    assert any("title is empty" in e for e in _errors(at))
    at.text_input(key="cmp_title").input("x" * 6000)
    at.button[0].click().run()
    assert any("too long" in e for e in _errors(at))
    at.text_input(key="cmp_title").input("Blue  Guitar\tStrings")
    at.text_input(key="cmp_run").input("runs/missing")
    at.button[0].click().run()
    assert any("does not exist" in e for e in _errors(at))
    at.text_input(key="cmp_run").input("run")
    at.checkbox(key="cmp_rag").check()
    at.button[0].click().run()
    assert any("no index" in e for e in _errors(at))  # RAG asked for, but the workspace has none
    at.checkbox(key="cmp_rag").uncheck()
    at.button[0].click().run()
    assert not _errors(at), _errors(at)
    shown = " ".join(m.value for m in at.text)  # model outputs are plain text, never Markdown
    assert "base: Blue Guitar Strings|0" in shown and "tuned: Blue Guitar Strings|0" in shown
    # the page decodes exactly as `evaluate` and `ask` do (the app once looped without a penalty)
    from catalogtune.core.decoding import DECODING

    assert _FakeGen.decoding[-1] == DECODING.kwargs()
    loads = _FakeGen.loads
    at.text_input(key="cmp_title").input("Red Kettle")
    at.button[0].click().run()
    assert "tuned: Red Kettle|0" in " ".join(m.value for m in at.text)
    assert _FakeGen.loads == loads  # the model stayed loaded between questions


def test_entry_script_and_command(ws):
    from streamlit.testing.v1 import AppTest

    from catalogtune.app import SCRIPT, AppConfig, command

    at = AppTest.from_file(str(SCRIPT), default_timeout=30).run()
    assert not at.exception
    token = at.sidebar.text_input(key="hf_token")
    assert token.proto.type == token.proto.PASSWORD  # masked, and only in session state
    overview = " ".join(m.value for m in at.markdown)
    assert "report): present" in overview and "(RAG index): *missing*" in overview and "`run`" in overview
    cmd = command(AppConfig())
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    with pytest.raises(CatalogtuneError):
        from catalogtune.core import config

        config.build(AppConfig, port=70000)


def test_compare_page_with_tiny_run(ws, tiny_model_dir):
    """The real Generator on a tiny run: both outputs and their timings are shown."""
    pytest.importorskip("catalogtune.infer.generate", reason="the generate stage is not there yet")
    (ws.root / "runs" / "tiny").mkdir(parents=True)
    make_run(ws.root / "runs" / "tiny", tiny_model_dir, nonzero=False, lora_alpha=8)
    from catalogtune.rag import index as rag

    rag.run(rag.IndexConfig(data=ws.prep, out=ws.index, embedder="hash"))
    at = _page("page_compare").run()
    at.text_input(key="cmp_title").input("Blue Guitar Strings")
    at.text_input(key="cmp_run").input("runs/tiny")
    at.number_input(key="cmp_max_new").set_value(8)
    at.number_input(key="cmp_k").set_value(3)
    at.checkbox(key="cmp_rag").check()
    at.button[0].click().run(timeout=120)
    assert not at.exception and not _errors(at), _errors(at)
    captions = [c.value for c in at.caption if " s; " in c.value]
    assert len(captions) == 2  # base and fine-tuned, each with its generation time
    refs = [d.value for d in at.dataframe if "score" in d.value.columns][0]
    assert len(refs) == 3 and list(refs["score"]) == sorted(refs["score"], reverse=True)
    assert "Blue Guitar Strings" in list(refs["title"])  # the same title is among its neighbours


def test_resume_argv_prefers_the_runs_own_settings(ws):
    from catalogtune.app import page_finetune as ft

    run_dir = ws.root / "run"
    (run_dir / "config.yaml").write_text("model: gemma3-270m\nlora_r: 8\nunrelated: 1\n")
    form = {**ft.FALLBACK_DEFAULTS, "lora_r": 64}
    argv = ft.resume_argv(jobs.JobStatus(state="cancelled"), ws.prep, run_dir, form)
    assert argv[-1] == "--resume" and argv[argv.index("--out") + 1] == str(run_dir)
    assert argv[argv.index("--model") + 1] == "gemma3-270m" and argv[argv.index("--lora-r") + 1] == "8"
    assert "--unrelated" not in argv
    started = jobs.JobStatus(state="cancelled", argv=["train", "--out", "x", "--resume"])
    assert ft.resume_argv(started, ws.prep, run_dir, form) == ["train", "--out", "x", "--resume"]
    assert ft.fmt_eta(3725) == "1h 02m" and ft.fmt_eta(65) == "1m 05s" and ft.fmt_eta(None) == "?"


def test_job_outlives_the_app_that_started_it(ws, fake_launcher):
    """Start from a short-lived 'app' process; after it exits, a new one still sees and cancels the job."""
    import subprocess

    run_dir = ws.root / "runs" / "survivor"
    code = (
        "import sys; from pathlib import Path; from catalogtune.app import jobs; "
        f"jobs.LAUNCHER = [sys.executable, {str(fake_launcher)!r}]; ws = jobs.Workspace({str(ws.root)!r}); "
        f"d = Path({str(run_dir)!r}); print(jobs.start(ws, d, ['train', '--out', str(d)], d / 'train.log'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    assert os.getsid(pid) == pid  # its own session: Ctrl-C or closing the app's terminal do not reach it
    assert wait_until(lambda: jobs.status(ws, run_dir).progress.get("state") == "running")  # the stage has begun
    assert jobs.status(ws, run_dir).pid == pid
    assert jobs.cancel(ws, run_dir, wait_s=10)
    assert wait_until(lambda: jobs.status(ws, run_dir).state == "cancelled")


def test_model_and_run_folder_checks_and_token_env(ws, monkeypatch):
    from catalogtune.app import common
    from catalogtune.app import page_finetune as ft

    assert ft.check_model(ws, "tiny-random") == "tiny-random"
    assert ft.check_model(ws, "HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # hub id
    (ws.root / "models" / "m").mkdir(parents=True)
    with pytest.raises(CatalogtuneError, match="not a model folder"):
        ft.check_model(ws, "models/m")
    (ws.root / "models" / "m" / "config.json").write_text("{}")
    assert ft.check_model(ws, "models/m") == str(ws.root / "models" / "m")
    with pytest.raises(CatalogtuneError, match="outside"):
        ft.check_model(ws, "../../x/y")
    for bad in (".", "prep", "eval/sub", "runs"):
        with pytest.raises(CatalogtuneError, match="not a run folder"):
            ft.check_run_dir(ws, ws.resolve(bad))
    assert ft.check_run_dir(ws, ws.resolve("runs/new")) == ws.root / "runs" / "new"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with common.token_env(SECRET):
        assert os.environ["HF_TOKEN"] == SECRET
    assert "HF_TOKEN" not in os.environ  # removed again: other sessions never see it


def test_looking_at_a_missing_workspace_creates_nothing(tmp_path):
    ws = jobs.Workspace(tmp_path / "nowhere")
    assert jobs.status(ws, ws.root / "run").state == "none"
    assert not (tmp_path / "nowhere").exists()


def test_evaluation_page_tables_show_intervals_and_collapse():
    from catalogtune.app import page_eval

    comps = [{"system": "finetuned", "versus": "base",
              "metrics": {"rouge_l": {"diff": 0.02, "low": 0.01, "high": 0.03, "significant": True},
                          "cosine": {"diff": -0.01, "low": -0.03, "high": 0.01, "significant": False}}},
             "junk", {"system": "x"}]
    rows = page_eval.comparisons_table(comps)
    assert len(rows) == 1 and rows[0]["rouge_l"] == "+0.02 [+0.01, +0.03]"
    assert rows[0]["cosine"].endswith("not significant") and rows[0]["perplexity"] == "-"
    table = page_eval.systems_table({"finetuned": {"quote_style_share": 0.9, "top_opening": "a b c"},
                                     "reference": {"quote_style_share": 0.4}})
    assert [r["system"] for r in table] == ["finetuned", "reference"] and "top_opening" not in table[0]
