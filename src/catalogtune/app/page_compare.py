"""Compare page: base vs fine-tuned answers for one title, optionally with RAG, and the references."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from catalogtune.app import common, jobs
from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError

RESULT_KEY = "cmp_result"
_GENERATE_LOCK = threading.Lock()
"""Sessions share one model, and switching its adapter off is model-wide state: one at a time."""


def _stamp(path: Path) -> float:
    """Modification time of a folder's key file, so a retrained run or rebuilt index reloads."""
    for name in ("adapter/adapter_model.safetensors", "adapter", "index.json", "config.yaml", "."):
        p = path / name
        if p.exists():
            return p.stat().st_mtime
    return 0.0


_LOADERS: dict[str, Any] = {}


def _loaders() -> dict[str, Any]:
    """The cached loaders, made once per process (streamlit is imported only when a page runs)."""
    if not _LOADERS:
        import streamlit as st

        @st.cache_resource(show_spinner="Loading the model (once per run)...", max_entries=2)
        def generator(run_dir: str, stamp: float, _tok: str | None) -> Any:
            # _tok is left out of the cache key (leading underscore): it only unlocks hub models.
            from catalogtune.infer.generate import Generator

            with common.token_env(_tok):
                return Generator.from_run(Path(run_dir))

        @st.cache_resource(show_spinner="Opening the index...", max_entries=2)
        def index(index_dir: str, stamp: float) -> Any:
            from catalogtune.rag.index import Index

            return Index.open(Path(index_dir))

        _LOADERS.update(generator=generator, index=index)
    return _LOADERS


def _generator(run_dir: Path, tok: str | None) -> Any:
    """One loaded Generator per run folder, kept between questions and shared by sessions."""
    return _loaders()["generator"](str(run_dir), _stamp(run_dir), tok)


def _index(index_dir: Path) -> Any:
    """One opened Index per index folder."""
    return _loaders()["index"](str(index_dir), _stamp(index_dir))


def compare(ws: jobs.Workspace, title: str, run_text: str, use_rag: bool, k: int, max_new_tokens: int,
            tok: str | None = None) -> dict[str, Any]:
    """Run one comparison: references (if an index exists), then base and fine-tuned outputs."""
    title = common.check_text(title)
    run_dir = ws.resolve(run_text, must_exist=True, what="run folder")
    if not (run_dir / "adapter").is_dir():
        raise CatalogtuneError(f"{ws.rel(run_dir)!r} has no adapter/: it is not a finished training run")
    refs: list[dict[str, Any]] = []
    if ws.index.is_dir():
        refs = _index(ws.index).query([title], k=k)[0]
    elif use_rag:
        raise CatalogtuneError(f"no index in {ws.rel(ws.index)}/: run `catalogtune index`, or untick RAG")
    gen = _generator(run_dir, tok)
    prompt = gen.prompt(title, context=refs if use_rag else None)
    outputs = {}
    for label, adapter in (("base", False), ("fine-tuned", True)):
        with _GENERATE_LOCK:
            # The same decoding as `evaluate` and `ask` (repetition penalty, no repeated 3-grams).
            (g,) = gen.generate([prompt], use_adapter=adapter, **DECODING.kwargs(max_new_tokens=max_new_tokens))
        outputs[label] = {
            "text": g.text, "new_tokens": g.new_tokens, "seconds": g.seconds,
            "stopped": bool(getattr(g, "stopped_at_eos", getattr(g, "stopped", False))),
        }
    return {"title": title, "run": ws.rel(run_dir), "rag": use_rag, "refs": refs, "outputs": outputs}


def _show(result: dict[str, Any]) -> None:
    import streamlit as st

    rag = " + RAG" if result["rag"] else ""
    # The title is the user's and the outputs are the model's: escaped or plain text, never
    # Markdown (a title "![x](http://host/pixel.png)" would load an image, "[a](javascript:...)"
    # in an output would be a link).
    st.markdown(f"**{common.md_escape(result['title'])}**  \nrun {common.md_escape(result['run'])}")
    cols = st.columns(2)
    for col, (label, out) in zip(cols, result["outputs"].items()):
        with col:
            st.subheader(f"{label}{rag}")
            st.text(common.plain(out["text"]) or "(empty output)")
            end = "stopped at the end token" if out["stopped"] else "hit the token limit"
            st.caption(f"{out['new_tokens']} tokens in {out['seconds']:.2f} s; {end}")
    if result["refs"]:
        note = " (given to both as context)" if result["rag"] else ""
        st.subheader(f"Top {len(result['refs'])} training records{note}")
        st.dataframe(
            [{"score": round(float(r.get("score", 0.0)), 4), "id": r.get("id"), "title": r.get("title"),
              "content": str(r.get("content", ""))[:500]} for r in result["refs"]],
            hide_index=True,
        )
    else:
        st.caption("No RAG index in the workspace, so no training records are shown (run `catalogtune index`).")


def render() -> None:
    """The Compare page."""
    import streamlit as st

    st.title("Compare")
    ws = common.workspace()
    runs = ws.runs()
    with st.form("compare_form"):
        title = st.text_input("Product title or question", key="cmp_title",
                              placeholder="e.g. Acoustic guitar strings, light gauge")
        run_text = st.text_input("Run folder", value=runs[0] if runs else "run", key="cmp_run")
        c1, c2, c3 = st.columns(3)
        use_rag = c1.checkbox("With RAG", value=False, key="cmp_rag")
        k = c2.number_input("Top-k records", 1, 20, 5, key="cmp_k")
        max_new = c3.number_input("Max new tokens", 8, 512, DECODING.max_new_tokens, key="cmp_max_new")
        go = st.form_submit_button("Compare", type="primary")
    if go:
        try:
            with st.spinner("Generating..."):
                st.session_state[RESULT_KEY] = compare(ws, title, run_text, use_rag, int(k), int(max_new),
                                                       tok=common.token())
        except CatalogtuneError as exc:
            st.session_state.pop(RESULT_KEY, None)
            st.error(common.md_escape(str(exc)))
        except Exception as exc:  # a broken run folder must not take the page down
            st.session_state.pop(RESULT_KEY, None)
            first = str(exc).splitlines()[0] if str(exc) else ""
            st.error(common.md_escape(f"could not generate with {run_text!r}: {type(exc).__name__}: {first}"))
    if RESULT_KEY in st.session_state:
        _show(st.session_state[RESULT_KEY])
