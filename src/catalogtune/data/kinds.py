"""What a description is: a product text, review quotes, boilerplate or an author bio (pure functions).

About 45 % of AmazonTitles descriptions are only press quotes and their sources ("'Gripping.'
Sunday Times 'A joy' - Daily Mail", "Praise for X: ...", "Starred Review. ..."); a model tuned on
them answers every product, a mug included, with invented praise. These functions find quoted
passages and sources so the data stage can label records and the evaluate stage can measure how
many outputs collapse into that style. HTML entities are decoded; other quirks (glued sentences,
"--This text refers to ... edition.") are tolerated as they come.
"""

from __future__ import annotations

import html
import re

KINDS = ("product", "reviews", "boilerplate", "author_bio")
REVIEWS_SHARE = 0.6
"""Share of a text's letters inside quotes, sources and praise headers that makes it "reviews"."""
BIO_SHARE = 0.6
"""Share of a text's letters in biography sentences that makes it an "author_bio"."""
BOILERPLATE_SHARE = 0.6
"""Share of a text's letters in publisher self-descriptions that makes it "boilerplate"."""

_DOUBLE = '"“”„«»'
_SINGLE = "'‘’‚"
_QUOTES = _DOUBLE + _SINGLE
_MARK = re.compile("''|[" + _QUOTES + "]")
# Elisions that start with an apostrophe: "'Tis", "'90s", "rock 'n' roll" are not quotes.
_ELISION = re.compile(r"['’‘](?:tis|twas|em|n|til|cause|\d0s)\b", re.IGNORECASE)
_OPEN_AFTER = set(" \t\n\r([{—–-:;,/*•…>!?.") | set(_QUOTES)

# A source: capitalised words ("Sunday Times", "Woman's World", "OK!", "Adoption-net") joined by
# small words, optionally a second part after a comma ("Brenda Maddox, The Times"). Header words
# start the next block ("... Sunday Express Praise for Noel Streatfeild:"), not the source.
_HEAD_WORD = r"(?:(?:Praise|PRAISE|Acclaim|ACCLAIM)\b|(?:Reviews?|REVIEWS?|From|FROM)\s+(?i:for|of|the)\b)"
# an apostrophe inside a source only before a lowercase letter ("Woman's"): "EXPRESS'Tony" is two
_CHARS = r"(?:[\w.&!]|['’](?=[a-z]))"
_CAP = rf"(?!{_HEAD_WORD})(?:[A-Z]{_CHARS}*(?:-{_CHARS}+)*|\d+[A-Za-z]+)"
_CONN = r"(?:of|the|and|&|on|de|du|la|le|for|in|am|van|von|y|at)"
_RUN = rf"(?:[Tt]he\s+)?{_CAP}(?:\s+(?:{_CONN}\s+)*{_CAP})*(?:\s+(?:magazine|newspaper|online))?"
_AFTER_QUOTE = re.compile(rf"[ \t]*(?:[-–—~]+|,|:|\(|\*+)?[ \t]*(?:[-–—][ \t]*)?"
                          rf"(?P<src>{_RUN}(?:[ \t]*,[ \t]*{_RUN}){{0,2}})[ \t]*\)?")
# "Praise for X:", "Reviews for X", "From the reviews of X:", "Acclaim for X" before a quote.
_PRAISE = re.compile(
    r"(?:\b(?:(?:Advance|Critical|High|More)\s+)?(?:[Pp]raise|PRAISE|[Aa]cclaim|ACCLAIM|[Rr]eviews?|REVIEWS?)"
    r"\s+(?:for|of|from|FOR|OF|FROM)\s+(?:the\s+(?=[A-Z]))?|\bFrom the reviews of\s+)"
    r"(?P<x>[‘'\"“][^'’\"”]{1,60}[’'\"”]|[^:\"“”\n]{1,80}?)\s*(?::|(?=\s+[“\"‘'])|(?=[“‘]))"
)
# Review-source headers and sign-offs that come without a quote (Amazon's editorial reviews).
_SOURCES = ("Publishers Weekly", "Booklist", "School Library Journal", "Library Journal",
            "Kirkus Reviews", "Kirkus", "Starred Review", "AudioFile", "The Horn Book",
            "Horn Book", "Bookmarks Magazine", "Editorial Review")
