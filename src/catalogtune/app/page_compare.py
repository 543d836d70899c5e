"""Compare page: base vs fine-tuned (or one run vs another) answers for one title, optionally with
RAG, and the references. Runs and indexes are chosen from the workspace's; the Experiments page
opens it with two runs picked (``?a=RUN_OR_base&b=RUN``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from catalogtune.app import common, jobs
from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError

RESULT_KEY = "cmp_result"
PICK_KEY = "cmp_pick"
"""Session-state key where the Experiments page leaves the two runs it opens here ({"a", "b"})."""
BASE = "base"
"""The left side's value for the base model (the right-hand run with its adapter off)."""
NO_INDEX = ""
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

            return Index.open(index_dir)  # a folder, or a Chroma server's http://HOST:PORT

        _LOADERS.update(generator=generator, index=index)
    return _LOADERS


def _generator(run_dir: Path, tok: str | None) -> Any:
    """One loaded Generator per run folder, kept between questions and shared by sessions."""
    return _loaders()["generator"](str(run_dir), _stamp(run_dir), tok)


def _index(index_dir: Path | str) -> Any:
    """One opened Index per index folder or server address."""
    from catalogtune.rag.index import is_address, parse_address

    if is_address(index_dir):
        return _loaders()["index"](parse_address(index_dir)[0], 0.0)
    return _loaders()["index"](str(index_dir), _stamp(Path(index_dir)))


def _run_dir(ws: jobs.Workspace, run_text: str) -> Path:
    run_dir = ws.resolve(run_text, must_exist=True, what="run folder")
    if not (run_dir / "adapter").is_dir():
        raise CatalogtuneError(f"{ws.rel(run_dir)!r} has no adapter/: it is not a finished training run")
    return run_dir


def _generate(gen: Any, prompt: str, adapter: bool, max_new_tokens: int) -> dict[str, Any]:
    with _GENERATE_LOCK:
        # The same decoding as `evaluate` and `ask` (repetition penalty, no repeated 3-grams).
        (g,) = gen.generate([prompt], use_adapter=adapter, **DECODING.kwargs(max_new_tokens=max_new_tokens))
    return {"text": g.text, "new_tokens": g.new_tokens, "seconds": g.seconds,
            "stopped": bool(getattr(g, "stopped_at_eos", getattr(g, "stopped", False)))}


def compare(ws: jobs.Workspace, title: str, run_text: str, use_rag: bool, k: int, max_new_tokens: int,
            tok: str | None = None, versus: str = BASE, index_text: str | None = None) -> dict[str, Any]:
    """Run one comparison: references (if an index exists), then the two outputs.

    ``versus`` is :data:`BASE` (the run's base model with its adapter switched off) or another run
    folder; ``index_text`` an index folder or a Chroma server's ``http://HOST:PORT`` (None: the
    workspace's ``index/`` if there is one).
    """
    title = common.check_text(title)
    run_dir = _run_dir(ws, run_text)
    other = None if versus == BASE else _run_dir(ws, versus)
    if other == run_dir:
        raise CatalogtuneError("choose two different runs, or the base model on the left")
    from catalogtune.rag.index import is_address

    served = index_text is not None and is_address(index_text.strip())
    index_dir = (ws.index if index_text is None else
                 index_text.strip() if served else ws.resolve(index_text, must_exist=True, what="index"))
    refs: list[dict[str, Any]] = []
    if served or index_dir.is_dir():
        refs = _index(index_dir).query([title], k=k)[0]
    elif use_rag:
        raise CatalogtuneError(f"no index in {ws.rel(index_dir)}/: run `catalogtune index`, or untick RAG")
    gen = _generator(run_dir, tok)
    context = refs if use_rag else None
    if other is None:
        prompt = gen.prompt(title, context=context)
        outputs = {"base": _generate(gen, prompt, False, max_new_tokens),
                   "fine-tuned": _generate(gen, prompt, True, max_new_tokens)}
        label = ws.rel(run_dir)
    else:
        left = _generator(other, tok)  # each run's own prompt: their base models may differ
        outputs = {ws.rel(other): _generate(left, left.prompt(title, context=context), True, max_new_tokens),
                   ws.rel(run_dir): _generate(gen, gen.prompt(title, context=context), True, max_new_tokens)}
        label = f"{ws.rel(other)} vs {ws.rel(run_dir)}"
    return {"title": title, "run": label, "rag": use_rag, "refs": refs, "outputs": outputs}


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
            st.subheader(f"{common.md_escape(label)}{rag}")  # a run folder's name is the user's
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


