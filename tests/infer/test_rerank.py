"""Consensus reranking (infer.rerank): the answer most variants agree with is kept."""

from __future__ import annotations

import numpy as np
import pytest

from catalogtune.infer import rerank
from catalogtune.rag.embed import HashEmbedder


def test_consensus_keeps_the_row_closest_to_the_others_and_ties_go_to_the_first():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    mid = np.array([1.0, 1.0]) / np.sqrt(2)
    assert rerank.consensus(np.stack([a, mid, b])) == 1  # the middle one agrees with both ends
    assert rerank.consensus(np.stack([a, b, b])) == 1  # two that agree beat the odd one out
    assert rerank.consensus(np.stack([a, a, a])) == 0 and rerank.consensus(a[None]) == 0
    with pytest.raises(ValueError, match="non-empty"):
        rerank.consensus(np.zeros((0, 2)))


def test_choose_drops_an_invention_only_one_decoding_made():
    embed = HashEmbedder(256).embed
    answers = [
        ["Kettle with Zorblax Quuxfen heating by Wibblecorp since 1887.", "A soft cotton scarf in red."],
        ["A stainless steel kettle that boils water fast.", "A soft cotton scarf in deep red."],
        ["A stainless steel kettle that boils water quickly.", "Grandmother Ethel Wobblesworth of Dundee knitted it."],
    ]
    # prompt 0: the shared decoding invented; prompt 1: the third variant did
    picks = rerank.choose(answers, embed)
    assert picks[0] in (1, 2) and picks[1] in (0, 1)
    assert rerank.choose([], embed) == []
    with pytest.raises(ValueError, match="every variant"):
        rerank.choose([["a", "b"], ["c"]], embed)


def test_variants_start_with_the_shared_decoding():
    assert rerank.VARIANTS[0] == {} and len(rerank.VARIANTS) >= 3
    assert all(set(v) <= {"guidance", "ground_penalty"} for v in rerank.VARIANTS)
