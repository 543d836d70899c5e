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
from typing import Iterator

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
# _MARK's tokens but the single marks between a letter or digit and [a-z0-9] (apostrophes: "don't"):
# a double mark, "''", or a single mark not followed by [a-z0-9] or not after a letter or digit. Where
# both match they give the same token ("''" first), so whatever _MARK finds between two of these is
# such an apostrophe. A class first is found fast; "''|[...]" is tried at every offset
_MARK_FAST = re.compile(r"[\"“”„«»'‘’‚](?:(?<=[\"“”„«»])|(?<=')'|(?![a-z0-9])|(?<![^\W_].))")
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
# every header above has one of these (so does "From the reviews of"): without them _PRAISE cannot match;
# with them, the hint (the header's core, found fast) tells the many "Reviews" signatures apart
_PRAISE_LITERALS = ("raise", "RAISE", "cclaim", "CCLAIM", "eview", "EVIEW")
_PRAISE_HINT = re.compile(r"(?:raise|RAISE|cclaim|CCLAIM|eviews?|EVIEWS?)\s+(?:for|of|from|FOR|OF|FROM)\s")
# Review-source headers and sign-offs that come without a quote (Amazon's editorial reviews).
_SOURCES = ("Publishers Weekly", "Booklist", "School Library Journal", "Library Journal",
            "Kirkus Reviews", "Kirkus", "Starred Review", "AudioFile", "The Horn Book",
            "Horn Book", "Bookmarks Magazine", "Editorial Review")
_SOURCE_ALT = "|".join(re.escape(s) for s in _SOURCES)
# every source holds one of these ("Kirkus Reviews" holds "Kirkus")
_SOURCE_LITERALS = tuple(s for s in _SOURCES if not any(o != s and o in s for o in _SOURCES))
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
_UNQUOTED_SIGN = re.compile(rf"(?:(?<=[.!?…])|(?<=[.!?…][-–—])|(?<=[a-z]\s))\s*[-–—]{{0,2}}\s*"
                            rf"(?P<src>{_RUN})(?=\s+[A-Z]|\s*[-–—]{{2}}|\s*$)")
