"""prepare counts description kinds and can drop review-only (etc.) records from the train split only."""

from __future__ import annotations

import json

import pytest

from catalogtune.data.io import read_split
from catalogtune.data.kinds import content_kind
from catalogtune.data.prepare import PrepareConfig, run

PAPERS = ["Daily Planet", "Gotham Gazette", "Riverside Herald", "Northern Courier", "Evening Ledger"]
WORDS = "amber birch cedar delta ember fjord glade harbor island juniper kestrel lagoon".split()


def _name(i: int) -> str:
    # distinct words, not numbers: prepare groups titles that differ only in numbers or sizes
    return f"{WORDS[i % 12]} {WORDS[(i // 12) % 12]} {WORDS[(i * 5 + 3) % 12]}"


def _records(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = PAPERS[i % 5], PAPERS[(i + 2) % 5]
        rows.append({"title": f"The Lantern Keeper of {_name(i)}",
                     "content": f"'An absolutely wonderful story, told with warmth and wit in every part {i}.' {a} "
                                f"'Simply brilliant, I could not put it down for a moment.' {b}"})
        rows.append({"title": f"Steel Garden Trowel {_name(i)}",
                     "content": f"A rust-proof steel trowel with a {10 + i} cm blade and an ash handle, "
                                "for planting bulbs and seedlings in raised beds."})
    return rows


def test_invented_records_are_classified_as_the_test_expects():
    rows = _records(2)
    assert content_kind(rows[0]["content"]) == "reviews" and content_kind(rows[1]["content"]) == "product"


@pytest.fixture()
def raw(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records(40)) + "\n", encoding="utf-8")
    return path


def test_kinds_are_counted_per_split(raw, tmp_path):
    res = run(PrepareConfig(inputs=[raw], out=tmp_path / "prep", val_fraction=0.2, test_fraction=0.3))
    kinds = res.report["content_kinds"]
    assert sum(sum(d.values()) for d in kinds.values()) == res.kept == 80
    assert sum(d.get("reviews", 0) for d in kinds.values()) == 40


def test_drop_kinds_drops_from_train_only_and_counts_it(raw, tmp_path):
    res = run(PrepareConfig(inputs=[raw], out=tmp_path / "prep", val_fraction=0.2, test_fraction=0.3,
                            drop_kinds=["reviews"]))
    train = read_split(tmp_path / "prep", "train")
    test = read_split(tmp_path / "prep", "test") + read_split(tmp_path / "prep", "val")
    assert train and all(content_kind(r["content"]) != "reviews" for r in train)
    assert any(content_kind(r["content"]) == "reviews" for r in test)  # evaluation keeps the real mix
    dropped = res.report["dropped"]["train_reviews_only"]
    assert dropped > 0 and res.kept + dropped == 80
    assert res.report["content_kinds"]["train"].get("reviews", 0) == 0
    with pytest.raises(ValueError, match="unknown drop_kinds"):
        PrepareConfig(inputs=[raw], out=tmp_path / "p2", drop_kinds=["poems"])


def test_repeated_descriptions_of_a_chunk_keep_their_kind():
    from catalogtune.data import records

    texts = [f"'A wonderful story, told with warmth {i % 3}.' {PAPERS[i % 5]} 'Simply brilliant.' {PAPERS[1]}"
             if i % 2 else f"A steel trowel with a {i % 4} cm blade and an ash handle, sold with a leather loop."
             for i in range(24)]
    codes = list(records._kind_codes(texts))
    assert codes == [records._KIND_CODE[content_kind(t)] for t in texts]
    assert set(codes) == {records._KIND_CODE["reviews"], records._KIND_CODE["product"]}