def incoming_pick(params: Any, state: Any) -> tuple[str, str] | None:
    """The two runs another page asked for: query parameters ``?a=...&b=...`` first, else session state."""
    a, b = params.get("a"), params.get("b")
    if not b:
        pick = state.get(PICK_KEY)
        a, b = (pick.get("a"), pick.get("b")) if isinstance(pick, dict) else (None, None)
    if not isinstance(b, str) or not b.strip():
        return None
    return (a if isinstance(a, str) and a.strip() else BASE), b


def _apply_pick(runs: list[str]) -> None:
    """Preselect the picked runs once (a later choice in the boxes is the user's); unknown paths go
    to the typed-path field, where they are checked like typed text."""
    import streamlit as st

    pick = incoming_pick(st.query_params, st.session_state)
    if pick is None or st.session_state.get("cmp_applied") == pick:
        return
    st.session_state["cmp_applied"] = pick
    a, b = pick
    if b in runs:
        st.session_state["cmp_pick_run"], st.session_state["cmp_run"] = b, ""
    else:
        st.session_state["cmp_run"] = b  # checked like typed text when Compare is pressed
    known = a in (BASE, *runs)
    st.session_state["cmp_versus"] = a if known else BASE
    if not known:
        st.session_state["cmp_pick_note"] = f"{a!r} is not a run of this workspace: comparing with the base model"


def _choices(ws: jobs.Workspace, runs: list[str]) -> tuple[str, str, str]:
    """The form's run, versus and index boxes, plus the free-text run folder; returns (run, versus, index)."""
    import streamlit as st

    c1, c2 = st.columns(2)
    versus = c1.selectbox("Left", [BASE, *runs], key="cmp_versus",
                          format_func=lambda r: "base model (the right run's adapter off)" if r == BASE else r)
    run = c2.selectbox("Right (a training run)", runs or [""], key="cmp_pick_run",
                       format_func=lambda r: r or "(no runs in the workspace)")
    typed = c2.text_input("Or type a run folder (overrides the list)", key="cmp_run", placeholder="runs/NAME")
    indexes = ws.indexes()
    index = c1.selectbox("Index (references)", indexes or [NO_INDEX], key="cmp_index",
                         format_func=lambda r: r or "(no index in the workspace)")
    served = c1.text_input("Or a Chroma server (overrides the list)", key="cmp_index_url",
                           placeholder="http://127.0.0.1:8001")
    return (typed.strip() or run), versus, (served.strip() or index)


def render() -> None:
    """The Compare page."""
    import streamlit as st

    st.title("Compare")
    ws = common.workspace()
    runs = ws.all_runs()
    _apply_pick(runs)
    note = st.session_state.pop("cmp_pick_note", None)
    if note:
        st.warning(common.md_escape(note))
    with st.form("compare_form"):
        title = st.text_input("Product title or question", key="cmp_title",
                              placeholder="e.g. Acoustic guitar strings, light gauge")
        run_text, versus, index = _choices(ws, runs)
        c1, c2, c3 = st.columns(3)
        use_rag = c1.checkbox("With RAG", value=False, key="cmp_rag")
        k = c2.number_input("Top-k records", 1, 20, 5, key="cmp_k")
        max_new = c3.number_input("Max new tokens", 8, 512, DECODING.max_new_tokens, key="cmp_max_new")
        go = st.form_submit_button("Compare", type="primary")
    if go:
        try:
            if not run_text:
                raise CatalogtuneError("no run chosen: train one on the Fine-tune page, or type a run folder")
            with st.spinner("Generating..."):
                st.session_state[RESULT_KEY] = compare(ws, title, run_text, use_rag, int(k), int(max_new),
                                                       tok=common.token(), versus=versus,
                                                       index_text=index or None)
        except CatalogtuneError as exc:
            st.session_state.pop(RESULT_KEY, None)
            st.error(common.md_escape(str(exc)))
        except Exception as exc:  # a broken run folder must not take the page down
            st.session_state.pop(RESULT_KEY, None)
            first = str(exc).splitlines()[0] if str(exc) else ""
            st.error(common.md_escape(f"could not generate with {run_text!r}: {type(exc).__name__}: {first}"))
    if RESULT_KEY in st.session_state:
        _show(st.session_state[RESULT_KEY])
