"""Hostile text: huge titles and descriptions are capped, bidi/invisible characters removed (cleaner
and prompts), and the app shows user and model text escaped or plain, never as live Markdown.
"""

from __future__ import annotations

import json
import sys
import types

import pyarrow.parquet as pq

from catalogtune.core.prompt import INVISIBLE, build_prompt, clean_title
from catalogtune.data import clean
from catalogtune.data.prepare import PrepareConfig, run
from faultlib import invent

BIDI = "\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u202a\u202b\u202c\u202d"
PIXEL = "![x](http://198.51.100.7/pixel.png)"
LINK = "[login](javascript:alert(1))"


def test_caps_and_invisible_characters_in_prepare(tmp_path):
    sentence = "This sturdy kettle boils a litre of water in three minutes flat. "
    hostile = [
        {"uid": "long-title", "title": "Kettle " * 14_286, "content": sentence * 3},  # 100,002 characters
        {"uid": "huge", "title": "Huge Kettle", "content": sentence * (20_000_000 // len(sentence))},  # 20 MB
        {"uid": "bidi", "title": f"Safe{BIDI[0]} Kettle{BIDI[1]}x{BIDI[4]}",
         "content": f"{BIDI[6]}A kettle{BIDI}, with a \u200bzero width space and \ufeffa BOM. " * 2},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hostile + invent(60)), encoding="utf-8")
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "out", val_fraction=0.0, test_fraction=0.0))
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()}
    assert "long-title" not in rows and res.dropped["title_too_long"] == 1
    huge = rows["huge"]["content"]
    assert len(huge) <= clean.MAX_CONTENT_CHARS and huge.endswith("flat.")  # cut at a sentence end
    assert rows["bidi"]["title"] == "Safe Kettlex"
    assert rows["bidi"]["content"].startswith("A kettle, with a zero width space and a BOM.")
    for r in rows.values():
        assert not INVISIBLE.search(r["title"] + r["content"])
    assert res.report["cleaned"] == {"content_truncated": 1, "invisible_removed": 1}
    lengths = pq.read_table(tmp_path / "out" / "raw_lengths.parquet").to_pylist()
    assert {"title_chars": 100_002, "content_chars": len(sentence) * 3, "drop_reason": "title_too_long"} in lengths
    # the new reason went to the end: the codes of the older ones did not move
    assert clean.REASONS[:8] == ("empty_title", "empty_content", "placeholder", "too_short", "title_echo",
                                 "not_english", "duplicate_exact", "duplicate_title")
    assert clean.REASONS[-1] == "title_too_long"


def test_prompts_drop_invisible_characters():
    tok = types.SimpleNamespace(chat_template=None)
    prompt = build_prompt(tok, f"Red{BIDI} Kettle", context=[{"title": f"Blue{BIDI[0]} Kettle",
                                                              "content": f"Boils{BIDI[5]} fast."}])
    assert not INVISIBLE.search(prompt) and "RedKettle" not in prompt.replace("Red Kettle", "")
    assert "Red Kettle" in prompt and "Blue Kettle: Boils fast." in prompt
    assert clean_title("a\u202eb\u200bc") == "ab c"  # a zero-width space was a word break


def test_markdown_escape_leaves_no_live_markup():
    from markdown_it import MarkdownIt

    from catalogtune.app.common import md_escape

    md = MarkdownIt("commonmark")
    for text in (PIXEL, LINK, "<img src=x onerror=alert(1)>", "**bold** _it_ `code` # head", "$x^2$ :red[hi]",
                 "1. item\n- item\n> quote", "&lt;b&gt; &#x41;", f"right{BIDI}to-left"):
        html = md.render(md_escape(text))
        assert "<a" not in html and "<img" not in html and "<strong" not in html and "<em" not in html
        assert "<code" not in html and "<h1" not in html and "<ol" not in html and "<blockquote" not in html
        assert not INVISIBLE.search(html)


def test_compare_page_shows_title_and_outputs_as_text(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    class Gen:
        @classmethod
        def from_run(cls, run_dir):
            return cls()

        def prompt(self, title, context=None):
            return title

        def generate(self, prompts, use_adapter=True, **decoding):
            text = f"{LINK} {PIXEL} <b>x</b>{BIDI[0]}"
            return [types.SimpleNamespace(text=text, new_tokens=5, seconds=0.01, stopped_at_eos=True)]

    fake = types.ModuleType("catalogtune.infer.generate")
    fake.Generator = Gen
    monkeypatch.setitem(sys.modules, "catalogtune.infer.generate", fake)
    (tmp_path / "ws" / "run" / "adapter").mkdir(parents=True)
    monkeypatch.setenv("CATALOGTUNE_WORKSPACE", str(tmp_path / "ws"))

    def script():
        from catalogtune.app import page_compare

        page_compare.render()

    at = AppTest.from_function(script, default_timeout=30).run()
    at.text_input(key="cmp_title").input(f"{PIXEL} Kettle")
    at.text_input(key="cmp_run").input("run")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    markdown = " ".join(m.value for m in at.markdown)
    assert "Kettle" in markdown and PIXEL not in markdown and "](http" not in markdown
    outputs = [t.value for t in at.text]
    assert len(outputs) == 2 and all(o == f"{LINK} {PIXEL} <b>x</b>" for o in outputs)  # verbatim, inert