_SOURCE_ALT = "|".join(re.escape(s) for s in _SOURCES)
_SOURCE_HEAD = re.compile(rf"^\s*(?:(?:From|from)\s+(?:the\s+)?(?P<a>{_SOURCE_ALT})"
                          rf"|(?P<b>Starred Review|Review(?=\s*[.:\-–—\"“‘']|\s*$)))[.:]?")
# ... anywhere a sign-off can stand: after a sentence, a dash or "(c)" ("--Kirkus Reviews", "(c)AudioFile");
# the context before is checked in Python (a leading look-behind makes the engine try every offset)
_SOURCE_ANY = re.compile(rf"(?:From\s+)?(?P<s>{_SOURCE_ALT})\b(?=\s*(?:$|[.,:;)(\-–—]|[A-Z\"“‘']))")
_SIGN_OFF_BEFORE = re.compile(r"(?:^|[-.!?)\]…–—]|\(c\)|©)\s*$")
# Publication names that sign an unquoted blurb ("... easy to use. The Sunday Times Superb ...").
_PUBLICATION = set("""Times Telegraph Guardian Observer Express Mirror Mail Independent Spectator
    Standard Herald Gazette Tribune Chronicle Post Journal Review Reviews Weekly Magazine Booklist
    Kirkus Scotsman Economist Globe Bookseller Supplement Monthly Quarterly Statesman Inquirer""".split())
_PUBLICATION_RE = re.compile(r"\b(?:" + "|".join(sorted(_PUBLICATION)) + r")\b")
_UNQUOTED_SIGN = re.compile(rf"(?:(?<=[.!?…])|(?<=[.!?…][-–—])|(?<=[a-z]\s))\s*[-–—]{{0,2}}\s*"
                            rf"(?P<src>{_RUN})(?=\s+[A-Z]|\s*[-–—]{{2}}|\s*$)")

_REFERS = re.compile(r"(?:-{1,2}|—)?\s*This text refers to[^.]{0,80}?edition(?: of this title)?\.?")
_COPYRIGHT = re.compile(r"(?:\(c\)|©)?\s*Copyright\s*(?:©|\(c\))?[^.]{0,120}?(?:Inc|[Rr]eserved|Association"
                        r"|Information|Elsevier)\b(?:,?\s*Inc\b)?\.?(?:\s*All rights reserved\.?)?")
_LANGUAGE = re.compile(r"Text:\s*[A-Z][a-z]+(?:\s*,\s*[A-Z][a-z]+)*(?:\s*\(translation\))?"
                       r"(?:\s*Original Language:\s*[A-Z][a-z]+)?")
_LABELS = re.compile(r"\b(?:Product [Dd]escription|Book [Dd]escription|Language Notes|Editorial Reviews?"
                     r"|No description(?: available)?|Description (?:not available|coming soon)|Not available)\b:?")
# a credit line ("By J. G. Doe, Illustrated by A. Roe": initials keep their full stops) or a bare format
_CREDIT = re.compile(r"^(?:(?:Written|Edited|Selected|Illustrated|Compiled|Translated|Book|Story|Text)\s+)?by\b"
                     r"(?:[^.]|(?<=\b[A-Z])\.){0,80}?(?:,?\s*(?:and\s+)?(?:Illustrated|Edited|Translated"
                     r"|Photographs?|Pictures)\s+by[^.]{0,60})*\.?$"
                     r"|^(?:VHS|DVD|CD|Audio CD|Audio ?Cassette|Paperback|Hardcover)(?: Tape)?\.?$", re.IGNORECASE)
_PUBLISHER = re.compile(r"\b(?:publishers?\b|publishing (?:group|house|company|interests|since)|imprint\b"
                        r"|(?:previously|originally) published by|Library of Liberal Arts|authors represent"
                        r"|was founded in|[Ff]ounded in \d{4}|we are proud to publish)", re.IGNORECASE)

