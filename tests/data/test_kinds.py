"""Description kinds: quotes, their sources, the quote-style opening and the kind of a text.

Every record here is invented (shaped like the real ones: press quotes with sources, praise
headers, edition notes, author bios); the real sample is only read in place for sanity counts.
"""

from __future__ import annotations

import html
import json
import random
import re
import time

import pytest

from catalogtune.data import kinds

MUG = ("A 350 ml stoneware mug with a wide handle and a speckled blue glaze. Dishwasher and microwave "
       "safe; sold as a set of two in a gift box.")
BLURBS = ("'A gripping read from start to finish.' Daily Chronicle 'Wonderful... a storyteller at the top "
          "of her game' - Morning Gazette 'Warm, wise and very funny.' --The Weekly Review")


def _quoted(text):
    return [text[a:b] for a, b in kinds.quote_spans(text)]


# --- quotes ----------------------------------------------------------------------------------


def test_apostrophes_are_not_quote_marks():
    text = "Tony's mug doesn't leak: it's the Smiths' favourite and O'Hara's too. Rock 'n' roll!"
    assert kinds.quote_spans(text) == []
    assert kinds.attributions(text) == []
    assert not kinds.is_quote_style(text)
    assert not kinds.is_quote_style("'Tis the season: a festive mug for cocoa.")
    assert not kinds.is_quote_style("'90s style lunch box with a steel clasp.")


def test_quote_spans_cover_every_kind_of_mark():
    text = ("'Single quotes round this one.' A \"double quoted passage here\" and “curly doubles around "
            "words” then ‘curly singles around words’.")
    assert _quoted(text) == ["'Single quotes round this one.'", '"double quoted passage here"',
                             "“curly doubles around words”", "‘curly singles around words’"]


def test_possessive_and_apostrophe_inside_a_quote_do_not_end_it():
    text = "'Jones' best novel yet, and it doesn't let up.' Daily Post"
    assert _quoted(text) == ["'Jones' best novel yet, and it doesn't let up.'"]
    assert kinds.attributions(text) == ["Daily Post"]


def test_scare_quotes_need_three_words_unless_a_source_follows():
    assert kinds.quote_spans('The "Deluxe" edition comes in a tin.') == []
    assert _quoted("'Brilliant' Evening Courier") == ["'Brilliant'"]
    assert kinds.quote_spans("'Brilliant' Evening Courier", min_words=1) == [(0, 11)]


def test_nested_quotes_stay_inside_the_outer_passage():
    text = "'When it ends you ask, \"Why didn't I see that?\" Superb.' Harbour Times"
    assert _quoted(text) == [text[:text.index(" Harbour")]]
    assert kinds.attributions(text) == ["Harbour Times"]


# --- attributions ------------------------------------------------------------------------


def test_sources_after_quotes_in_all_their_shapes():
    assert kinds.attributions(BLURBS) == ["Daily Chronicle", "Morning Gazette", "The Weekly Review"]
    text = ('"Warm and wise." (The Harbour Times) "I could not put it down." Kirkus Reviews '
            "'Sheer joy.' Mary Smith, Woman's World 'Five stars' Book Club Monthly")
    assert kinds.attributions(text) == ["The Harbour Times", "Kirkus Reviews", "Mary Smith, Woman's World",
                                        "Book Club Monthly"]


def test_sources_glued_to_the_quotes():
    text = "'A fine read.'THE HERALD'Warm and wise throughout.'THE COURIER"
    assert kinds.attributions(text) == ["THE HERALD", "THE COURIER"]
    curly = "‘Nobody writes a chase like her’Sunday Courier‘Breathless from the first page’Book Monthly"
    assert kinds.attributions(curly) == ["Sunday Courier", "Book Monthly"]


def test_praise_headers_and_review_sources_without_quotes():
    assert kinds.attributions("Praise for Jane Doe: 'A triumph of quiet observation.' --The Weekly Review") \
        == ["Jane Doe", "The Weekly Review"]
    assert kinds.attributions("Praise for the Moonlight series: 'Charming and clever.' Daily Post")[0] == "Moonlight"
    assert kinds.attributions("Starred Review. This debut follows a baker through three winters.") \
        == ["Starred Review"]
    assert kinds.attributions("From Booklist Gr. 3-6. A lively look at owls.") == ["Booklist"]
    assert "Library Journal" in kinds.attributions("A sound guide for home cooks.--Library Journal")


def test_prose_after_a_quote_is_not_a_source():
    text = 'Critics called it "the finest pottery in the county." Each mug is fired twice.'
    assert kinds.attributions(text) == []
    assert kinds.attributions("'It was a dark night,' begins the story. Master potter Ann Lee ...") == []


