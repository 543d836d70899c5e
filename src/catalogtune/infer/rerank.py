"""Consensus reranking: decode each prompt several ways and keep the answer the others agree with.

Minimum Bayes risk selection (Kumar and Byrne 2004; Freitag et al. 2022 for neural text) over a
few greedy decodings instead of samples: the shared decoding plus the same decoding with stronger,
no title guidance and the grounding penalty (``VARIANTS``). Each answer's score is its mean cosine
similarity (sentence embeddings) to the other answers of the same prompt. A name or date that only
one decoding invented pulls its answer away from the rest, so the kept answer is the one whose
content most decodings share. The selection sees only the answers, never a reference or the claim
check that ``evaluate`` scores.

Measured with the demo's recipe (2026-12-03; README, "what was tried"): on the validation split
(n = 69) the fine-tuned model with references gained MiniLM cosine +0.013 [+0.003, +0.025] and
lost unsupported claims -0.118 [-0.190, -0.054] against the shared decoding alone, and the other
systems moved the same way; on the test split (n = 120) only the fewer unsupported claims held
(-0.063 [-0.106, -0.016]; ROUGE-L and cosine n.s.). It costs one full generation per variant, so
it is an option (``evaluate --rerank``), off by default.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

VARIANTS: tuple[dict[str, Any], ...] = ({}, {"guidance": 1.0}, {"ground_penalty": 4.0}, {"guidance": 0.0})
"""Decodings whose answers are compared, as overrides of the shared decoding ({} = unchanged). The
first is the shared decoding itself, which also wins ties."""


def consensus(vectors: np.ndarray) -> int:
    """Index of the row with the highest mean cosine to the other rows (rows of unit length).

    Ties (and a single row) go to the lowest index, the shared decoding.
    """
    vecs = np.asarray(vectors, dtype=np.float64)
    if vecs.ndim != 2 or len(vecs) == 0:
        raise ValueError("consensus needs a non-empty (n, dim) array")
    if len(vecs) == 1:
        return 0
    sim = vecs @ vecs.T
    agree = (sim.sum(axis=1) - np.diag(sim)) / (len(vecs) - 1)
    return int(np.flatnonzero(agree >= agree.max() - 1e-9)[0])


def choose(answers: Sequence[Sequence[str]], embed: Callable[[list[str]], np.ndarray]) -> list[int]:
    """For each prompt, the index of the kept answer among its variants' answers.

    ``answers[v][i]`` is variant v's answer to prompt i; ``embed`` maps texts to unit rows (the
    embedder is called once, on every answer).
    """
    if not answers:
        return []
    n = len(answers[0])
    if any(len(a) != n for a in answers):
        raise ValueError("every variant must answer every prompt")
    flat = [text for variant in answers for text in variant]
    vecs = np.asarray(embed(flat)).reshape(len(answers), n, -1)
    return [consensus(vecs[:, i, :]) for i in range(n)]