_ROLE = (r"(?i:writer|novelist|journalist|author|poet|professor|artist|illustrator|teacher|lecturer|consultant"
         r"|expert|practitioner|therapist|astrologer|psychologist|chef|historian|designer|photographer|broadcaster"
         r"|presenter|sprinter|actor|comedian|musician|nutritionist|physician|doctor|carer|trainer|scholar"
         r"|theologian|minister|pastor|attorney|explorer|scientist|engineer|editor|critic|cartoonist"
         r"|grandmaster|leader|master|authority|president|chairman|chair|director|founder|fellow|specialist"
         r"|member|head|pioneer|innovator|figure|giants?|academic|pseudonym|correspondent|columnist)s?")
_BIO_CUE = re.compile(
    r"\b(?:was born|were born|About the Author|author of (?:over|more than|many|numerous|several|a number|\d+"
    r"|two|three)|authored (?:over|more than|many|numerous|several|\d+)|ha(?:s|ve|d) (?:also )?(?:written"
    r"|published|authored|co-?authored|edited|illustrated|taught|lectured)|lives (?:in|with|outside|near|on"
    r"|and works)|lived in|grew up|brought up|graduated|died (?:in|on|at)|studied|is married|was (?:educated|raised)"
    r"|ha(?:s|ve) (?:been|worked) (?:a|an|the|as|in|for|with|writing|teaching|working|practising|practicing"
    r"|involved)|taught at|worked as|works as|(?:his|her) career|career as|retired (?:from|as)|served (?:in|with"
    r"|as|on)|(?:best |widely )?known (?:throughout|as|for)|[Hh](?:is|er) (?:\w+ )?(?:books|novels|bestsellers"
    rf"|works|titles) (?:include|have (?:been|sold|won))|(?:is|was|are|were)\s+(?:[\w'’-]+\s+){{0,7}}?{_ROLE}\b)"
    # a lifespan after a name: "Clive Staples Lewis (1898-1963) was"
    r"|^[^.(]{3,60}\((?:\d{1,2} \w+ )?\d{4}\s*[-–]?\s*(?:\d{1,2} \w+ )?\d{4}\)"
)
_TITLES = r"(?:(?:Dr|Mr|Mrs|Ms|Prof|Professor|Sir|Dame|Lady|Lord|Rev|Father|Sister|Retired|His Holiness)\.?\s+)?"
_NOT_NAME = r"(?!(?:The|This|These|That|Those|It|Its|A|An|Here|In|On|Now|Each|Every|Our|Your|With|For|When|If)\b)"
_BIO_VERB = (r"(?:is|was|are|were|has|had|have|lives|lived|grew|worked|works|teaches|taught|writes|wrote|served"
             r"|studied|died|became|runs|ran|holds|held|enrolled|trained|began|launched|divides|edited"
             r"|received|won|founded|spent|attended|earned|moved|left|joined|continues|retired|remains"
             r"|travels|appears|produces|enjoys|loves|suffered|survived)")
_ADVERB = r"(?:(?:also|now|currently|regularly|still|later|then|recently)\s+)?"
_PERSON_SUBJECT = re.compile(rf"^{_TITLES}{_NOT_NAME}[A-Z][\w'’.-]+(?:\s+(?:[A-Z][\w'’.-]*|de|van|von|da|di|le"
                             rf"|la|the)){{0,4}}(?:\s*\([^)]{{0,40}}\))?,?\s+{_ADVERB}{_BIO_VERB}\b")
_APPOSITIVE_SUBJECT = re.compile(  # "Morris West, an Australian by birth, has", "A native of X, Robert Seltzer is"
    rf"^(?:{_TITLES}[A-Z][\w'’.-]+(?:\s+[A-Z][\w'’.-]*){{0,3}}\s*(?:\([^)]{{0,30}}\))?,[^,]{{2,80}},"
    rf"|[^,]{{2,80}},\s*{_TITLES}[A-Z][\w'’.-]+(?:\s+[A-Z][\w'’.-]*){{0,3}})\s*{_BIO_VERB}\b")
_PRODUCT_REF = re.compile(r"\b(?:[Tt]his|[Hh]is|[Hh]er|[Tt]heir) (?:[\w-]+ ){0,2}(?:book|guide|volume|collection"
                          r"|work|text|study|edition|cookbook|story|memoir|anthology|account)\b(?!-)")