def test_a_lost_opening_or_closing_mark_still_finds_the_source():
    text = "Gripping stuff' Morning Gazette 'A delight from start to end' Evening Post"
    assert kinds.attributions(text) == ["Morning Gazette", "Evening Post"]
    assert kinds.is_quote_style(text)
    missing_close = "'Still the best guide to wild food., Country Life 'A classic of its kind.' Town Post"
    assert kinds.attributions(missing_close) == ["Country Life", "Town Post"]


def test_html_entities_are_decoded():
    text = "&#8216;A joy to read from start to finish&#8217; Daily Post"
    assert kinds.attributions(text) == ["Daily Post"]
    assert kinds.is_quote_style(text)
    assert kinds.content_kind(text) == "reviews"


# --- quote style -------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "'A wonderful book' Sunday Times",
    "“A wonderful mug for every morning.”",
    '  "Clever, warm and funny." - Book Monthly',
    "Praise for Jane Doe: 'Superb.' Daily Post",
    "PRAISE FOR THE MOON SERIES: 'Lovely.' Radio Weekly",
    "Starred Review. A moving debut.",
    "From Publishers Weekly A brisk history of canal boats.",
    "Great reading' Sunday Courier",
])
def test_quote_style_openings(text):
    assert kinds.is_quote_style(text)


@pytest.mark.parametrize("text", [
    MUG, "", "   ", "Review mirror for bicycles, fits all handlebars.",
    "The 'Classic' edition of this mug holds 350 ml.",
    "Jane Doe was born in Leeds. 'Her best yet' Daily Post",
])
def test_not_quote_style(text):
    assert not kinds.is_quote_style(text)


# --- content kind ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    BLURBS,
    "Praise for Jane Doe: 'A triumph.' Daily Post 'Clever and warm throughout.' Radio Weekly "
    "Praise for The Moon Garden: 'I loved every page of it.' Mary Smith",
    "Starred Review. This debut follows a baker through three winters in a northern port, and the "
    "prose is as warm as her bread. Readers will wait eagerly for the next one.",
    "'Sharp, funny and humane.' Book Monthly--This text refers to thePaperbackedition.",
    "“A delight.” (The Harbour Times)“Unmissable and very moving indeed.” (Radio Weekly)",
    # no quote marks: blurbs signed by publication names
    "Beautifully done and easy to follow. The Sunday Herald Clear and useful on every page. The Observer",
])
def test_reviews(text):
    assert kinds.content_kind(text) == "reviews"


@pytest.mark.parametrize("text", [
    "Jane Doe was born in Leeds in 1970. She studied ceramics in Glasgow and has written three books on "
    "glazes. She lives in Cornwall with her two dogs.",
    "About the Author Jane Doe teaches pottery in Bristol.",
    "Dr. Ann B. Lee is Professor of Botany at the University of Westmoor. She has taught there for twenty "
    "years and lives in the town with her family.",
    "Tom Hale, a former sailor, has lived in four countries. He is the author of six novels. His books "
    "have been translated into ten languages.",
])
def test_author_bios(text):
    assert kinds.content_kind(text) == "author_bio"


@pytest.mark.parametrize("text", [
    "--This text refers to thePaperbackedition.",
    "Copyright 1999 Reed Business Information, Inc.",
    "Text: English, German (translation)",
    "Product Description", "No description available.", "",
    "By Jane Doe, Illustrated by John Roe",
    "By J. B. Doe--This text refers to an out of print or unavailable edition of this title.",
    "VHS Tape",
    "Acme Books is a leading independent publisher of maps and guides.",
    "Previously published by Acme Press.",
])
def test_boilerplate(text):
    assert kinds.content_kind(text) == "boilerplate"


@pytest.mark.parametrize("text", [
    MUG,
    "Girls' tutu in neon pink, three layers of soft tulle. Ages 2-8.",
    "The 'Classic' edition of this mug holds 350 ml and is dishwasher safe.",
    # a person as subject, but a story: not a biography
    "Forced to leave her island home, Kit Vale is filled with dread. The ship is cold and the captain "
    "cruel, until a storm changes everything.",
    # one short quote in front of a long description
    "'Handy.' Home Weekly. This 30-piece tool kit holds screwdrivers, a hammer, pliers, a tape measure "
    "and a spirit level in a steel case with a lock, foam inserts and a carrying strap.",
    # a bio sentence, then the product
    "Jane Doe is the author of the Moon series. This stoneware mug holds 350 ml, is dishwasher safe and "
    "comes in six glazes for everyday use at home or at work, in a gift box.",
    "Critics called it \"the finest pottery in the county.\" Each mug is fired twice and glazed by hand.",
])
def test_products(text):
    assert kinds.content_kind(text) == "product"


