"""Cleaning rules on crafted strings and on the real quirks of AmazonTitles-1.3MM."""

from __future__ import annotations

import json

import pytest

from catalogtune.data import clean


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Anna Lee&#8217;s best&#8211;loved", "Anna Lee\u2019s best\u2013loved"),
        ("It&#x92;s here", "It\u2019s here"),  # cp1252 code point as an entity (real quirk)
        ("Copyright &copy; me", "Copyright \u00a9 me"),
        ("a&nbsp;&nbsp;b", "a b"),
        ("double &amp;#8217; escaped", "double \u2019 escaped"),
        ("Tom &amp; Jerry", "Tom & Jerry"),
    ],
)
def test_html_entities_are_decoded(raw, expected):
    assert clean.clean_text(raw) == expected


def test_tags_are_removed_but_comparisons_survive():
    assert clean.clean_text("<p>Great <b>value</b>,<br/>fast</p>") == "Great value, fast"
    assert clean.clean_text('<a href="x">link</a> text') == "link text"
    assert clean.clean_text("if a < b and c > d") == "if a < b and c > d"


@pytest.mark.parametrize(
    "tail",
    [
        "--This text refers to thePaperbackedition.",
        "--This text refers to theHardcoveredition.",
        "--This text refers to an out of print or unavailable edition of this title.",
        "--This text refers to an alternatePaperbackedition.",
        "--This text refers to thePrint on Demand (Paperback)edition.",
        "--This text refers to theAudio Cassetteedition.",
    ],
)
def test_glued_edition_boilerplate_is_removed(tail):
    body = "A shining tale, highly recommended.--Brian Bruya"
    assert clean.clean_text(body + tail) == body


@pytest.mark.parametrize(
    "notice",
    [
        "Copyright 1989 Reed Business Information, Inc.",
        "Copyright &copy; Reed Business Information, a division of Reed Elsevier Inc. All rights reserved.",
        "Copyright 2001 Cahners Business Information, Inc.",
        "Copyright &#169; American Library Association. All rights reserved",
    ],
)
def test_publisher_boilerplate_is_removed(notice):
    text = "Recommended for most collections." + notice + "--This text refers to theHardcoveredition."
    assert clean.clean_text(text) == "Recommended for most collections."


def test_whitespace_controls_and_glued_sentences():
    assert clean.clean_text("  a\tb\n\nc \u00a0 d  ") == "a b c d"
    assert clean.clean_text("bad\x00byte\ufffd here\u200b") == "bad byte here"
    assert clean.clean_text("for 30 years.Now even infants") == "for 30 years. Now even infants"
    # abbreviations and initials are not split
    assert clean.clean_text("the U.S.Army and J.R.R.Tolkien") == "the U.S.Army and J.R.R.Tolkien"
    assert clean.clean_text("caf\u0065\u0301") == "caf\u00e9"  # NFC


def test_title_cleaning_keeps_edition_words():
    assert clean.clean_title("  Mog&#8217;s  Kittens (Paperback) ") == "Mog\u2019s Kittens (Paperback)"


def test_keys_ignore_case_punctuation_and_accents_but_not_scripts():
    assert clean.norm_key("The Prophet!") == clean.norm_key("the  prophet")
    assert clean.norm_key("Caf\u00e9 Noir") == "cafe noir"
    assert clean.norm_key("\u6771\u4eac Guide") != clean.norm_key("\u5927\u962a Guide")


def test_group_key_joins_variants_only():
    green, yellow = clean.group_key("Kids Dance Skirt Neon Green"), clean.group_key("Kids Dance Skirt Neon Yellow")
    assert green == yellow
    assert clean.group_key("Harry Potter, Vol. 2 (Paperback)") == clean.group_key("Harry Potter Vol 3")
    assert clean.group_key("Harry Potter") != clean.group_key("Harry Houdini")
    assert clean.group_key("Red 2") == clean.norm_key("Red 2")  # nothing left: fall back


def test_drop_rules_in_order():
    def reason(title, content, min_chars=20, english=False):
        t, c = clean.clean_title(title), clean.clean_text(content)
        return clean.drop_reason(t, content, c, min_chars, english)

    good = "Soft two layer dance skirt for girls. 14 inches in length"
    assert reason("Tutu", good) is None
    assert reason("  ", good) == clean.EMPTY_TITLE
    assert reason("Tutu", "") == clean.EMPTY_CONTENT
    assert reason("Tutu", " \n ") == clean.EMPTY_CONTENT
    assert reason("Tutu", "--This text refers to thePaperbackedition.") == clean.PLACEHOLDER
    assert reason("On Happiness", "Text: English, French (translation)") == clean.PLACEHOLDER
    assert reason("X", "Text: English (translation)Original Language: German") == clean.PLACEHOLDER
    assert reason("Tutu", "N/A") == clean.PLACEHOLDER
    assert reason("Tutu", "<br>") == clean.PLACEHOLDER
    assert reason("Toddler Tunes [VHS]", "VHS Tape") == clean.TOO_SHORT
    assert reason("Toddler Tunes [VHS]", "VHS Tape", min_chars=5) is None
    assert reason("Evening Songs with Ada Reed [VHS]", "Evening Songs with Ada Reed [VHS]") == clean.TITLE_ECHO
    assert reason("Evening Songs with Ada Reed [VHS]", "evening songs with ada reed (vhs)!!") == clean.TITLE_ECHO
    assert reason("Evening Songs with Ada Reed", "Evening Songs with Ada Reed, recorded live in 1995 Nashville") is None
    german = "Dieses Buch erzählt die Geschichte einer Familie über drei Generationen und ist spannend"
    assert reason("Buch", german) is None
    assert reason("Buch", german, english=True) == clean.NOT_ENGLISH
    assert reason("Tutu", good, english=True) is None
    assert reason("\u6771\u4eac", "\u6771\u4eac\u306e\u30ac\u30a4\u30c9\u30d6\u30c3\u30af" * 3, english=True) == clean.NOT_ENGLISH


