"""The scenes of the walkthrough video (``app/video.py`` records them): a Playwright page driven
through the app with captions, pauses and stills."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

from catalogtune.core.util import CatalogtuneError, atomic_write

MAX_S = 170.0
"""The walkthrough's length cap (under 3 minutes): optional pauses are skipped past it."""
SETTLED = """() => !document.querySelector(
    '[data-testid^=stStatusWidgetRunning], [data-stale=true], [data-testid=stSkeleton]')"""
"""True once a script run has finished drawing (no running icon, stale or skeleton elements)."""
CAPTION_JS = """text => {
  let d = document.getElementById('ct-caption');
  if (!d) {
    d = document.createElement('div');
    d.id = 'ct-caption';
    Object.assign(d.style, {position: 'fixed', left: '50%', bottom: '28px', transform: 'translateX(-50%)',
      maxWidth: '80%', padding: '12px 22px', borderRadius: '10px', background: 'rgba(20,20,30,0.86)',
      color: '#fff', font: '600 20px/1.35 "DejaVu Sans", sans-serif', zIndex: 2147483647,
      pointerEvents: 'none', textAlign: 'center', boxShadow: '0 4px 18px rgba(0,0,0,0.35)'});
    document.body.appendChild(d);
  }
  d.textContent = text;
}"""
"""Puts ``text`` in a fixed caption box (textContent: never parsed as HTML)."""
VIDEO_RUN = "runs/video-walkthrough"
"""The run folder the walkthrough starts and cancels (a free variant of it; removed afterwards)."""


class Walkthrough:
    """Drives one Playwright page through the app, with captions, pauses and stills."""

    def __init__(self, page: Any, url: str, cfg: Any, stills: Path) -> None:
        self.page, self.url, self.cfg, self.stills = page, url, cfg, stills
        self.t0 = time.monotonic()
        self.saved: list[Path] = []

    def left(self) -> float:
        """Seconds left under :data:`MAX_S`."""
        return MAX_S - (time.monotonic() - self.t0)

    def caption(self, text: str, hold: float = 3.0) -> None:
        """Show ``text`` in the caption box and hold it ``hold`` seconds (times the pace)."""
        self.page.evaluate(CAPTION_JS, text)
        self.pause(hold)

    def pause(self, seconds: float) -> None:
        """Wait for the viewer, unless the video is near its length cap."""
        ms = int(1000 * min(seconds * self.cfg.pace, max(0.0, self.left() - 15)))
        if ms > 0:
            self.page.wait_for_timeout(ms)

    def settle(self) -> None:
        """Wait until the page's script run has drawn everything (a slow machine gets what is there)."""
        from playwright.sync_api import Error

        with contextlib.suppress(Error):
            self.page.wait_for_function(SETTLED, timeout=30_000)
        self.page.wait_for_timeout(int(200 + 400 * min(1.0, self.cfg.pace)))  # tables (canvas), charts paint

    def open(self, path: str, heading: str) -> None:
        """Load a page of the app and wait for its heading; an exception on the page is an error."""
        self.page.goto(f"{self.url}/{path}")
        self.page.get_by_role("heading", name=heading).first.wait_for()
        self.settle()
        if self.page.locator('[data-testid="stException"]').count():
            raise CatalogtuneError(f"the {heading} page shows an exception")

    def still(self, name: str) -> None:
        """A PNG of what the video shows now (caption included)."""
        path = self.stills / f"{len(self.saved) + 1:02d}_{name}.png"
        with atomic_write(path, "wb") as fh:
            fh.write(self.page.screenshot())
        self.saved.append(path)

    def scroll_to(self, heading: str) -> None:
        """Bring the first heading holding ``heading`` into view (nothing happens when it is absent)."""
        from playwright.sync_api import Error

        loc = self.page.get_by_role("heading", name=heading).first
        with contextlib.suppress(Error):
            loc.scroll_into_view_if_needed(timeout=5_000)
            self.page.wait_for_timeout(400)


def first_title(ws: Path) -> str:
    """A title of the test split (a product the model never saw), for the comparison."""
    try:
        import polars as pl

        titles = pl.read_parquet(ws / "prep" / "test.parquet", columns=["title"])["title"].to_list()
    except Exception:  # noqa: BLE001 - any unreadable split: fall back to a stock title
        titles = []
    return next((t for t in titles if 10 <= len(t) <= 90), "Acoustic guitar strings, light gauge")


def _search_word(title: str) -> str:
    words = re.findall(r"[A-Za-z]{4,}", title)
    return words[0].lower() if words else "the"


def _model(cfg: Any) -> str:
    if cfg.model:
        return cfg.model
    from catalogtune.core.config import load_yaml

    with contextlib.suppress(CatalogtuneError, OSError):
        model = load_yaml(cfg.workspace / "run" / "config.yaml").get("model")
        if model:
            return str(model)
    return "smollm2-135m"


