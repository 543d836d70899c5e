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


def claim_spans(text: str) -> list[tuple[str, str, int, int]]:
    """Checkable claims in ``text`` as (kind, value, start, end): numbers (with units), sizes, names.

    Names are runs of capitalised words that do not start a sentence (a capitalised first word
    is grammar, not a claim); a name's span starts at its first kept word.
    """
    text = text or ""
    claims: list[tuple[str, str, int, int]] = []
    taken: list[tuple[int, int]] = []
    for m in _SIZE.finditer(text):
        claims.append(("size", m.group(1), *m.span()))
        taken.append(m.span())
    for m in _NUMBER.finditer(text):
        claims.append(("number", _norm_number(m.group(1)), *m.span()))
        taken.append(m.span())
    for m in _CAP_RUN.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        words = m.group(0).split()
        skip = 0
        if _SENTENCE_END.search(text[: m.start()].rstrip(" ")) or text[: m.start()].strip() == "":
            skip = len(words[0])
            words = words[1:]  # the sentence's first word is capitalised anyway
        words = [w.strip(".'’-") for w in words if w.strip(".'’-").lower() not in _STOP_CAPS]
        words = [w for w in words if w and w[0].isupper()]
        if words:
            start = m.start() + m.group(0).find(words[0], skip)
            claims.append(("name", " ".join(words), start, m.end()))
    return claims


def extract_claims(text: str) -> list[tuple[str, str]]:
    """Checkable claims in ``text`` as (kind, value): see ``claim_spans``."""
    return [(kind, value) for kind, value, _, _ in claim_spans(text)]


class _Support:
    """The title and retrieved texts a claim may be checked against (case ignored)."""

    def __init__(self, title: str, refs_texts: Sequence[str] = ()) -> None:
        support = " \n ".join([title or "", *[t or "" for t in refs_texts]])
        self.low = support.lower()
        self.words = set(_words(support))
        self.numbers = _numbers_in(support)

    def holds(self, kind: str, value: str) -> bool:
        if kind == "number":
            return value in self.numbers
        if kind == "size":
            return re.search(r"(?<![\w-])" + re.escape(value.lower()) + r"(?![\w-])", self.low) is not None
        return all(w in self.words for w in _words(value))


def unsupported_spans(text: str, title: str, refs_texts: Sequence[str] = ()) -> list[tuple[int, int]]:
    """Character spans of the claims in ``text`` that neither ``title`` nor ``refs_texts`` holds."""
    support = _Support(title, refs_texts)
    return [(a, b) for kind, value, a, b in claim_spans(text) if not support.holds(kind, value)]


def unsupported_claims(output: str, title: str, refs_texts: Sequence[str] = ()) -> tuple[int, int]:
    """(claims, unsupported claims) in ``output`` checked against the title and retrieved texts.

    A number is supported when the same number appears in the support text (units are not
    compared: 12" and 12 inch are the same claim); a size when the same size token appears; a
    name when each of its words appears as a word. Matching ignores case.
    """
    support = _Support(title, refs_texts)
    claims = extract_claims(output)
    return len(claims), sum(not support.holds(kind, value) for kind, value in claims)
