"""The one decoding setting shared by ``evaluate``, ``ask``, ``serve`` and the app's Compare page.

Kept in ``core`` so that every front end reads the same values without loading a model: the
app once decoded without a repetition penalty while ``evaluate`` used one, and the same model
looked far worse on the Compare page than in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decoding:
    """The decoding settings that ``evaluate``, ``ask``, ``serve`` and the app's Compare page share."""

    max_new_tokens: int = 160
    """Most tokens generated per description."""
    repetition_penalty: float = 1.2
    """Penalty on tokens already in the prompt or output (1.0 = off)."""
    no_repeat_ngram_size: int = 3
    """Forbid repeating any n-gram of this size (0 = off): greedy decoding of small models otherwise loops."""
    do_sample: bool = False
    """Greedy (False) or sampled decoding."""

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``Generator.generate``; ``overrides`` (e.g. max_new_tokens) win."""
        kw = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty,
              "no_repeat_ngram_size": self.no_repeat_ngram_size, "do_sample": self.do_sample}
        kw.update(overrides)
        return kw


DECODING = Decoding()
"""The project's one decoding setting (greedy, repetition penalty 1.2, no repeated 3-grams)."""
