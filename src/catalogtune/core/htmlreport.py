"""Self-contained HTML reports: escaped tables, base64-embedded images, one built-in stylesheet.

Used by ``analyze``, ``evaluate`` and the demo summary. A page loads nothing from outside
(no CDN, no fonts, no ``http(s)://`` resources), so it can be mailed, archived or opened
offline; every piece of data goes through :func:`escape`, so a ``<script>`` in a product
title shows as text.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Iterable

from catalogtune.core.util import CatalogtuneError

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --band: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.9em; margin: 0.2em 0 0.1em; border-bottom: 1px solid var(--line); padding-bottom: 0.3em; }
h2 { font-size: 1.35em; margin: 1.8em 0 0.5em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; }
h3 { font-size: 1.1em; margin: 1.2em 0 0.4em; }
nav { font-size: 0.92em; color: var(--muted); margin: 0.6em 0 1em; }
nav a { color: var(--accent); text-decoration: none; margin-right: 1em; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
p.meta, p.note, .muted { color: var(--muted); font-size: 0.92em; }
p.note { border-left: 3px solid #d4a72c; background: #fff8c5; padding: 6px 10px; color: var(--fg); }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; max-width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 0.8em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 0.3em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: var(--band); padding: 8px 12px; overflow-x: auto; border-radius: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 8px 24px; }
"""


def escape(text: Any) -> str:
    """HTML-escape any value (quotes included) after ``str()``; ``None`` becomes ``""``."""
    return "" if text is None else html.escape(str(text), quote=True)


def img_data_uri(png_path: str | Path) -> str:
    """The image file as a ``data:`` URI (base64), so the page needs no side files."""
    path = Path(png_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogtuneError(f"cannot embed image {path}: {exc.strerror or exc}") from None
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figure(png_path: str | Path, caption: str = "", alt: str | None = None) -> str:
    """An embedded image with an (escaped) caption."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    alt_text = escape(alt if alt is not None else caption or Path(png_path).stem)
    return f'<figure><img src="{img_data_uri(png_path)}" alt="{alt_text}">{cap}</figure>'


def paragraph(text: str, cls: str | None = None) -> str:
    """An escaped paragraph, optionally with a CSS class (``note``, ``meta``, ``muted``)."""
    klass = f' class="{escape(cls)}"' if cls else ""
    return f"<p{klass}>{escape(text)}</p>"


def _cell(value: Any, floatfmt: str) -> tuple[str, bool]:
    """(escaped text, is_numeric) for one table cell."""
    if isinstance(value, bool) or value is None:
        return escape("" if value is None else value), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return escape(value), True
        return escape(floatfmt.format(value)), True
    if isinstance(value, (list, tuple)):
        return escape(", ".join(str(v) for v in value)), False
    return escape(value), False


def table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.4g}") -> str:
    """An HTML table of ``rows`` (dicts); ``columns`` picks and orders them (default: keys in
    first-seen order). Every value is escaped; ints get thousands separators, floats ``floatfmt``.
    """
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    if not rows:
        return '<p class="muted">(no rows)</p>'
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text, numeric = _cell(row.get(c), floatfmt)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _anchor(heading: str, seen: set[str]) -> str:
    """A unique, URL-safe id for a section heading."""
    base = "".join(ch if ch.isalnum() else "-" for ch in heading.lower()).strip("-") or "section"
    anchor, n = base, 2
    while anchor in seen:
        anchor, n = f"{base}-{n}", n + 1
    seen.add(anchor)
    return anchor


def page(title: str, sections: Iterable[tuple[str, str]], subtitle: str | None = None) -> str:
    """A complete HTML document: escaped ``title``, a table of contents, then one ``<section>``
    per ``(heading, inner_html)``. ``inner_html`` is trusted markup (build it with the helpers
    here); headings are escaped.
    """
    sections = list(sections)
    seen: set[str] = set()
    ids = [_anchor(h, seen) for h, _ in sections]
    nav = "".join(f'<a href="#{i}">{escape(h)}</a>' for i, (h, _) in zip(ids, sections))
    body = "\n".join(
        f'<section id="{i}"><h2>{escape(h)}</h2>\n{inner}\n</section>' for i, (h, inner) in zip(ids, sections)
    )
    sub = f'<p class="meta">{escape(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main><h1>{escape(title)}</h1>{sub}"
        f"{'<nav>' + nav + '</nav>' if len(sections) > 1 else ''}\n{body}\n</main></body></html>\n"
    )
