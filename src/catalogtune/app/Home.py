"""Streamlit entry script: ``streamlit run Home.py`` (``catalogtune app`` does this for you)."""

from __future__ import annotations

import streamlit as st

from catalogtune.app import common, page_compare, page_data, page_eval, page_experiments, page_finetune

PARTS = [
    ("prep", "prepared splits + quality report"), ("eda", "analysis report"),
    ("index", "RAG index"), ("run", "training run"), ("eval", "evaluation report"),
]


def overview() -> None:
    """The home page: what the workspace holds."""
    ws = common.workspace()
    st.title("catalogtune")
    st.write("Teach a small model a product catalogue, see the records behind each answer, "
             "and measure what LoRA fine-tuning changed.")
    # Words, not emoji: CI's Chromium has no emoji font.
    lines = [f"- `{name}/` ({what}): {'present' if (ws.root / name).is_dir() else '*missing*'}" for name, what in PARTS]
    runs = ws.runs()
    lines.append(f"- training runs: {', '.join(f'`{r}`' for r in runs) if runs else 'none yet'}")
    searches = ws.searches()
    if searches:
        lines.append(f"- hyper-parameter searches: {', '.join(common.md_escape(s) for s in searches)} (see Experiments)")
    st.markdown("**In the workspace**\n\n" + "\n".join(lines))
    if not ws.root.is_dir():
        st.warning(f"The workspace {ws.root} does not exist yet: run `catalogtune demo --out {ws.root}`.")


def sidebar() -> None:
    """Workspace path and the session-only hub token."""
    with st.sidebar:
        st.caption(f"Workspace: `{common.workspace().root}`")
        st.text_input(
            "Hugging Face token (optional)", type="password", key=common.TOKEN_KEY,
            help="For gated hub models. Kept in this browser session's memory only; passed to "
                 "background jobs through their environment, never written to disk or logs.",
        )


st.set_page_config(page_title="catalogtune", layout="wide")
sidebar()
st.navigation([
    st.Page(overview, title="Home", url_path="home", default=True),
    st.Page(page_data.render, title="Data", url_path="data"),
    st.Page(page_finetune.render, title="Fine-tune", url_path="finetune"),
    st.Page(page_compare.render, title="Compare", url_path="compare"),
    st.Page(page_eval.render, title="Evaluation", url_path="evaluation"),
    st.Page(page_experiments.render, title="Experiments", url_path="experiments"),
]).run()
