"""Pieces every page uses: the workspace, the session-only hub token, error display."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator

from catalogtune.app.jobs import Workspace
from catalogtune.core.util import CatalogtuneError, read_json

TOKEN_KEY = "hf_token"
"""Session-state key of the token field (memory only: never written, logged or put in argv)."""
MAX_INPUT_CHARS = 5000
"""Longer text in a title box is refused outright (titles are cut to 300 characters anyway)."""

_ENV_LOCK = threading.Lock()
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def workspace() -> Workspace:
    """The workspace this app serves (``CATALOGTUNE_WORKSPACE``, default ``./demo-out``)."""
    return Workspace()


def token() -> str | None:
    """The hub token typed in this browser session, if any."""
    import streamlit as st

    value = st.session_state.get(TOKEN_KEY) or ""
    return value.strip() or None


@contextlib.contextmanager
def token_env(tok: str | None) -> Iterator[None]:
    """Expose ``tok`` as ``HF_TOKEN`` while a hub model loads in this process, then remove it."""
    if not tok:
        yield
        return
    with _ENV_LOCK:  # sessions share os.environ: one loader at a time sees a token
        old = os.environ.get("HF_TOKEN")
        os.environ["HF_TOKEN"] = tok
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("HF_TOKEN", None)
            else:
                os.environ["HF_TOKEN"] = old


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show a user error as one red line on the page instead of a traceback."""
    import streamlit as st

    try:
        yield
    except CatalogtuneError as exc:
        st.error(md_escape(str(exc)))  # messages quote user input (paths, titles)


_MD_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")
"""Every ASCII punctuation character: CommonMark lets each be escaped with a backslash."""


def md_escape(text: Any) -> str:
    """``text`` for ``st.markdown``/``st.error``, shown as written: no link, image, HTML,
    emphasis, heading, math or colour directive can come out of it; invisible characters go."""
    return _MD_SPECIAL.sub(r"\\\1", plain(text))


def plain(text: Any) -> str:
    """Data or model text for display: bidi/invisible and control characters removed."""
    from catalogtune.core.prompt import strip_invisible

    return _CONTROL.sub(" ", strip_invisible(str(text)))


def json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def images(folder: Path) -> list[Path]:
    """The PNG files of a report folder and of its ``plots/`` subfolder, in name order."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.png")) + sorted((folder / "plots").glob("*.png"))


def show_images(folder: Path, columns: int = 2) -> int:
    """Show a folder's PNGs in a grid, captioned by file name; returns how many."""
    import streamlit as st

    pngs = images(folder)
    cols = st.columns(columns) if pngs else []
    for i, png in enumerate(pngs):
        with cols[i % columns]:
            st.image(str(png), caption=png.stem.replace("_", " "))
    return len(pngs)


def check_text(text: str | None, what: str = "title") -> str:
    """A title or question typed by the user, stripped; empty or huge text is a one-line error."""
    from catalogtune.core.prompt import MAX_TITLE_CHARS, clean_title

    text = text or ""
    if len(text) > MAX_INPUT_CHARS:
        raise CatalogtuneError(
            f"the {what} is too long ({len(text):,} characters; at most {MAX_INPUT_CHARS:,}, "
            f"and only the first {MAX_TITLE_CHARS} are used)"
        )
    try:
        return clean_title(text)
    except CatalogtuneError as exc:
        raise CatalogtuneError(f"{exc}: type a product title or a question") from None