# Scanning for _UNQUOTED_SIGN costs about 0.1 ms a text (it backtracks through every capitalised
# run), so _sign_matches tries it only near publication names; these find the places (see there).
# the names as words; no leading \b, which would keep the engine from skipping to their first letters
_PUBLICATION_WORD = re.compile(r"(?:" + "|".join(sorted(_PUBLICATION)) + r")\b")
# one character before each offset where _UNQUOTED_SIGN can match (x + 1 or x + 2): its look-behinds,
# then dashes or spaces and a capital, "the" before it or not
_SIGN_BEFORE = re.compile(r"[.!?…a-z](?:(?<=[a-z])(?=\s)|(?<=[.!?…]))(?=[-–—\s]*(?:[Tt]he\s+)?[A-Z\d])")
# lowercase words a source can hold: its small words, "the" in front and the word after it
_RUN_LOWER = set(_CONN[3:-1].split("|")) | {"the"}
_RUN_TAILS = ("magazine", "newspaper", "online")
_TOKEN = re.compile(r"\S*")

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
# one of these is in every _PUBLISHER match, in lowercase (as ``str.lower`` gives it for ASCII text)
_PUBLISHER_LITERALS = ("publish", "imprint", "library of liberal arts", "authors represent", "founded in")
_PUBLISHER_LEAD = len("we are proud to ")
"""The most characters of a ``_PUBLISHER`` match before its literal ("previously ", "was " are fewer)."""
_PUBLISHER_LITERALS_B = tuple(w.encode("ascii") for w in _PUBLISHER_LITERALS)
# the characters but ASCII that a case-blind ASCII letter matches: İ ı ſ and the Kelvin sign (a test checks)
_FOLDS_TO_ASCII = re.compile("[\u0130\u0131\u017f\u212a]")

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
# the person (or "he"/"she") as subject, in parts: the names come from each text (see _about)
_ABOUT_HEAD = rf"(?:[^,]{{0,60}},\s*)?{_TITLES}(?:[A-Z][\w'’.-]+\s+){{0,3}}?"
_ABOUT_TAIL = r"\s+(?:[a-z]+ly\s+)?[a-z]"
_ABOUT_PRONOUN = re.compile(rf"^{_ABOUT_HEAD}(?:[Hh]e|[Ss]he){_ABOUT_TAIL}")
_ABOUT_HEAD_RE = re.compile(_ABOUT_HEAD)
_ABOUT_TAIL_RE = re.compile(_ABOUT_TAIL)
_MENTION_PRONOUN = re.compile(r"\b(?:[Hh]e|[Ss]he|[Hh]is|[Hh]er|[Hh]im)\b")
_BOUNDARY = re.compile(r"\b")
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
# a glued place is right after one of these (found fast, unlike a look-behind tried at every offset)
_GLUED_HINT = re.compile(r"[.!?][A-Z]")
_LETTER = re.compile(r"\w")
_ODD_SPACE = re.compile(r"[^\S ]")  # white space but the space (\s is str.isspace)
_ASCII_ODD_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"  # what it matches in ASCII, each found by memchr
# Small patterns the functions below use on every text, compiled once: a string pattern inside a
# function costs a lookup in the re module's cache on every call (and a compile when it fell out).
_NON_WORD_ASCII = bytes(c for c in range(128) if not _LETTER.match(chr(c)))
_NON_ASCII_WORD = re.compile(r"[^\W\x00-\x7f]")
_POSSESSIVE_NEXT = re.compile(r"\s+[a-z]")
_CLAUSE_END = re.compile(r"[.!?…,](?=,?\s)")
_LOWER_NEXT = re.compile(r"\s*[a-z]")
_PRAISE_TRIM = re.compile(r"^(?:[Tt]he\s+)|[\s’'\"“”‘]+$|^[\s’'\"“”‘]+")
_LOWER_TAIL = re.compile(r"(?:\s+[a-z][\w'’-]*)+$")
_UPPER = re.compile(r"[A-Z]")
_DASH_LEAD = re.compile(r"\s*[-–—]")
_LAST_TOKEN = re.compile(r"[\w.]+$")
_INITIALS = re.compile(r"(?:\w\.)+\w")
_NAME_WORD = re.compile(r"[A-Z][\w'’-]{2,}")
_BORN_OR_AUTHOR = re.compile(r"\b(?:born|[Aa]uthor)\b")


def _prep(text: str) -> str:
    """HTML entities decoded (twice: some records are double-escaped), glued sentences split."""
    text = html.unescape(html.unescape(text)) if "&" in (text or "") else text or ""
    parts, at = [], 0
    for m in _GLUED_HINT.finditer(text):  # what _GLUED.sub(" ", text) does, checked only there
        if _GLUED.match(text, m.start() + 1):
            parts += (text[at:m.start() + 1], " ")
            at = m.start() + 1
    return _squeeze("".join(parts) + text[at:] if parts else text)


def _squeeze(text: str) -> str:
    """``" ".join(text.split())``, which costs a string per word: most texts are squeezed already."""
    if "  " in text or text[:1] == " " or text[-1:] == " " or (
            any(map(text.__contains__, _ASCII_ODD_SPACE)) if text.isascii()
            else not text.isprintable() and _ODD_SPACE.search(text)):  # every other space is unprintable
        return " ".join(text.split())
    return text  # only single spaces (what \s and str.split take for white space), none at an end


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
    last = 0  # where the previous mark seen here ended
    for m in _MARK_FAST.finditer(text):  # the marks of _MARK but most apostrophes, skipped by the engine
        i, ch, end = m.start(), text[m.start()], m.end()
        if nested and open_kind == "d" and _MARK.search(text, last, i):
            nested = False  # what the apostrophes skipped since the last mark do (see below)
        last = end
        kind = "d" if ch in _DOUBLE or end - i == 2 else "s"
        prev, nxt = text[i - 1] if i else " ", text[end] if end < n else " "
        if kind == "s" and prev.isalnum() and nxt.isalnum() and not nxt.isupper():
            # the commonest mark, an apostrophe ("don't", "Kerr’s"), settled early: it neither opens
            # nor closes, and in the chain below it only clears a nested flag of a double passage
            nested = nested and open_kind != "d"
            continue
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
        if kind == "s" and can_close and prev in "sSzx" and _POSSESSIVE_NEXT.match(text[end:end + 2]):
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
    for m in reversed(list(_CLAUSE_END.finditer(text[base:end]))):
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
    if not src or len(src) > 90 or _LOWER_NEXT.match(rest) and not m.group(0).rstrip().endswith(")"):
        return None
    return src.rstrip("."), m.end()