def test_kinds_constant():
    assert kinds.KINDS == ("product", "reviews", "boilerplate", "author_bio")
    assert 0 < kinds.REVIEWS_SHARE < 1 and 0 < kinds.BIO_SHARE < 1


def test_review_share_is_the_quoted_part():
    assert kinds.review_share(BLURBS) == pytest.approx(1.0)
    assert kinds.review_share(MUG) == 0.0
    assert kinds.review_share("") == 0.0
    half = "'Sturdy and bright, a joy to use.' Home Weekly. " + MUG
    assert 0.2 < kinds.review_share(half) < 0.6


@pytest.mark.parametrize("text", [
    "A. B. C. " * 3000, "Word. " * 10000, "'" * 4000 + '"' * 4000, "Praise for " * 3000,
    "'Great.' Sunday Times of the " * 1000, "Jane Doe was born here. She lives there. " * 1500,
])
def test_long_or_odd_texts_stay_fast(text):
    start = time.perf_counter()
    assert kinds.content_kind(text) in kinds.KINDS
    kinds.attributions(text)
    kinds.is_quote_style(text)
    assert time.perf_counter() - start < 3.0


_PIECES = ("The Times", "the", "Times", "Sunday", "Review", "Post.", "of", "and", "y", "&", "magazine",
           "magazine--", "online", "use.", "easy", "to", "read.", "--", "—", "-", "A", "B.", "1990s", "…", "!",
           "'", "’", '"', "“", "don't", "Holmes'", "(", ")", "(c)", "©", "Copyright", "Copyright©", "Inc.",
           "reserved.", "This text refers to", "the", "Paperback", "edition.", "Praise for", "Jane", "Doe", "Doe,",
           "She", "he", "His", "him", "was", "born", "is", "author", "lives", "Dr.", "Smith", "Kirkus", "&amp;",
           "publisher", "e.g.", "end.The", "word.Times", "Times,", "Observer", "Herald\n", "BigTimes", "X-Times",
           "Journal", "  ")


def _signed(matches):
    return [m.span() for m in matches if m.group("src").split()[-1].strip(".,") in kinds._PUBLICATION]


def test_fast_paths_find_what_the_full_scans_find():
    """Scans tried only near their literals, and subject tests without a pattern per text, match the plain ones."""
    rnd = random.Random(7)
    for _ in range(400):
        t = "".join(rnd.choice(_PIECES) + rnd.choice(("", " ", " ", "\t")) for _ in range(rnd.randint(0, 30)))
        decoded = html.unescape(html.unescape(t)) if "&" in t else t
        assert kinds._prep(t) == " ".join(kinds._GLUED.sub(" ", decoded).split())
        for rx, literal, lead in ((kinds._REFERS, "This text refers to", "-—"),
                                  (kinds._COPYRIGHT, "Copyright", "(c)©")):
            assert [m.span() for m in kinds._at_literal(rx, t, literal, lead)] == [m.span() for m in rx.finditer(t)]
        for text in (t, kinds._prep(t)):
            assert _signed(kinds._sign_matches(text, [])) == _signed(kinds._UNQUOTED_SIGN.finditer(text))
            assert kinds._letters(text, [(0, len(text)), (3, 9)]) == len(re.findall(r"\w", text)) + len(
                re.findall(r"\w", text[3:9]))
        words = [w for w in re.findall(r"[A-Z][\w'’-]{2,}", t) if w not in kinds._TITLE_WORDS][:3]
        subj = r"(?:[Hh]e|[Ss]he" + "".join("|" + re.escape(w) for w in words) + r")"
        # the patterns _bio_flags used to compile for each text
        about = re.compile(rf"^(?:[^,]{{0,60}},\s*)?{kinds._TITLES}(?:[A-Z][\w'’.-]+\s+){{0,3}}?{subj}"
                           rf"\s+(?:[a-z]+ly\s+)?[a-z]")
        mention = re.compile(rf"\b(?:{subj}|[Hh]is|[Hh]er|[Hh]im)\b")
        for s in kinds._sentences(kinds._prep(t)) + [t]:
            assert kinds._about(s, words) == bool(about.match(s))
            assert kinds._mentions(s, words) == bool(mention.search(s, 0, 60))


# pieces for the fast paths of content_kind: non-ASCII letters and spaces, case-folding characters
# (ſ matches "s", İ and ı "i", the Kelvin sign "k", all case-blind), publisher and biography cues
_ODD_PIECES = _PIECES + ("é", "café", "ß", "٣", "中", "\u0301", "\xa0", "\u2028", "\x1c", "\t", "publiſher",
                         "\u0130mprint", "impr\u0131nt", "\u212aestrel", "publishing house", "imprint", "founded in 1901",
                         "we are proud to publish", "previously published by", "Library of Liberal Arts",
                         "she has written", "grew up", "is a novelist", "(1898-1963)", "'s", "’s", "l’été", "''",
                         "it's", "Jones’", "O'Hara", "Daily Post", "'Tis")