_TITLE_WORDS = set("Dr Mr Mrs Ms Prof Professor Sir Dame Lady Lord Rev His Holiness Father Sister Retired The"
                   .split())
_STOP = re.compile(r"[.!?]+[\"”’']?(?=\s+[A-Z\"“‘'(]|\s*$)")
_ABBREV = set("dr mr mrs ms st jr sr prof rev vs etc no vol ed eds inc ltd co mt ft gen col capt lt sgt pp".split())
_GLUED = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_LETTER = re.compile(r"\w")


def _prep(text: str) -> str:
    """HTML entities decoded (twice: some records are double-escaped), glued sentences split."""
    text = html.unescape(html.unescape(text)) if "&" in (text or "") else text or ""
    return " ".join(_GLUED.sub(" ", text).split())


def _scan_quotes(text: str) -> list[tuple[int, int]]:
    """Every paired quoted passage (marks included), and closing marks whose opener was lost.

    A mark between two letters is an apostrophe ("don't", "Kerr’s", "O'Connor") unless the next
    word is capitalised and glued to a source ("...Martin’Sunday Times‘Colossal"). A mark after an
    "s" before a lowercase word is a possessive ("Dobbs' books"). Quotes of the other kind inside
    an open passage are nested and ignored.
    """
    n = len(text)
    spans: list[tuple[int, int]] = []
    open_at, open_kind, seg_start, nested = -1, "", 0, False
    for m in _MARK.finditer(text):
        i, ch, end = m.start(), text[m.start()], m.end()
        kind = "d" if ch in _DOUBLE or end - i == 2 else "s"
        prev, nxt = text[i - 1] if i else " ", text[end] if end < n else " "
        in_word = prev.isalnum() and nxt.isalnum()
        can_open = (prev in _OPEN_AFTER or in_word) and not nxt.isspace() and not _ELISION.match(text, i)
        # a mark after a full stop closes even when the source is glued to it ("Map.'THE EXPRESS")
        can_close = not prev.isspace() and (not nxt.isalnum() or prev in ".!?,;…")
        if kind == "s" and in_word:
            # glued close or open ("love.' - Woman's World'Short stories"), else an apostrophe
            cap_word = nxt.isupper() and text[end + 1:end + 2].islower()  # "Tony", not "ROSS'S"
            glued_close = ch != "‘" and nxt.isupper() and open_kind == "s"
            glued_open = ch != "’" and cap_word and text[i - 2:i - 1].isalpha()
            can_close, can_open = glued_close, glued_open and not glued_close
        if kind == "s" and can_close and prev in "sSzx" and re.match(r"\s+[a-z]", text[end:end + 2]):
            can_close = False  # possessive: "Holmes' surprisingly"
        if kind == "d" and in_word:
            can_open, can_close = open_kind == "", open_kind == "d"
        if open_kind == kind and can_close and ch not in "“‘":
            spans.append((open_at, end))
            open_kind, seg_start, nested = "", end, False
        elif open_kind and open_kind != kind and (nested or can_open and not can_close):
            nested = not nested  # a quote inside the passage: 'You ask, "Why?" Superb.'
        elif open_kind == "" and can_open and ch not in "”’" or open_kind == kind and can_open and not can_close:
            if open_kind and (lost := _lost_close(text, open_at, i)):
                spans.append((open_at, lost))
            open_at, open_kind = i, kind  # a second opener: the first passage lost its closing mark
        elif open_kind and open_kind != kind and can_close and not can_open and _source_at(text, end):
            spans.append((open_at, end))  # mismatched marks: "A book ...' Daily Telegraph"
            open_kind, seg_start = "", end
        elif open_kind == "" and can_close and ch not in "“‘" and _source_at(text, end):
            spans.append((seg_start, end))  # the opening mark was lost: "Great reading' BBC"
            seg_start = end
    if open_kind and (lost := _lost_close(text, open_at, n)):
        spans.append((open_at, lost))
    return spans