def free_run_folder(ws: Path) -> str:
    """:data:`VIDEO_RUN`, or ``-2``, ``-3``, ... when that folder is taken (never a user's run)."""
    name, n = VIDEO_RUN, 1
    while (ws / name).exists():
        n += 1
        name = f"{VIDEO_RUN}-{n}"
    return name


# -- the scenes ------------------------------------------------------------------------------
def scene_home_and_data(w: Walkthrough, title: str) -> None:
    """Home, then the data page with a title search and the analysis report."""
    w.open("", "catalogtune")
    w.caption("catalogtune: a small language model taught a product catalogue (titles -> descriptions)", 3.5)
    w.open("data", "Data")
    w.caption("Data: the cleaned, deduplicated splits, searchable by title")
    box = w.page.get_by_role("textbox", name="Search titles")
    box.fill(_search_word(title))
    box.press("Enter")
    w.settle()
    w.caption(f"Searching the training titles for '{_search_word(title)}'", 2.5)
    w.still("data")
    w.scroll_to("Analysis report")
    w.caption("The analysis report: lengths, vocabulary, what the cleaning dropped", 3)


def scene_training(w: Walkthrough, run: str) -> None:
    """Start a training run from the form, watch it run, cancel it."""
    w.open("finetune", "Fine-tune")
    w.caption("Fine-tune: a form that starts LoRA training in the background", 2.5)
    w.page.get_by_role("textbox", name="Run folder (inside the workspace)").fill(run)
    w.page.get_by_role("textbox", name="Base model").fill(_model(w.cfg))
    w.page.get_by_role("spinbutton", name="Training samples (0 = all)").fill("64")
    w.page.get_by_role("spinbutton", name="Epochs").fill("20")  # long enough to still run when cancelled
    w.page.get_by_role("spinbutton", name="Batch size").fill("2")
    w.page.get_by_role("button", name="Start").click()
    w.page.get_by_text("Training started in the background").wait_for()
    w.caption("Started: the job survives the page and the app; its progress is read from the run folder", 1)
    limit = int(1000 * max(30.0, min(150.0, w.left() - 60)))
    w.page.get_by_text(f"{run}: running").first.wait_for(timeout=limit)
    from playwright.sync_api import Error

    with contextlib.suppress(Error):  # a slow model: cancel while it loads rather than run long
        wait_s = max(5.0, min(60.0, w.left() - 80))
        w.page.get_by_text(re.compile(r"^step [1-9]\d* / \d+")).wait_for(timeout=int(1000 * wait_s))
    w.scroll_to("Progress")
    w.caption("Live progress: steps, ETA, loss and the loss curve", 2.5)
    w.still("training_running")
    w.page.get_by_role("button", name="Cancel").click()
    w.caption("Cancel: the trainer saves a checkpoint, then stops; Resume would continue it", 1)
    w.page.get_by_text(f"{run}: cancelled").first.wait_for(timeout=90_000)
    w.settle()
    w.still("training_cancelled")
    w.pause(1.5)


def scene_compare(w: Walkthrough, title: str, rag: bool) -> None:
    """Base vs fine-tuned on a test title, with the training records closest to it."""
    w.open("compare", "Compare")
    w.caption("Compare: the base model and the fine-tuned run, side by side, on an unseen title", 2.5)
    w.page.get_by_role("textbox", name="Product title or question").fill(title)
    w.page.get_by_role("spinbutton", name="Max new tokens").fill(str(w.cfg.max_new_tokens))
    if rag:
        w.page.get_by_text("With RAG").click()
    w.page.get_by_role("button", name="Compare").click()
    w.caption("Generating both answers with the same decoding as the evaluation...", 0.5)
    w.page.get_by_role("heading", name="fine-tuned").first.wait_for(timeout=int(1000 * max(30.0, w.left() - 45)))
    w.settle()
    w.caption("Both answers, with their generation times", 3)
    w.still("compare")
    if rag:
        w.scroll_to("training records")
        w.caption("The references: the nearest training records and their similarity scores", 3)
        w.still("compare_references")


def scene_eval_and_experiments(w: Walkthrough) -> None:
    """The evaluation report, then the experiments leaderboard and its hand-off to Compare."""
    w.open("evaluation", "Evaluation")
    w.caption("Evaluation: base, fine-tuned and RAG systems on the test split, with baselines", 3)
    w.still("evaluation")
    w.page.mouse.wheel(0, 700)
    w.caption("Differences with paired bootstrap intervals, collapse and diversity figures", 2.5)
    w.open("experiments", "Experiments")
    w.caption("Experiments: every training run as a sortable leaderboard, with its evaluation", 3)
    w.still("experiments")
    w.scroll_to("Loss curves")
    w.caption("Loss curves of several runs on one chart; a tuning search starts below", 2.5)
    w.scroll_to("Compare two runs")
    w.page.get_by_role("button", name="Open in Compare").click()
    w.page.get_by_role("heading", name="Compare").first.wait_for()
    w.settle()
    w.caption("The pair picked on Experiments (base or a run, and a run) opens here, ready to compare", 2.5)
    w.still("compare_picked")
