"""End to end: the app served on 127.0.0.1, driven in headless Chromium by Playwright.

Screenshots go to ``test-artifacts/`` (git-ignored). Needs the Debian ``chromium`` package at
/usr/bin/chromium (no browser download); skipped with a reason otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import make_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium (apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (pip install playwright)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_path, tiny_model_dir) -> Path:
    """prep/ from 60 real records, a tiny trained run, an evaluation report with a plot."""
    import polars as pl

    root = tmp_path_factory.mktemp("app_ws")
    rows = [json.loads(line) for line in sample_path.read_text(encoding="utf-8").splitlines()[:60]]
    df = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "title": [r["title"] for r in rows],
                       "content": [r["content"] for r in rows]})
    (root / "prep").mkdir()
    df[:40].write_parquet(root / "prep" / "train.parquet")
    df[40:50].write_parquet(root / "prep" / "val.parquet")
    df[50:].write_parquet(root / "prep" / "test.parquet")
    (root / "prep" / "quality_report.json").write_text(json.dumps({"parsed": 60, "kept": 60, "dropped": {}}))
    from catalogtune.rag import index as rag

    rag.run(rag.IndexConfig(data=root / "prep", out=root / "index", embedder="hash"))
    (root / "run").mkdir()
    make_run(root / "run", tiny_model_dir, nonzero=False, lora_alpha=8)
    m = {"perplexity": 12.0, "rouge_l": 0.2, "chrf": 25.0, "cosine": 0.5, "unsupported_rate": 0.2, "n": 10}
    (root / "eval").mkdir()
    (root / "eval" / "report.json").write_text(json.dumps({"systems": {"base": m, "finetuned": m}}))
    return root


@pytest.fixture(scope="module")
def server(workspace):
    """`catalogtune app` on a free 127.0.0.1 port; yields its base URL."""
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = open(workspace / "app.log", "wb")  # a file, not a pipe nobody reads after the test
    proc = subprocess.Popen(
        [sys.executable, "-m", "catalogtune", "app", "--port", str(port), "--workspace", str(workspace)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            out = (workspace / "app.log").read_text(errors="replace")
            pytest.fail(f"the app did not answer on {url}: {out[-2000:]}")
        time.sleep(0.3)
    yield url
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the wrapper (it forwards to streamlit), then SIGKILL to whatever is left of the group."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _open(page, server: str, path: str, heading: str) -> None:
    page.goto(f"{server}/{path}")
    page.get_by_role("heading", name=heading).first.wait_for()


SETTLED = """() => !document.querySelector(
    '[data-testid^=stStatusWidgetRunning], [data-stale=true], [data-testid=stSkeleton]')"""


def _shot(page, name: str) -> None:
    """Screenshot once the script run has finished (no running icon, no stale or skeleton elements)."""
    from playwright.sync_api import Error

    try:
        page.wait_for_function(SETTLED, timeout=30_000)
    except Error:
        pass  # a slow machine still gets its (maybe half-drawn) screenshot rather than a failure
    page.wait_for_timeout(1000)  # let tables (canvas), charts and images paint
    page.screenshot(path=str(ARTIFACTS / f"app_{name}.png"), full_page=True)


def test_every_page_loads(page, server):
    # The server must listen on loopback only.
    assert server.startswith("http://127.0.0.1:")
    for path, heading in [("", "catalogtune"), ("data", "Data"), ("finetune", "Fine-tune"),
                          ("compare", "Compare"), ("evaluation", "Evaluation")]:
        _open(page, server, path, heading)
        assert page.locator('[data-testid="stException"]').count() == 0, path
        _shot(page, path or "home")
    # The evaluation table is drawn from report.json.
    _open(page, server, "evaluation", "Evaluation")
    page.get_by_text("Test records (unseen products)").wait_for()


def test_compare_on_tiny_run(page, server):
    pytest.importorskip("catalogtune.infer.generate", reason="the generate stage is not there yet")
    _open(page, server, "compare", "Compare")
    page.get_by_role("button", name="Compare").click()
    page.get_by_text("the title is empty").wait_for()  # bad input: a message, not a traceback
    page.get_by_role("textbox", name="Product title or question").fill("Guitar strings, light gauge")
    page.get_by_role("spinbutton", name="Max new tokens").fill("8")
    page.get_by_text("With RAG").click()
    page.get_by_role("button", name="Compare").click()
    page.get_by_role("heading", name="fine-tuned").wait_for(timeout=120_000)
    assert page.get_by_role("heading", name="base").count() >= 1
    assert page.get_by_text(" s; ").count() >= 2  # generation times of both outputs
    page.get_by_role("heading", name="Top 5 training records").wait_for()  # the references, with scores
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    page.wait_for_timeout(1500)
    _shot(page, "compare_result")


def test_start_and_cancel_training(page, server, workspace):
    pytest.importorskip("catalogtune.train.stage", reason="the train stage is not there yet")
    _open(page, server, "finetune", "Fine-tune")
    page.get_by_role("textbox", name="Run folder (inside the workspace)").fill("runs/browser")
    page.get_by_role("textbox", name="Base model").fill("tiny-random")
    page.get_by_role("spinbutton", name="Training samples (0 = all)").fill("40")
    page.get_by_role("spinbutton", name="Epochs").fill("50")  # long enough to still run when we cancel
    page.get_by_role("spinbutton", name="Batch size").fill("2")
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Training started in the background").wait_for()
    page.get_by_text("runs/browser: running").first.wait_for(timeout=90_000)
    page.get_by_text(re.compile(r"^step ([3-9]|\d\d+) / \d+")).wait_for(timeout=90_000)  # a few steps: a curve
    _shot(page, "training_running")
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("runs/browser: cancelled").first.wait_for(timeout=90_000)
    from playwright.sync_api import expect

    # While Streamlit re-renders, the stale and the new button can both be in the page for a moment.
    expect(page.get_by_role("button", name="Resume", disabled=False).first).to_be_visible(timeout=30_000)
    _shot(page, "training_cancelled")
    assert json.loads((workspace / "runs" / "browser" / "progress.json").read_text())["state"] == "cancelled"
