"""Property-based tests of the readers and the cleaner (Hypothesis; few examples, so it stays fast).

- arbitrary bytes and arbitrary JSON values never crash ``prepare``, and every line is accounted
  for: kept + dropped + malformed = records read, records read + blank lines = lines;
- cleaning is idempotent: clean(clean(x)) == clean(x), for descriptions and titles;
- cleaned text holds no control, bidi/invisible or markup-injection characters (HTML tags,
  chat special-token strings).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from catalogtune.core import prompt
from catalogtune.core.util import CatalogtuneError, read_json
from catalogtune.data import clean
from catalogtune.data.prepare import PrepareConfig, run

# database=None: no .hypothesis/ folder in the checkout; the seeds are fixed by derandomize
FAST = settings(max_examples=50, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffd]")
FRAGMENTS = ["<b>", "</i>", "<p class='x'>", "<", ">", "&", ";", "&amp;", "&lt;", "&#8238;", "&#x200f;", "#",
             "<|im_end|>", "<eos>", "<|", "|>", "This text refers to thePaperbackedition.",
             "Copyright 1999 Reed Business Information, Inc.", ".", "A", "b", "c", " ", "\n", "\t", "\x00",
             "\x85", "\u0301", "e\u0301", "é", "\u202e", "\u2066", "\u2069", "\u200b", "\u200f", "\u061c",
             "\ufeff", "\u00ad", "\U000e0041", "\ufffd", "ß", "中"]
texts = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join))
LINE_BITS = [b'{"title": "Red Kettle", "content": "A sturdy kettle that boils water in three minutes."}',
             b'{"title": ', b'"content"', b"[1, 2]", b"null", b'{"title": 5, "content": "x"}', b"\n", b"\r\n",
             b"   \n", b"\xff\xfe", b"\xe2\x80\xae", b"{}", b'{"uid": 7, "title": "T", "content": "<b>Bold</b> words here."}']
raw_bytes = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(LINE_BITS)), max_size=30).map(b"".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=8)
records = st.one_of(json_values, st.fixed_dictionaries({"title": json_values, "content": json_values},
                                                       optional={"uid": json_values}))


def _prepare(data: bytes) -> dict:
    """prepare on a file holding ``data``; its quality report (also when nothing was kept)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(data)
        try:
            run(PrepareConfig(inputs=[path], out=Path(tmp) / "out", min_content_chars=5))
        except CatalogtuneError as exc:
            assert "no usable records" in str(exc), exc
        return read_json(Path(tmp) / "out" / "quality_report.json")


def _accounted(rep: dict, data: bytes) -> None:
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    assert rep["records_read"] == rep["kept"] + rep["dropped_total"] + rep["malformed_total"]
    assert rep["records_read"] + rep["blank_lines"] == len(lines)


@FAST
@given(raw_bytes)
def test_arbitrary_bytes_never_crash_prepare(data):
    assume(not data.startswith((b"\x1f\x8b", b"PAR1")))  # those are read as gzip / Parquet
    _accounted(_prepare(data), data)


@FAST
@given(st.lists(records, min_size=1, max_size=12))
def test_arbitrary_json_values_never_crash_prepare(values):
    data = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values).encode("utf-8", "surrogatepass")
    rep = _prepare(data)
    _accounted(rep, data)
    assert rep["records_read"] == len(values)


@FAST
@given(texts)
def test_cleaning_is_idempotent(text):
    once = clean.clean_text(text)
    assert clean.clean_text(once) == once
    title = clean.clean_title(text)
    assert clean.clean_title(title) == title
    if title.strip():
        p = prompt.clean_title(title, max_chars=10_000)
        assert prompt.clean_title(p, max_chars=10_000) == p


@FAST
@given(texts)
def test_cleaned_text_is_inert(text):
    for cleaned in (clean.clean_text(text), clean.clean_title(text)):
        assert not CONTROL.search(cleaned), ascii(cleaned)
        assert not prompt.INVISIBLE.search(cleaned), ascii(cleaned)
        assert not clean._TAG.search(cleaned), ascii(cleaned)
        assert not prompt._SPECIAL.search(cleaned), ascii(cleaned)
        assert cleaned == cleaned.strip() and "  " not in cleaned
