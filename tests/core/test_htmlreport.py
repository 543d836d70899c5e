"""The shared HTML helper: escaped, self-contained, images embedded."""

from __future__ import annotations

import base64
import re
import struct
import zlib

import pytest

from catalogtune.core import htmlreport as hr
from catalogtune.core.util import CatalogtuneError

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def _png(path, width=3, height=2):
    """A valid RGB PNG written by hand (no imaging library needed)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(data)
    return data


def test_escape_handles_markup_quotes_and_none():
    assert hr.escape('<script>alert("x")</script>') == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert hr.escape("a & b's") == "a &amp; b&#x27;s"
    assert hr.escape(None) == ""
    assert hr.escape(3) == "3"


def test_img_data_uri_round_trips_the_bytes(tmp_path):
    data = _png(tmp_path / "x.png")
    uri = hr.img_data_uri(tmp_path / "x.png")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == data


def test_img_data_uri_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(CatalogtuneError, match="cannot embed image"):
        hr.img_data_uri(tmp_path / "missing.png")


def test_table_escapes_orders_and_formats():
    rows = [{"name": "<script>alert(1)</script>", "n": 1234567, "x": 0.123456, "extra": "drop me"},
            {"name": "b & c", "x": float("nan")}]
    html = hr.table(rows, columns=["x", "name", "n"])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "drop me" not in html and "extra" not in html
    assert html.index("<th>x</th>") < html.index("<th>name</th>") < html.index("<th>n</th>")
    assert "1,234,567" in html and "0.1235" in html and "b &amp; c" in html
    assert html.count("<tr>") == 3  # header + 2 rows; the missing "n" is an empty cell
    assert hr.table(rows, ["x"], floatfmt="{:.1%}").count("12.3%") == 1


def test_table_default_columns_union_in_first_seen_order():
    html = hr.table([{"a": 1}, {"b": 2, "a": 3}])
    assert html.index("<th>a</th>") < html.index("<th>b</th>")
    assert "no rows" in hr.table([])


def test_page_is_self_contained_escaped_and_includes_images(tmp_path):
    _png(tmp_path / "p.png")
    sections = [
        ("Plots <b>", hr.figure(tmp_path / "p.png", "caption <i>")),
        ("Data", hr.table([{"title": '<script>alert("pwned")</script>'}])),
        ("Data", hr.paragraph("second section with the same heading", "note")),
    ]
    html = hr.page("Report <script>", sections, subtitle="sub & title")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert EXTERNAL.search(html) is None
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in html
    assert "Plots &lt;b&gt;" in html and "caption &lt;i&gt;" in html
    assert html.count('src="data:image/png;base64,') == 1
    assert "<style>" in html and "<link" not in html
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert len(ids) == 3 and len(set(ids)) == 3  # repeated headings still get their own anchor
    for i in ids:
        assert f'href="#{i}"' in html


def test_external_pattern_catches_remote_resources():
    # guard for the check above: the detector must fire on what it is meant to reject
    assert EXTERNAL.search('<img src="https://x/y.png">')
    assert EXTERNAL.search("<link href=//cdn/x.css>")
    assert not EXTERNAL.search('<img src="data:image/png;base64,AAAA">')
