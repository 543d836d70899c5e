"""``python -m catalogtune.app.video --workspace demo-out`` (``make video``): a captioned walkthrough.

Serves the app on 127.0.0.1 (``app/server.py``, as ``catalogtune app`` does), drives it in headless
Debian Chromium with Playwright's video recording, and writes ``WORKSPACE/video/walkthrough.webm``
plus PNG stills: the data page, a training started and cancelled, a comparison with its
references, the evaluation and the experiments pages. Captions are a fixed ``div`` injected into
the page. Playwright encodes with an ffmpeg of its own; when that was never downloaded, Debian's
``ffmpeg`` stands in (linked into a private ``PLAYWRIGHT_BROWSERS_PATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from catalogtune.app.walkthrough import (
    Walkthrough, first_title, free_run_folder, scene_compare, scene_eval_and_experiments, scene_home_and_data, scene_training,
)
from catalogtune.core.util import CatalogtuneError

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (no browser download)."""
INSTALL_HINT = "sudo .ci/chromium.sh"
"""The one command that installs what the browser tests and the video need."""
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
SIZE = {"width": 1280, "height": 800}


@dataclass
class VideoConfig:
    """Options of the walkthrough video."""

    workspace: Path = Path("demo-out")
    """The workspace shown (what `make demo` writes)."""
    out: Path | None = None
    """Folder for walkthrough.webm and the stills (default WORKSPACE/video)."""
    pace: float = 1.0
    """Multiplier on the pauses that let a viewer read each caption (tests use 0.1)."""
    model: str | None = None
    """Base model of the training that is started and cancelled (default: the workspace run's)."""
    max_new_tokens: int = 48
    """Tokens per output in the comparison."""
    keep_run: bool = False
    """Keep the cancelled training run folder instead of removing it afterwards."""

    def __post_init__(self) -> None:
        self.workspace = Path(self.workspace)
        self.out = None if self.out is None else Path(self.out)
        if not 0 < self.pace <= 10:
            raise CatalogtuneError(f"--pace must be in (0, 10], got {self.pace}")
        if self.max_new_tokens < 1:
            raise CatalogtuneError("--max-new-tokens must be positive")