def _words_at_least(text: str, k: int, start: int = 0, end: int | None = None) -> bool:
    """Whether ``text[start:end]`` holds ``k`` words or more (runs of ``\\w``), found in place.

    A pattern of ``k`` possessive (non-word run, word run) pairs matches there exactly then, and
    stops after ``k`` words: counting them all (``findall``) costs a string per word of a long gap.
    """
    if k <= 0:
        return True
    rx = _AT_LEAST.get(k)
    if rx is None:
        rx = _AT_LEAST[k] = re.compile(rf"(?:\W*+\w++){{{k}}}")
    return rx.match(text, start, len(text) if end is None else end) is not None


_AT_LEAST: dict[int, re.Pattern] = {}


def quote_spans(text: str, min_words: int = 3) -> list[tuple[int, int]]:
    """(start, end) offsets of quoted passages in ``text``, quote marks included.

    Straight and curly, single and double quotes. A passage counts with ``min_words`` words or
    more (a two-word "scare quote" is not one), or with fewer when a source follows it ("'Brilliant'
    Spectator"). A passage whose opening mark was lost counts when a source follows its closing
    mark. Offsets refer to ``text`` as given (decode HTML entities first for raw records).
    """
    text = text or ""
    out = []
    for a, b in _scan_quotes(text):
        if _words_at_least(text, min_words, a, b) or _words_at_least(text, 1, a, b) and _source_at(text, b):
            out.append((a, b))
    return out


def _review_regions(text: str, spans: list[tuple[int, int]] | None = None
                    ) -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
    """Regions of ``text`` that are quotes, their sources or review headers; (offset, source) pairs.

    ``spans`` are ``quote_spans(text)`` when the caller has them already.
    """
    regions: list[tuple[int, int]] = []
    sources: list[tuple[int, str]] = []
    for a, b in quote_spans(text) if spans is None else spans:
        regions.append((a, b))
        if found := _source_at(text, b):
            sources.append((b, found[0]))
            regions.append((b, found[1]))
    # the two scans below try every offset; most texts lack their literals, found far faster by `in`
    praise = any(w in text for w in _PRAISE_LITERALS) and _PRAISE_HINT.search(text)
    for m in _PRAISE.finditer(text) if praise else ():
        regions.append(m.span())
        x = _PRAISE_TRIM.sub("", m.group("x").strip())
        x = _LOWER_TAIL.sub("", x)  # "Bernard Cornwell's Sharpe novels" -> a name
        if _UPPER.search(x):
            sources.append((m.start("x"), x))
    inside = list(regions)
    signed = any(s in text for s in _SOURCE_LITERALS)
    for m in _SOURCE_ANY.finditer(text) if signed else ():
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
    """Word characters (what ``_LETTER`` matches) of ``text`` inside ``regions``."""
    if text.isascii():  # most texts: bytes.translate drops the rest in one pass, 3x faster than findall
        data = text.encode("ascii")
        return sum(len(data[a:b].translate(None, _NON_WORD_ASCII)) for a, b in regions)
    # the same in ASCII, each other character a "?" (offsets hold), and the others' word characters
    # (rare) one by one: a substitution per region copies every letter, 4x slower
    data = text.encode("ascii", "replace")
    n = sum(len(data[a:b].translate(None, _NON_WORD_ASCII)) for a, b in regions)
    for m in _NON_ASCII_WORD.finditer(text):
        n += sum(a <= m.start() < b for a, b in regions)
    return n