def _lost_close(text: str, start: int, end: int) -> int | None:
    """End of a passage whose closing mark is missing but whose source is there.

    "'... continues to inspire., Scottish Field 'Still a classic": the passage ends at the full
    stop when a source fills the rest up to ``end`` (the next opening mark or the text's end).
    """
    base = max(start, end - 150)
    for m in reversed(list(re.finditer(r"[.!?…,](?=,?\s)", text[base:end]))):
        found = _source_at(text, base + m.end())
        if found and not text[found[1]:end].strip(" -–—*\t"):
            return base + m.end()
    return None


def _source_at(text: str, pos: int) -> tuple[str, int] | None:
    """(source, end) when a source name follows ``pos`` and ends where a source can end."""
    m = _AFTER_QUOTE.match(text, pos)
    if not m:
        return None
    src = m.group("src").strip(" -–—,:;()*'\"")
    rest = text[m.end():m.end() + 2]
    # a lowercase word after it means prose went on: '"inspired." Free of dogma, ...'
    if not src or len(src) > 90 or re.match(r"\s*[a-z]", rest) and not m.group(0).rstrip().endswith(")"):
        return None
    return src.rstrip("."), m.end()


def _words_in(text: str) -> int:
    return len(re.findall(r"\w+", text))


def quote_spans(text: str, min_words: int = 3) -> list[tuple[int, int]]:
    """(start, end) offsets of quoted passages in ``text``, quote marks included.

    Straight and curly, single and double quotes. A passage counts with ``min_words`` words or
    more (a two-word "scare quote" is not one), or with fewer when a source follows it ("'Brilliant'
    Spectator"). A passage whose opening mark was lost counts when a source follows its closing
    mark. Offsets refer to ``text`` as given (decode HTML entities first for raw records).
    """
    text = text or ""
    return [(a, b) for a, b in _scan_quotes(text)
            if _words_in(text[a:b]) >= min_words or _words_in(text[a:b]) and _source_at(text, b)]