def _sentences_reference(text):
    # _sentences as it was written before _iter_sentences: a slice searched, not pos/endpos
    out, start = [], 0
    for m in kinds._STOP.finditer(text):
        if m.group(0)[0] == ".":
            word = kinds._LAST_TOKEN.search(text[max(start, m.start() - 30):m.start()])
            w = word.group(0).lower() if word else ""
            if len(w) == 1 or w in kinds._ABBREV or kinds._INITIALS.fullmatch(w):
                continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if kinds._LETTER.search(s)]


def test_content_kind_shortcuts_change_no_result():
    """Each shortcut content_kind takes is checked against the scan it skips, on invented texts."""
    rnd = random.Random(11)
    for _ in range(600):
        t = "".join(rnd.choice(_ODD_PIECES) + rnd.choice(("", " ", " ", ". ")) for _ in range(rnd.randint(0, 30)))
        prepped = kinds._prep(t)
        assert kinds._squeeze(t) == " ".join(t.split())
        # quote marks: what _MARK_FAST leaves out is an apostrophe inside a word ("don't")
        fast = {m.span() for m in kinds._MARK_FAST.finditer(t)}
        for m in kinds._MARK.finditer(t):
            if m.span() not in fast:
                i = m.start()
                assert m.end() - i == 1 and i > 0 and t[i - 1].isalnum() and re.match(r"[a-z0-9]", t[i + 1:i + 2])
        assert fast <= {m.span() for m in kinds._MARK.finditer(t)}
        assert kinds._letters(t, [(0, len(t)), (2, 7)]) == len(re.findall(r"\w", t)) + len(re.findall(r"\w", t[2:7]))
        for k in (0, 1, 2, 4, 9):
            assert kinds._words_at_least(t, k, 3, len(t) - 2) == (len(re.findall(r"\w+", t[3:len(t) - 2])) >= k)
        for s in (t, prepped):
            assert kinds._publishes(s) == bool(kinds._PUBLISHER.search(s))
            assert kinds._sentences(s) == _sentences_reference(s)
            if not kinds._may_be_bio(s):  # the first sentence settles it: no biography can start there
                flags = kinds._bio_flags(kinds._sentences(s))
                assert not flags or not flags[0]
        # the share is cut short only where the whole one reaches the threshold too
        assert (kinds._raw_review_share(t, kinds.REVIEWS_SHARE) >= kinds.REVIEWS_SHARE) == (
            kinds.review_share(t) >= kinds.REVIEWS_SHARE)


@pytest.mark.parametrize("text,kind", [
    ("Jane Doe designed this mug for everyday use. It holds 350 ml and is dishwasher safe.", "product"),
    ("A café mug with a wide handle. It's dishwasher safe and won't chip.", "product"),
    ("Linda Fairley enrolled as a nurse in 1962. She went on to train as a midwife in Manchester.", "author_bio"),
    ("&lsquo;A gripping read from start to finish.&rsquo; Daily Chronicle &lsquo;Warm, wise and very "
     "funny.&rsquo; Morning Gazette", "reviews"),
    # the publisher pattern is case-blind: these match only through case folding, never skipped
    ("Acme Books is an independent publiſhing house based in York.", "boilerplate"),
    ("Acme Books is an \u0130mprint of Bigger Books.", "boilerplate"),
    ("Acme Books, an impr\u0131nt of Bigger Books, makes maps. Its maps are sold in every country.", "boilerplate"),
    ("Grandes Éditions, an imprint of Bigger Books since 1950, is a publisher of maps.", "boilerplate"),
])
def test_kinds_through_the_shortcuts(text, kind):
    assert kinds.content_kind(text) == kind


def test_apostrophes_skipped_by_the_engine_still_end_a_nested_quote():
    # an apostrophe inside a word ("a’ ") clears the nested flag of an open double passage, as when
    # every mark was looked at in Python: without that, the passage from “ is lost
    assert kinds._scan_quotes("”.T “'Daily Post‘a’ T") == [(4, 19)]


def test_real_sample_has_every_kind(sample_path):
    """The 400 real records, read in place: every kind occurs and reviews are a large share."""
    contents = [json.loads(line)["content"] for line in sample_path.open(encoding="utf-8")]
    counts = {k: 0 for k in kinds.KINDS}
    for c in contents:
        counts[kinds.content_kind(c)] += 1
    assert sum(counts.values()) == len(contents)
    assert 0.3 < counts["reviews"] / len(contents) < 0.6
    assert min(counts.values()) >= 10
    quote_style = sum(kinds.is_quote_style(c) for c in contents) / len(contents)
    assert 0.3 < quote_style < 0.6