WHOLE_SIGN_SCAN_CHARS = 4000
"""Texts longer than this scan for signatures in one pass over the whole text (see _unquoted_signs)."""


def _sign_matches(text: str, taken: list[tuple[int, int]]) -> list[re.Match]:
    """The matches of ``_UNQUOTED_SIGN.finditer(text)`` that can be signatures, in order.

    Left out are only matches that cannot end with a publication name or whose source starts
    inside ``taken``. Such a name starts the source's last word, at a word boundary (the names
    are letters only: one inside a word is no signature's, and no other name starts there).
    The scan is run near each name only, which finds what the scan of the whole text finds:
    it starts where the last match ended, or at a later "barrier", the start of a word after a
    space that begins with a lowercase letter and is none a source can hold (``_RUN_LOWER``,
    ``_RUN_TAILS``): no match holds one, so the whole scan reaches the barrier without a match
    across it, and goes on from there as this one does. It tries only the offsets that
    ``_SIGN_BEFORE`` allows, up to the name: a match holding the name starts there.
    """
    out: list[re.Match] = []
    done = 0  # where the last match ended: the whole scan goes on from here as well
    covered = _merge(taken)
    for name in _PUBLICATION_WORD.finditer(text):
        w = name.start()
        if w < done or w and _LETTER.match(text, w - 1):
            continue
        start, k = done, w
        for _ in range(6):  # a barrier is mostly a word or two back; else start from `done`
            j = text.rfind(" ", done, k)
            if j < 0:
                break
            word = _TOKEN.match(text, j + 1).group()
            if "a" <= word[:1] <= "z" and word not in _RUN_LOWER and not word.startswith(_RUN_TAILS):
                start = j + 1
                break
            k = j
        if any(a <= start and w < b for a, b in covered):
            continue  # a signature with this name would have its source in `taken`: none counts
        # a match starting by w has its source by w, so its look-ahead needs nothing after w
        for x in _SIGN_BEFORE.finditer(text, max(0, start - 2), w + 1):
            for p in (x.start() + 1, x.start() + 2):
                if max(start, done) <= p <= w and (m := _UNQUOTED_SIGN.match(text, p)):
                    out.append(m)
                    done = m.end()
    return out


