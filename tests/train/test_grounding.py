"""Grounded targets keep the sentences whose names and numbers the prompt holds."""

from catalogtune.train.grounding import ground_rows, ground_text


def test_ground_text_drops_sentences_with_facts_outside_the_prompt():
    text = ("A sturdy kettle for every kitchen. It was designed by Henrietta Vasquez in Lisbon. "
            "Holds 1.7 litres of water. Boils fast and switches itself off.")
    out = ground_text(text, "Steel Kettle 1.7 L")
    assert out == "A sturdy kettle for every kitchen. Holds 1.7 litres of water. Boils fast and switches itself off."


def test_references_in_the_prompt_support_their_facts():
    text = "A history of the jet age. It draws on interviews by Henrietta Vasquez with 40 pilots."
    assert ground_text(text, "Jet Age History") == "A history of the jet age."
    refs = ["Interviews by Henrietta Vasquez with 40 test pilots."]
    assert ground_text(text, "Jet Age History", refs) == text


def test_ground_rows_uses_each_rows_context_and_counts_the_dropped():
    rows = [
        {"id": "a", "title": "Garden Hose 25 ft", "content": "Flexible hose, 25 ft long. Made by Ortega Works in 1999."},
        {"id": "b", "title": "Bird Book", "content": "By Quentin Marlowe, born 1950 in Leeds."},
        {"id": "c", "title": "Bird Book", "content": "By Quentin Marlowe, born 1950 in Leeds. A guide to garden birds for beginners.",
         "context": [{"id": "z", "title": "Birds", "content": "Quentin Marlowe (1950), Leeds naturalist"}]},
    ]
    counts = ground_rows(rows, min_chars=10)
    assert [r["id"] for r in rows] == ["a", "c"]
    assert rows[0]["content"] == "Flexible hose, 25 ft long."
    assert rows[1]["content"].startswith("By Quentin Marlowe, born 1950 in Leeds.")
    assert counts["kept"] == 2 and counts["dropped"] == 1
    assert counts["chars_after"] < counts["chars_before"]