def check(cfg: VideoConfig) -> None:
    """One-line errors for what the recording needs: the workspace, playwright, chromium."""
    import importlib.util

    ws = cfg.workspace
    if not ws.is_dir():
        raise CatalogtuneError(f"no workspace at {ws}/: run `make demo` first (it writes demo-out/)")
    if not (ws / "prep").is_dir():
        raise CatalogtuneError(f"{ws}/ has no prep/: run `make demo` (or `catalogtune demo --out {ws}`) first")
    if importlib.util.find_spec("playwright") is None:
        raise CatalogtuneError("the video needs playwright: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        raise CatalogtuneError(f"the video needs {CHROMIUM}: run `{INSTALL_HINT}`")


def ffmpeg_browsers_path(home: Path) -> Path | None:
    """A PLAYWRIGHT_BROWSERS_PATH whose ffmpeg is Debian's, or None when Playwright has its own.

    Playwright looks for ``ffmpeg-REV/ffmpeg-linux``; it calls it with ordinary options (mjpeg in,
    vp8 out) that Debian's build understands.
    """
    import playwright

    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    rev = next(b["revision"] for b in json.loads(browsers.read_text())["browsers"] if b["name"] == "ffmpeg")
    default = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    if (default / f"ffmpeg-{rev}" / "ffmpeg-linux").is_file():
        return None
    system = shutil.which("ffmpeg")
    if system is None:
        raise CatalogtuneError(f"the video needs ffmpeg to encode the recording: run `{INSTALL_HINT}` "
                               "(or apt-get install -y ffmpeg)")
    link = home / "playwright" / f"ffmpeg-{rev}" / "ffmpeg-linux"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_file() or link.resolve() != Path(system).resolve():
        tmp = link.with_name(f".ffmpeg-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(system)
        os.replace(tmp, link)  # atomic: a concurrent recording never sees a half-made link
    return link.parent.parent


# -- recording -------------------------------------------------------------------------------
@contextlib.contextmanager
def _browser(video_dir: Path) -> Iterator[Any]:
    """A headless Chromium context that records its pages into ``video_dir``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            ctx = browser.new_context(viewport=SIZE, record_video_dir=str(video_dir), record_video_size=SIZE)
            yield ctx
        finally:
            browser.close()


def _cleanup(ws: Path, run: str) -> None:
    """Remove the cancelled walkthrough run and its job record once its process has ended."""
    from catalogtune.app import jobs

    space = jobs.Workspace(ws)
    target = space.root / run
    deadline = time.monotonic() + 30
    while jobs.status(space, target).alive and time.monotonic() < deadline:
        time.sleep(0.3)
    shutil.rmtree(target, ignore_errors=True)
    for suffix in (".json", ".lock"):
        (space.root / ".jobs" / f"{space.job_key(target)}{suffix}").unlink(missing_ok=True)


def duration_s(path: Path) -> float | None:
    """The video's length from ffprobe, if it is installed."""
    if shutil.which("ffprobe") is None:
        return None
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60)
    with contextlib.suppress(ValueError):
        return float(out.stdout.strip())
    return None


def record(cfg: VideoConfig) -> tuple[Path, list[Path], float]:
    """Serve the app, record the walkthrough; returns (webm, stills, seconds recorded)."""
    from catalogtune.app.server import serve
    from catalogtune.core.util import home

    check(cfg)
    ws = cfg.workspace.resolve()
    out = (cfg.out or ws / "video").resolve()
    out.mkdir(parents=True, exist_ok=True)
    browsers = ffmpeg_browsers_path(home())
    if browsers is not None:
        os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(browsers)  # read when the driver starts
    run, title = free_run_folder(ws), first_title(ws)
    with tempfile.TemporaryDirectory(dir=out, prefix=".rec-") as tmp, \
            serve(ws, Path(tmp) / "app.log") as url, _browser(Path(tmp) / "raw") as ctx:
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        w = Walkthrough(page, url, cfg, out)
        try:
            for name, scene in (("data", lambda: scene_home_and_data(w, title)), ("training", lambda: scene_training(w, run)),
                                ("compare", lambda: scene_compare(w, title, rag=(ws / "index").is_dir())),
                                ("evaluation", lambda: scene_eval_and_experiments(w))):
                t = time.monotonic()
                try:
                    scene()
                    print(f"  {name} scene: {time.monotonic() - t:.0f} s", flush=True)
                except Exception as exc:  # a Playwright timeout: name the scene, keep one line
                    raise CatalogtuneError(f"the walkthrough stopped in the {name} scene: "
                                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            seconds = time.monotonic() - w.t0
        finally:
            video = page.video
            ctx.close()  # writes the video
            if not cfg.keep_run:
                _cleanup(ws, run)
        webm = out / "walkthrough.webm"
        video.save_as(str(Path(tmp) / "walkthrough.webm"))
        os.replace(Path(tmp) / "walkthrough.webm", webm)  # same folder: atomic
    return webm, w.saved, seconds


def main(argv: list[str] | None = None) -> int:
    """Parse the options, record the walkthrough, print where it is; a problem is one line, exit 2."""
    from catalogtune.core import config

    parser = argparse.ArgumentParser(prog="python -m catalogtune.app.video", description=__doc__.splitlines()[0])
    config.add_arguments(parser, VideoConfig)
    try:
        cfg = config.from_namespace(VideoConfig, parser.parse_args(argv))
        webm, stills, seconds = record(cfg)
    except CatalogtuneError as exc:
        print(f"catalogtune video: error: {exc}", file=sys.stderr)
        return 2
    length = duration_s(webm)
    print(f"walkthrough: {webm} ({length or seconds:.0f} s, {webm.stat().st_size / 1e6:.1f} MB); "
          f"{len(stills)} stills in {webm.parent}")
    if (length or seconds) > 180:
        print("catalogtune video: warning: longer than 3 minutes (a slow machine); rerun with --pace 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
