"""End to end: the app served on 127.0.0.1, driven in headless Chromium by Playwright.

Screenshots go to ``test-artifacts/`` (git-ignored). Needs the Debian ``chromium`` package at
/usr/bin/chromium (no browser download; ``make test`` installs it through .ci/chromium.sh where
it can); skipped otherwise, naming the one command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_run

from catalogtune.app.video import CHROMIUM, INSTALL_HINT, LAUNCH_ARGS
from catalogtune.app.walkthrough import SETTLED

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"needs {CHROMIUM}: run `{INSTALL_HINT}`"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (pip install playwright)"),
]


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
    """`catalogtune app` on a free 127.0.0.1 port (app/server.py, as the video uses); yields its base URL."""
    from catalogtune.app.server import serve
    from catalogtune.core.util import CatalogtuneError

    try:
        with serve(workspace, workspace / "app.log") as url:
            yield url
    except CatalogtuneError as exc:
        pytest.fail(str(exc))


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
                          ("compare", "Compare"), ("evaluation", "Evaluation"), ("experiments", "Experiments")]:
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


def test_walkthrough_video(workspace, tmp_path):
    """`python -m catalogtune.app.video` on this small workspace: a non-empty .webm and its stills."""
    pytest.importorskip("catalogtune.train.stage", reason="the train stage is not there yet")
    from catalogtune.app import video
    from catalogtune.core.util import CatalogtuneError

    try:
        video.ffmpeg_browsers_path(tmp_path / "home")
    except CatalogtuneError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "video"
    proc = subprocess.run(
        [sys.executable, "-m", "catalogtune.app.video", "--workspace", str(workspace), "--out", str(out),
         "--pace", "0.1", "--model", "tiny-random", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=240,
    )
    print(proc.stdout)  # the per-scene times (pytest -s shows them)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    webm = out / "walkthrough.webm"
    assert webm.is_file() and webm.stat().st_size > 10_000
    assert webm.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # an EBML (WebM/Matroska) file
    stills = sorted(p.name for p in out.glob("*.png"))
    assert len(stills) >= 6 and any("training_cancelled" in s for s in stills), stills
    assert not (workspace / "runs" / "video-walkthrough").exists()  # the cancelled run is removed again
    assert "walkthrough:" in proc.stdout and str(webm) in proc.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    for name in stills:  # kept with the other screenshots for a look after the run
        (ARTIFACTS / f"video_{name}").write_bytes((out / name).read_bytes())