def test_hashes_and_splits_are_stable_and_seeded():
    assert clean.hash64("abc") == clean.hash64("abc") != clean.hash64("abd")
    assert clean.hash64("abc", seed=1) != clean.hash64("abc", seed=2)
    assert clean.stable_id("t", "c") == clean.stable_id("t", "c") != clean.stable_id("t", "d")
    keys = [f"group {i}" for i in range(4000)]
    splits = [clean.split_of(k, 0, 0.1, 0.1) for k in keys]
    assert splits == [clean.split_of(k, 0, 0.1, 0.1) for k in keys]
    assert splits != [clean.split_of(k, 1, 0.1, 0.1) for k in keys]
    share = [splits.count(s) / len(splits) for s in (0, 1, 2)]
    assert 0.76 < share[0] < 0.84 and 0.07 < share[1] < 0.13 and 0.07 < share[2] < 0.13
    assert {clean.split_of(k, 0, 0.0, 0.0) for k in keys} == {0}


def test_real_sample_quirks_are_cleaned(sample_path):
    records = [json.loads(line) for line in sample_path.open(encoding="utf-8")]
    cleaned = [clean.clean_text(r["content"]) for r in records]
    assert len(cleaned) == 400
    for text in cleaned:
        assert "This text refers to" not in text
        assert "Reed Business Information" not in text
        assert "&#" not in text and "&copy;" not in text and "&nbsp;" not in text
        assert "  " not in text and text == text.strip()
    # cleaning is idempotent
    assert [clean.clean_text(t) for t in cleaned] == cleaned
    # most descriptions survive the row rules
    kept = [clean.drop_reason(clean.clean_title(r["title"]), r["content"], c, 20) is None
            for r, c in zip(records, cleaned)]
    assert 0.9 < sum(kept) / len(kept) < 1.0


def _slow_spaces(text: str) -> str:
    """The reference whitespace rule: control characters out, runs of whitespace to one space."""
    return " ".join(clean._CONTROL.sub(" ", text).split())


def _synthetic_texts(n: int = 3000) -> tuple[list[str], list[str]]:
    from catalogtune.data import synthetic

    recs = [json.loads(x) for x in synthetic.iter_lines(n, seed=5)]
    return [r["title"] for r in recs], [r["content"] for r in recs if r["content"]]


def test_fast_paths_give_the_slow_path_results(sample_path):
    records = [json.loads(line) for line in sample_path.open(encoding="utf-8")]
    titles, contents = _synthetic_texts()
    titles += [r["title"] for r in records]
    contents += [r["content"] for r in records]
    crafted = ["a  b", "  lead and trail  ", "tab\there", "x   y    z", "nbsp\u00a0\u00a0here", "  ", "",
               "one.Two  three", "A&amp;B  <b>C</b>", "\u00c9l\u00e8ve   caf\u00e9"]
    for text in titles + contents + crafted:
        assert clean._spaces(text) == _slow_spaces(text)
    # the dirt really is there (else the comparison above would prove little)
    assert sum("  " in c for c in contents) > 50 and any("\t" in c for c in contents)


def test_vectorised_title_keys_match_the_per_title_functions(sample_path):
    titles, _ = _synthetic_texts()
    titles += [json.loads(line)["title"] for line in sample_path.open(encoding="utf-8")]
    titles = [clean.clean_title(t) for t in titles]
    titles += ["", "!!!", "a _ b", "__", "Red 12 red 12", "x  y", "Black", "12 34", "Ab_cd Ef",
               "Kids Dance Skirt Neon Green", "green skirt neon kids dance", "Size XL Large x",
               "\u00c9LAN Dress (Red)", "Book [Vol 2]", "\u6771\u4eac Guide", "zeta Alpha alpha 007"]
    keys, groups = clean.title_keys(titles)
    assert keys == [clean.norm_key(t) for t in titles]
    assert groups == [clean.group_key(t) for t in titles]
    assert clean.title_keys([]) == ([], [])
    assert len(set(groups)) > len(titles) // 2  # not all collapsed into a few keys
