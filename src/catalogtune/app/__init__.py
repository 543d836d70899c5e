"""``catalogtune app``: serve the Streamlit app (pages in this package) on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from catalogtune.core import config
from catalogtune.app.jobs import Workspace
from catalogtune.core.util import CatalogtuneError

SCRIPT = Path(__file__).with_name("Home.py")
"""The entry script ``streamlit run`` executes."""


@dataclass
class AppConfig:
    """Options of ``catalogtune app``."""

    port: int = 8501
    """TCP port to serve on."""
    host: str = "127.0.0.1"
    """Address to bind; the default keeps the app private to this machine."""
    workspace: Path | None = None
    """Folder with prep/, eda/, index/, run/, eval/, runs/ (what the demo writes); default
    $CATALOGTUNE_WORKSPACE, else ./demo-out."""

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not str(self.host).strip():
            raise ValueError("host is empty")


def command(cfg: AppConfig) -> list[str]:
    """The ``streamlit run`` command line for ``cfg``."""
    return [
        sys.executable, "-m", "streamlit", "run", str(SCRIPT),
        "--server.address", cfg.host, "--server.port", str(cfg.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a local tool
    ]


def run(cfg: AppConfig) -> int:
    """Serve the app until interrupted; returns streamlit's exit status."""
    from catalogtune.core.util import require

    require("streamlit", extra="app")
    ws = Workspace(cfg.workspace).root
    if ws.exists() and not ws.is_dir():
        raise CatalogtuneError(f"workspace {ws} is not a folder")
    env = dict(os.environ, CATALOGTUNE_WORKSPACE=str(ws))
    print(f"catalogtune app: http://{cfg.host}:{cfg.port}  (workspace {ws})", flush=True)
    proc = subprocess.Popen(command(cfg), env=env)
    # `kill` on this wrapper must stop the server too, not orphan it; training jobs live on.
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue  # the terminal's Ctrl-C reached streamlit as well: wait for it to stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    """Parse ``catalogtune app`` options and serve the app."""
    parser = argparse.ArgumentParser(prog="catalogtune app", description=__doc__)
    config.add_arguments(parser, AppConfig)
    ns = parser.parse_args(argv)
    return run(config.from_namespace(AppConfig, ns))
