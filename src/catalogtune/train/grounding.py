"""Grounded targets: train only on the sentences of a description that its prompt supports.

A reference description states facts the title does not hold: on the shared sample 91 % of
the checkable claims of a description (names, numbers, sizes: ``core.claims``) appear in
neither its title nor its retrieved references. A model fine-tuned on them learns to state such
facts for every product, and at inference it has to make them up (the fine-tuned model's
author biographies, with birthplaces and dates, for authors the title does not name).

This is entity-level filtering of the training data (as in Nan et al., 2021, "Entity-level
factual consistency of abstractive text summarization"): each target keeps the sentences
whose every claim is in the example's prompt, i.e. its title and, for a retrieval-aware
example, the records in its prompt. A target with less than ``min_chars`` left is dropped
(and counted). The references used to score the model are never touched.
"""

from __future__ import annotations

import re
from typing import Any

from catalogtune.core.claims import unsupported_claims

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"“'(\[]?[A-Z0-9])")


def ground_text(text: str, title: str, refs: list[str] | tuple[str, ...] = ()) -> str:
    """The sentences of ``text`` with no claim outside ``title`` and ``refs``, in order."""
    sentences = _SENTENCE.split((text or "").strip())
    return " ".join(s for s in sentences if s and unsupported_claims(s, title, refs)[1] == 0)


def ground_rows(rows: list[dict[str, Any]], min_chars: int = 40) -> dict[str, int]:
    """Replace each row's ``content`` by its grounded sentences, in place; drop rows left too short.

    A row's support is its title plus the contents of its ``context`` (retrieval-aware
    examples). Returns counts: ``kept``, ``dropped``, ``chars_before``, ``chars_after``.
    """
    counts = {"kept": 0, "dropped": 0, "chars_before": 0, "chars_after": 0}
    out = []
    for row in rows:
        text = str(row.get("content") or "")
        refs = [str(c.get("content") or "") for c in row.get("context") or ()]
        grounded = ground_text(text, str(row.get("title") or ""), refs)
        counts["chars_before"] += len(text)
        if len(grounded) < min_chars:
            counts["dropped"] += 1
            continue
        counts["chars_after"] += len(grounded)
        counts["kept"] += 1
        out.append({**row, "content": grounded})
    rows[:] = out
    return counts