def _review_regions(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    """Regions of ``text`` that are quotes, their sources or review headers; (offset, source) pairs."""
    regions: list[tuple[int, int]] = []
    sources: list[tuple[int, str]] = []
    for a, b in quote_spans(text):
        regions.append((a, b))
        if found := _source_at(text, b):
            sources.append((b, found[0]))
            regions.append((b, found[1]))
    for m in _PRAISE.finditer(text):
        regions.append(m.span())
        x = re.sub(r"^(?:[Tt]he\s+)|[\s’'\"“”‘]+$|^[\s’'\"“”‘]+", "", m.group("x").strip())
        x = re.sub(r"(?:\s+[a-z][\w'’-]*)+$", "", x)  # "Bernard Cornwell's Sharpe novels" -> a name
        if re.search(r"[A-Z]", x):
            sources.append((m.start("x"), x))
    inside = list(regions)
    for m in _SOURCE_ANY.finditer(text):
        if _SIGN_OFF_BEFORE.search(text, max(0, m.start() - 4), m.start()) and not any(
                a <= m.start("s") < b for a, b in inside):
            regions.append(m.span())
            sources.append((m.start("s"), m.group("s")))
    if (head := _SOURCE_HEAD.match(text)) and not any(a <= head.start(0) + 1 < b for a, b in regions):
        regions.append(head.span())
        sources.append((head.start(0), head.group("a") or head.group("b")))
    return regions, sorted(sources)


def attributions(text: str) -> list[str]:
    """Sources named with the quoted passages of ``text``, in order of appearance.

    A source right after a quote ("' Sunday Express", "- Woman's World", "--Publishers Weekly",
    "(The Times)"), the subject of a praise header before quotes ("Praise for Jane Doe:" gives
    "Jane Doe"), and the fixed review-source phrases that need no quote ("From Booklist",
    "Starred Review.", "--Kirkus Reviews"). Names are returned as they appear, without the dashes
    and punctuation around them.
    """
    text = _prep(text)
    return [s for _, s in _review_regions(_blank(text, _boiler_regions(text)))[1]]


def _merge(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in regions if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _letters(text: str, regions: list[tuple[int, int]]) -> int:
    return sum(len(_LETTER.findall(text, a, b)) for a, b in regions)


def _unquoted_signs(text: str, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Blurbs without quote marks, each signed by a publication ("... easy to use. The Observer").

    Two signatures are needed (one could be prose naming a newspaper), or one after a dash.
    """
    if not _PUBLICATION_RE.search(text):
        return []  # the common case, found fast
    hits = [m for m in _UNQUOTED_SIGN.finditer(text) if m.group("src").split()[-1].strip(".,") in _PUBLICATION
            and not any(a <= m.start("src") < b for a, b in taken)]
    if len(hits) < 2 and not any(re.match(r"\s*[-–—]", m.group(0)) for m in hits):
        return []
    out, start = [], 0
    for m in hits:
        start = max([start] + [b for a, b in taken if b <= m.start()])
        out.append((start, m.end()))
        start = m.end()
    return out


def _fill_gaps(text: str, regions: list[tuple[int, int]], max_words: int = 8) -> list[tuple[int, int]]:
    """Join review regions a few words apart: headers and sources the patterns missed."""
    filled: list[tuple[int, int]] = []
    for a, b in _merge(regions):
        if _words_in(text[filled[-1][1] if filled else 0:a]) <= max_words:
            a = filled.pop()[0] if filled else 0
        filled.append((a, b))
    if filled and _words_in(text[filled[-1][1]:]) <= 3:
        filled[-1] = (filled[-1][0], len(text))
    return filled


def _blank(text: str, regions: list[tuple[int, int]]) -> str:
    """``text`` with ``regions`` replaced by spaces: offsets stay valid."""
    for a, b in regions:
        text = text[:a] + " " * (b - a) + text[b:]
    return text


def review_share(text: str) -> float:
    """Share of the letters of ``text`` (boilerplate left out) in quotes, sources and praise headers."""
    text = _prep(text)
    boiler = _boiler_regions(text)
    total = len(_LETTER.findall(text)) - _letters(text, boiler)
    if total <= 0:
        return 0.0
    plain = _blank(text, boiler)  # so a source can end a text: "itself., Devon Life--This text ..."
    regions, sources = _review_regions(plain)
    regions += _unquoted_signs(plain, regions)
    # without any source or header the quotes may be a phrase ("call it 'the best mug'"): no gap
    # filling, only the quoted letters count
    covered = _merge((_fill_gaps(text, regions) if sources or len(regions) > len(quote_spans(plain))
                      else regions) + boiler)
    return min(1.0, (_letters(text, covered) - _letters(text, boiler)) / total)


def _boiler_regions(text: str) -> list[tuple[int, int]]:
    # each pattern only where its literal is (most texts have none): a regex scan per offset is slow
    rules = [(_REFERS, ("This text",)), (_COPYRIGHT, ("Copyright",)), (_LANGUAGE, ("Text:",)),
             (_LABELS, ("escription", "Language Notes", "Editorial", "Not available"))]
    return _merge([m.span() for rx, lits in rules if any(x in text for x in lits) for m in rx.finditer(text)])


def is_quote_style(text: str) -> bool:
    """Whether ``text`` opens like a review quote: the measure of a model's collapse into press praise.

    True when it starts with a quote mark (not an elision like "'Tis"), with a praise header
    ("Praise for ...", "Acclaim for ..."), with a review-source header ("From Publishers
    Weekly", "Starred Review."), or with a passage whose closing mark is followed by a source
    though its opening mark is missing ("Great reading' Sunday Telegraph").
    """
    t = _prep(text).lstrip(" \t\r\n*•·-–—.…")
    if not t:
        return False
    if t[0] in _QUOTES and not _ELISION.match(t) and len(t) > 1 and not t[1].isspace():
        return True
    if _PRAISE.match(t) or _SOURCE_HEAD.match(t):
        return True
    spans = _scan_quotes(t[:300])
    return bool(spans) and spans[0][0] == 0 and _words_in(t[:spans[0][1]]) >= 2


def _sentences(text: str) -> list[str]:
    """Sentences, not split after initials and titles ("David C. Isby", "Dr. Adler")."""
    out, start = [], 0
    for m in _STOP.finditer(text):
        word = re.search(r"[\w.]+$", text[max(start, m.start() - 30):m.start()])
        w = word.group(0).lower() if word else ""
        if m.group(0)[0] == "." and (len(w) == 1 or w in _ABBREV or re.fullmatch(r"(?:\w\.)+\w", w)):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if _LETTER.search(s)]


def _bio_flags(sentences: list[str]) -> list[bool]:
    """Which sentences are biography.

    A sentence with a cue ("was born", "is the author of", "lives in", "is President of") and a
    person as subject; after one, any sentence with that person or "he"/"she" as subject. A first
    sentence with a person as subject and no cue ("Linda Fairley enrolled as a nurse") counts
    when the next one goes on about that person.
    """
    if not sentences:
        return []
    first = _PERSON_SUBJECT.match(sentences[0]) or _APPOSITIVE_SUBJECT.match(sentences[0])
    words = [w for w in re.findall(r"[A-Z][\w'’-]{2,}", first.group(0)) if w not in _TITLE_WORDS] if first else []
    subj = r"(?:[Hh]e|[Ss]he" + "".join("|" + re.escape(w) for w in words) + r")"
    about = re.compile(rf"^(?:[^,]{{0,60}},\s*)?{_TITLES}(?:[A-Z][\w'’.-]+\s+){{0,3}}?{subj}\s+(?:[a-z]+ly\s+)?[a-z]")
    mention = re.compile(rf"\b(?:{subj}|[Hh]is|[Hh]er|[Hh]im)\b")
    flags: list[bool] = []
    seen = False  # a biography sentence so far
    for k, s in enumerate(sentences):
        own = _PERSON_SUBJECT.match(s) or _APPOSITIVE_SUBJECT.match(s) or about.match(s)
        bio = bool(_BIO_CUE.search(s) and (own or seen or re.search(r"\b(?:born|[Aa]uthor)\b", s)))
        # the person as subject goes on with a biography; once one started, so does any mention
        # of them ("Her novels have been translated ...", "During this time she has welcomed ...")
        bio = bio or k > 0 and bool((seen or first) and about.match(s)) or seen and bool(mention.search(s, 0, 60))
        # a sentence about the product is not biography ("Her latest work is a collection ...")
        flags.append(bio and not _PRODUCT_REF.search(s))
        seen = seen or flags[-1]
    if first and not flags[0] and len(flags) > 1 and flags[1]:
        flags[0] = True  # "X enrolled as a nurse. She went on to train as a midwife."
    return flags


def _share(sentences: list[str], flags: list[bool]) -> float:
    total = sum(len(s) for s in sentences)
    return sum(len(s) for s, f in zip(sentences, flags) if f) / total if total else 0.0


def content_kind(text: str) -> str:
    """The kind of a description, one of ``KINDS``.

    "boilerplate" when nothing is left once publisher and packaging boilerplate is removed (an
    edition note, a copyright line, language notes, a credit line, a bare format) or when it is a
    publisher's description of itself; "reviews" when at least ``REVIEWS_SHARE`` of its letters
    are quotes, their sources and praise headers, or when it opens with a review-source header
    ("Starred Review.", "From Booklist"); "author_bio" when biography sentences with a person as
    subject make up ``BIO_SHARE`` of it and it starts with one; else "product".
    """
    text = _prep(text)
    rest = " ".join(_blank(text, _boiler_regions(text)).split()).strip(" -–—.,;:")
    if not _LETTER.search(rest) or _CREDIT.match(rest):
        return "boilerplate"
    if _SOURCE_HEAD.match(text) or review_share(text) >= REVIEWS_SHARE:
        return "reviews"
    sentences = _sentences(rest)
    # a publisher's self-description; "Formerly publisher of X, Y is a leading expert" is a bio
    publisher = [bool(_PUBLISHER.search(s) and not _BIO_CUE.search(s)) for s in sentences]
    if _share(sentences, publisher) >= BOILERPLATE_SHARE:
        return "boilerplate"
    flags = _bio_flags(sentences)
    if flags and flags[0] and _share(sentences, flags) >= BIO_SHARE:
        return "author_bio"
    return "product"
