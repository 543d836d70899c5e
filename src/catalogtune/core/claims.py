"""Checkable claims in a generated description, and which of them the title and references support.

Shared by ``evaluate`` (the unsupported-claim rate) and ``infer.describe`` (a flag per product),
so it lives in ``core``: pure functions, regexes only.
"""

from __future__ import annotations

import re
from typing import Sequence

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


_UNITS = (
    r"(?:\"|''|”|inch(?:es)?|in\b|ft|feet|foot|cm|mm|m\b|km|oz|ounces?|lbs?|pounds?|kg|g\b|grams?|"
    r"ml|l\b|liters?|litres?|gal(?:lons?)?|qt|w\b|watts?|v\b|volts?|mah|gb|tb|mb|hz|%|"
    r"pack|pk|pcs?|pieces?|count|ct|pages?|discs?|cds?|years?|yrs?|months?|minutes?|mins?)"
)
# A number (1,000 / 2.5 / 1/2 / 3-1/2) with an optional unit, e.g. 12", 3-pack, 2.5 oz.
_NUMBER = re.compile(
    r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?(?:[- ]\d+/\d+|/\d+)?)(?:\s?-?\s?" + _UNITS + r")?(?![A-Za-z\d])",
    re.IGNORECASE,
)
_SIZE = re.compile(r"(?<![\w-])(X{1,3}[SL]|[2-6]XL|size\s+[SML])(?![\w-])")
_NAME_WORD = r"[A-Z][\w'’&-]*(?:\.[A-Z][\w'’&-]*)*"
_CAP_RUN = re.compile(_NAME_WORD + r"(?:(?:\s+(?:of|the|and|&|de|von|van))*\s+" + _NAME_WORD + r")*")
_STOP_CAPS = {"i", "i'm", "i've", "i'll", "i'd", "a", "an", "the", "this", "it", "ok", "s", "m", "l"}
_SENTENCE_END = re.compile(r"(^|[.!?:;\n•*#\-–—|(\[\"“]\s*)$")


def _norm_number(text: str) -> str:
    return text.replace(",", "").replace(" ", "-")


def _numbers_in(text: str) -> set[str]:
    return {_norm_number(m.group(1)) for m in _NUMBER.finditer(text)}


def extract_claims(text: str) -> list[tuple[str, str]]:
    """Checkable claims in ``text`` as (kind, value): numbers (with units), sizes, names.

    Names are runs of capitalised words that do not start a sentence (a capitalised first word
    is grammar, not a claim).
    """
    text = text or ""
    claims: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []
    for m in _SIZE.finditer(text):
        claims.append(("size", m.group(1)))
        taken.append(m.span())
    for m in _NUMBER.finditer(text):
        claims.append(("number", _norm_number(m.group(1))))
        taken.append(m.span())
    for m in _CAP_RUN.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        words = m.group(0).split()
        if _SENTENCE_END.search(text[: m.start()].rstrip(" ")) or text[: m.start()].strip() == "":
            words = words[1:]  # the sentence's first word is capitalised anyway
        words = [w.strip(".'’-") for w in words if w.strip(".'’-").lower() not in _STOP_CAPS]
        words = [w for w in words if w and w[0].isupper()]
        if words:
            claims.append(("name", " ".join(words)))
    return claims


def unsupported_claims(output: str, title: str, refs_texts: Sequence[str] = ()) -> tuple[int, int]:
    """(claims, unsupported claims) in ``output`` checked against the title and retrieved texts.

    A number is supported when the same number appears in the support text (units are not
    compared: 12" and 12 inch are the same claim); a size when the same size token appears; a
    name when each of its words appears as a word. Matching ignores case.
    """
    support = " \n ".join([title or "", *[t or "" for t in refs_texts]])
    low = support.lower()
    support_words = set(_words(support))
    numbers = _numbers_in(support)
    n = bad = 0
    for kind, value in extract_claims(output):
        n += 1
        if kind == "number":
            ok = value in numbers
        elif kind == "size":
            ok = re.search(r"(?<![\w-])" + re.escape(value.lower()) + r"(?![\w-])", low) is not None
        else:
            ok = all(w in support_words for w in _words(value))
        bad += not ok
    return n, bad
