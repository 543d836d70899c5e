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
    penalty_scope: str = "output"
    """What the repetition penalty and the no-repeat rule look at: "output" (generated tokens
    only) or "all" (prompt too, transformers' behaviour). Over the prompt they stop the model
    from repeating the title's words or copying a retrieved record's facts."""
    do_sample: bool = False
    """Greedy (False) or sampled decoding."""

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``Generator.generate``; ``overrides`` (e.g. max_new_tokens) win."""
        kw = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty,
              "no_repeat_ngram_size": self.no_repeat_ngram_size, "penalty_scope": self.penalty_scope,
              "do_sample": self.do_sample}
        kw.update(overrides)
        return kw


PENALTY_SCOPES = ("output", "all")
"""What the repetition rules look at: the generated tokens only, or the prompt too."""


def output_rules(prompt_width: int, repetition_penalty: float, no_repeat_ngram_size: int) -> Any:
    """transformers logits processors for the repetition penalty and the no-repeat n-gram rule that
    see only the tokens after ``prompt_width`` (the left-padded prompt), not the prompt."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(_OutputOnly(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)), prompt_width))
    if no_repeat_ngram_size:
        procs.append(_OutputOnly(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size), prompt_width))
    return procs


class _OutputOnly:
    """A logits processor applied to the generated part of ``input_ids`` only."""

    def __init__(self, inner: Any, start: int) -> None:
        self.inner, self.start = inner, start

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.start:]
        return scores if generated.shape[-1] == 0 else self.inner(generated, scores)


DECODING = Decoding()
"""The project's one decoding setting (greedy, repetition penalty 1.2, no repeated 3-grams)."""