def _unquoted_signs(text: str, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Blurbs without quote marks, each signed by a publication ("... easy to use. The Observer").

    Two signatures are needed (one could be prose naming a newspaper), or one after a dash.
    """
    # _sign_matches rescans from the last match for every name, so a long text with many names and no
    # barrier costs names x length (a 29,000-character repeated blurb: 3 s); there one whole scan is linear
    found = _UNQUOTED_SIGN.finditer(text) if len(text) > WHOLE_SIGN_SCAN_CHARS else _sign_matches(text, taken)
    hits = [m for m in found if m.group("src").split()[-1].strip(".,") in _PUBLICATION
            and not any(a <= m.start("src") < b for a, b in taken)]
    if len(hits) < 2 and not any(_DASH_LEAD.match(m.group(0)) for m in hits):
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
        if not _words_at_least(text, max_words + 1, filled[-1][1] if filled else 0, a):
            a = filled.pop()[0] if filled else 0
        filled.append((a, b))
    if filled and not _words_at_least(text, 4, filled[-1][1]):
        filled[-1] = (filled[-1][0], len(text))
    return filled


def _blank(text: str, regions: list[tuple[int, int]]) -> str:
    """``text`` with ``regions`` replaced by spaces: offsets stay valid.

    The regions are sorted and apart, as ``_merge`` gives them.
    """
    if not regions:
        return text
    parts, at = [], 0
    for a, b in regions:  # one join, not a copy of the whole text per region
        parts += (text[at:a], " " * (b - a))
        at = b
    parts.append(text[at:])
    return "".join(parts)


def review_share(text: str) -> float:
    """Share of the letters of ``text`` (boilerplate left out) in quotes, sources and praise headers."""
    return _raw_review_share(text)


def _raw_review_share(text: str, enough: float | None = None) -> float:
    text = _prep(text)
    boiler = _boiler_regions(text)
    return _review_share(text, boiler, _blank(text, boiler), enough)


def _review_share(text: str, boiler: list[tuple[int, int]], plain: str, enough: float | None = None) -> float:
    """``review_share`` of a text already through ``_prep``, with its boilerplate regions and blanked copy.

    With ``enough``, a share of at least ``enough`` may come back as soon as one is certain (a lower
    bound, not the share): unquoted signatures only add regions, and the share only grows with them
    (a region more covers more, and no gap gets wider; see ``_covered_share``), so when the regions
    found before them give ``enough``, their scan, the costliest part of a review text, is skipped.
    """
    # plain keeps the boilerplate as spaces, so a source can end a text: "itself., Devon Life--This text ..."
    spans = quote_spans(plain)
    regions, sources = _review_regions(plain, spans)
    # the boilerplate's letters are spaces in plain: counting there leaves them out
    total = _letters(plain, [(0, len(plain))]) if regions else None
    if enough is not None and regions and (share := _covered_share(text, boiler, spans, regions, sources,
                                                                   plain, total)) >= enough:
        return share
    regions += _unquoted_signs(plain, regions)
    if not regions:
        return 0.0  # nothing covered but the boilerplate, which does not count: most products
    return _covered_share(text, boiler, spans, regions, sources, plain,
                          _letters(plain, [(0, len(plain))]) if total is None else total)


def _covered_share(text: str, boiler: list[tuple[int, int]], spans: list[tuple[int, int]],
                   regions: list[tuple[int, int]], sources: list[tuple[int, str]], plain: str, total: int) -> float:
    """Share of the ``total`` letters of ``plain`` that ``regions`` cover, gaps filled (see ``_review_share``)."""
    if total <= 0:
        return 0.0
    # without any source or header the quotes may be a phrase ("call it 'the best mug'"): no gap
    # filling, only the quoted letters count. Either way more regions cover at least as much: a gap
    # left between them only shrinks (and holds no more words) as regions are added
    covered = _merge((_fill_gaps(text, regions) if sources or len(regions) > len(spans) else regions) + boiler)
    return min(1.0, _letters(plain, covered) / total)


def _boiler_regions(text: str) -> list[tuple[int, int]]:
    # each pattern only where its literal is (most texts have none): a regex scan per offset is slow.
    # The edition note and the copyright line are frequent: tried only right before their literal
    spans = [m.span() for m in _at_literal(_REFERS, text, "This text refers to", "-—")]
    spans += [m.span() for m in _at_literal(_COPYRIGHT, text, "Copyright", "(c)©")]
    spans += [m.span() for rx, lits in _BOILER_RULES if any(x in text for x in lits) for m in rx.finditer(text)]
    return _merge(spans) if spans else spans  # most texts: none


_BOILER_RULES = ((_LANGUAGE, ("Text:",)), (_LABELS, ("escription", "Language Notes", "Editorial", "Not available")))


def _at_literal(rx: re.Pattern, text: str, literal: str, lead: str) -> list[re.Match]:
    """``list(rx.finditer(text))`` for a pattern whose every match is ``literal`` after a run of ``lead``
    characters and white space (``literal`` starting with neither).

    A match then starts in such a run right before an occurrence of ``literal`` (or at it): rx is
    tried there, left to right, instead of at every offset.
    """
    out: list[re.Match] = []
    done = 0  # where the last match ended: the next one starts there or later
    at = text.find(literal)
    while at >= 0:
        start = at
        while start > done and (text[start - 1] in lead or text[start - 1].isspace()):
            start -= 1
        for p in range(start, at + 1):
            if m := rx.match(text, p):
                out.append(m)
                done = m.end()
                break
        at = text.find(literal, max(done, at + 1))
    return out


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
    return bool(spans) and spans[0][0] == 0 and _words_at_least(t, 2, 0, spans[0][1])


def _sentences(text: str) -> list[str]:
    """Sentences, not split after initials and titles ("David C. Isby", "Dr. Adler")."""
    return list(_iter_sentences(text))


def _iter_sentences(text: str) -> Iterator[str]:
    """``_sentences(text)`` one at a time: the first alone often settles a text (see ``_may_be_bio``)."""
    start = 0
    for m in _STOP.finditer(text):
        if m.group(0)[0] == ".":  # the word before matters only for a full stop
            # pos/endpos instead of a slice: "$" matches at endpos as at a slice's end. No match
            # starts before the window's last space, so the search starts after it
            lo = max(start, m.start() - 30)
            word = _LAST_TOKEN.search(text, max(lo, text.rfind(" ", lo, m.start()) + 1), m.start())
            w = word.group(0).lower() if word else ""
            if len(w) == 1 or w in _ABBREV or _INITIALS.fullmatch(w):
                continue
        s = text[start:m.end()].strip()
        start = m.end()
        if _LETTER.search(s):
            yield s
    s = text[start:].strip()
    if _LETTER.search(s):
        yield s


_UNKNOWN = object()


def _bio_flags(sentences: list[str], first: re.Match | None | object = _UNKNOWN) -> list[bool]:
    """Which sentences are biography.

    A sentence with a cue ("was born", "is the author of", "lives in", "is President of") and a
    person as subject; after one, any sentence with that person or "he"/"she" as subject. A first
    sentence with a person as subject and no cue ("Linda Fairley enrolled as a nurse") counts
    when the next one goes on about that person. ``first`` is ``_person_subject(sentences[0])``
    when the caller has it.
    """
    if not sentences:
        return []
    if first is _UNKNOWN:
        first = _person_subject(sentences[0])
    words = [w for w in _NAME_WORD.findall(first.group(0)) if w not in _TITLE_WORDS] if first else []
    flags: list[bool] = []
    seen = False  # a biography sentence so far
    for k, s in enumerate(sentences):
        # the person as subject goes on with a biography; once one started, so does any mention
        # of them ("Her novels have been translated ...", "During this time she has welcomed ...")
        about = _about(s, words) if k > 0 and (seen or first) else None
        bio = bool(about) or seen and _mentions(s, words)
        if not bio:  # a cue with a person as subject: the cue is the costliest search, so it comes last
            own = seen or (first if k == 0 else _person_subject(s)) or (_about(s, words) if about is None else about)
            born = ("born" in s or "uthor" in s) and _BORN_OR_AUTHOR.search(s)
            bio = bool((own or born) and _BIO_CUE.search(s))
        # a sentence about the product is not biography ("Her latest work is a collection ...")
        flags.append(bio and not _PRODUCT_REF.search(s))
        seen = seen or flags[-1]
    if first and not flags[0] and len(flags) > 1 and flags[1]:
        flags[0] = True  # "X enrolled as a nurse. She went on to train as a midwife."
    return flags


def _may_be_bio(text: str) -> bool:
    """False where ``_bio_flags(_sentences(text))`` cannot start with True: decided on the first sentence.

    Its flag is computed as there (it needs no later sentence); only a person as its subject
    lets a later sentence set it afterwards.
    """
    s = next(_iter_sentences(text), None)
    if s is None:
        return False
    first = _person_subject(s)
    return bool(first) or _bio_flags([s], first)[0]


def _person_subject(s: str) -> re.Match | None:
    """A person as the subject of sentence ``s`` ("Jane Doe was", "Morris West, an Australian, has")."""
    if m := _PERSON_SUBJECT.match(s):
        return m
    # both appositive shapes have a comma: without one that pattern is not tried
    return _APPOSITIVE_SUBJECT.match(s) if "," in s else None


def _about(s: str, words: list[str]) -> bool:
    """Whether sentence ``s`` has "he", "she" or the person named by ``words`` as subject.

    One pattern with the names in it (``^_ABOUT_HEAD(?:He|he|She|she|Name...)_ABOUT_TAIL``) would
    need a compile per text, 0.5 ms, more than the rest of the classification: so each place a
    name stands is tried with the parts before and after it instead, which matches the same.
    """
    if _ABOUT_PRONOUN.match(s):
        return True
    for w in words:
        i = s.find(w)
        while i >= 0:
            if _ABOUT_TAIL_RE.match(s, i + len(w)) and _ABOUT_HEAD_RE.fullmatch(s, 0, i):
                return True
            i = s.find(w, i + 1)
    return False


def _mentions(s: str, words: list[str]) -> bool:
    """Whether the first 60 characters of ``s`` have "he", "she", "his", "her", "him" or a name of ``words``.

    Each a word of its own (a word boundary on both sides), found without a pattern per text (see ``_about``).
    """
    if _MENTION_PRONOUN.search(s, 0, 60):
        return True
    head = s[:60]
    for w in words:
        i = head.find(w)
        while i >= 0:
            if _BOUNDARY.match(head, i) and _BOUNDARY.match(head, i + len(w)):
                return True
            i = head.find(w, i + 1)
    return False


def _publishes(s: str) -> bool:
    """``bool(_PUBLISHER.search(s))``, the case-blind pattern tried only near its literals.

    Every match holds one of ``_PUBLISHER_LITERALS`` at most ``_PUBLISHER_LEAD`` characters after its
    start, all ASCII: so they are looked for in ``s`` with every other character a "?" (the offsets
    hold), lowercased. Only the characters of ``_FOLDS_TO_ASCII`` match an ASCII letter case-blindly
    ("ſ" matches "s"): a text with one is searched whole.
    """
    if not s.isascii() and _FOLDS_TO_ASCII.search(s):
        return _PUBLISHER.search(s) is not None
    low = s.encode("ascii", "replace").lower()
    for lit in _PUBLISHER_LITERALS_B:
        i = low.find(lit)
        while i >= 0:
            if any(_PUBLISHER.match(s, p) for p in range(max(0, i - _PUBLISHER_LEAD), i + 1)):
                return True
            i = low.find(lit, i + 1)
    return False


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
    boiler = _boiler_regions(text)
    plain = _blank(text, boiler)
    # _prep collapsed the white space already: only blanked boilerplate can leave more
    rest = (_squeeze(plain) if boiler else plain).strip(" -–—.,;:")
    if not _LETTER.search(rest) or _CREDIT.match(rest):
        return "boilerplate"
    if _SOURCE_HEAD.match(text):
        return "reviews"
    # review_share(text) would _prep the text again, which changes nothing without a "&" (no entity
    # left to decode, glued sentences split already): then the boilerplate found above serves
    share = (_review_share(text, boiler, plain, REVIEWS_SHARE) if "&" not in text
             else _raw_review_share(text, REVIEWS_SHARE))
    if share >= REVIEWS_SHARE:
        return "reviews"
    # a publisher's self-description; "Formerly publisher of X, Y is a leading expert" is a bio.
    # The case-blind pattern tries every offset: only in sentences that can hold it (most texts none).
    # A sentence is a piece of rest between white space (or its ends), where \b sees what it sees in
    # rest: a match in a sentence is one in rest, so without one in rest no sentence has one
    sentences = None
    if _publishes(rest):
        sentences = _sentences(rest)
        publisher = [_publishes(s) and not _BIO_CUE.search(s) for s in sentences]
        if _share(sentences, publisher) >= BOILERPLATE_SHARE:
            return "boilerplate"
    if sentences is None and not _may_be_bio(rest):
        return "product"  # most products: settled by their first sentence, the others never split
    if sentences is None:
        sentences = _sentences(rest)
    flags = _bio_flags(sentences)
    if flags and flags[0] and _share(sentences, flags) >= BIO_SHARE:
        return "author_bio"
    return "product"
