"""Text cleaning and the per-record drop rules (pure functions, no I/O).

The rules follow the quirks of AmazonTitles-1.3MM (see shared/data/README.md): HTML entities
(``&#8217;``, ``&#x92;``, ``&copy;``), stray tags, glued markup boilerplate ("--This text refers
to thePaperbackedition."), publisher boilerplate ("Copyright 1991 Reed Business Information,
Inc."), placeholders ("Text: English, French (translation)") and content that only repeats the
title. Every rule has a name: it is the ``drop_reason`` written to ``raw_lengths.parquet``.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
import zlib

from catalogtune.core.prompt import has_invisible, neutralise, strip_invisible  # noqa: F401 (re-exported)

# Drop reasons, checked in the order of drop_reason (the first match wins). Their positions in
# REASONS are the codes workers send: a new reason goes at the end.
EMPTY_TITLE = "empty_title"
EMPTY_CONTENT = "empty_content"
PLACEHOLDER = "placeholder"
TOO_SHORT = "too_short"
TITLE_ECHO = "title_echo"
NOT_ENGLISH = "not_english"
DUPLICATE_EXACT = "duplicate_exact"
DUPLICATE_TITLE = "duplicate_title"
# Dropped from the train split only, by --drop-kinds (data.kinds): val and test keep every kind,
# so evaluation still sees the real mix of descriptions.
TRAIN_REVIEWS_ONLY = "train_reviews_only"
TRAIN_BOILERPLATE_ONLY = "train_boilerplate_only"
TRAIN_AUTHOR_BIO_ONLY = "train_author_bio_only"
KIND_REASONS = {"reviews": TRAIN_REVIEWS_ONLY, "boilerplate": TRAIN_BOILERPLATE_ONLY, "author_bio": TRAIN_AUTHOR_BIO_ONLY}
TITLE_TOO_LONG = "title_too_long"
REASONS = (EMPTY_TITLE, EMPTY_CONTENT, PLACEHOLDER, TOO_SHORT, TITLE_ECHO, NOT_ENGLISH,
           DUPLICATE_EXACT, DUPLICATE_TITLE, TRAIN_REVIEWS_ONLY, TRAIN_BOILERPLATE_ONLY, TRAIN_AUTHOR_BIO_ONLY,
           TITLE_TOO_LONG)
MAX_TITLE_CHARS = 1000
"""A longer cleaned title is dropped (title_too_long): the longest real one has 1,999 characters of
keyword spam, and every consumer (prompts 300, index 1,000) cuts titles anyway."""
MAX_CONTENT_CHARS = 20_000
"""A longer cleaned description is cut at a sentence (else word) boundary and kept; counted as
``content_truncated`` in the quality report. Consumers read at most its first 2,000 characters."""
MAX_PASSES = 8
"""Cleaning repeats until nothing changes (at most this often): see clean_text."""

_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)(?:\s[^<>]{0,300})?/?>")
# inline tags sit inside words or before punctuation ("<b>value</b>,"): removed without a space
_INLINE = frozenset("a b i u em strong span font small big sup sub abbr cite code q s tt".split())


def _tag_space(m: re.Match) -> str:
    return "" if m.group(1).lower() in _INLINE else " "


# Patterns start with a literal so the regex engine can jump to candidates (a leading
# "-*\s*" or a look-behind makes it try every position: 50x slower on long descriptions).
_REFERS = re.compile(r"This text refers to (?:an? |the)?[^.]{0,80}?edition(?: of this title)?\.?")
_COPYRIGHT = re.compile(
    r"Copyright\s*(?:©|\(c\))?\s*(?:\d{4}(?:\s*[-,]\s*\d{4})?)?,?\s*"
    r"(?:Reed Business Information|Cahners Business Information|American Library Association"
    r"|Reed Elsevier)(?:,?\s*(?:a division of Reed Elsevier)?\s*Inc)?\.?(?:\s*All rights reserved\.?)?"
)
# Sentences glued by stripped markup ("...years.Now even"): checked further in _unglue.
_GLUED = re.compile(r"\.(?=[A-Z][a-z])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd\u200b\ufeff]")
_PLACEHOLDER_RE = re.compile(
    r"^(?:text: [a-z ,;()]+(?:original language: [a-z ,;()]+)?"
    r"|n/?a|none|null|nil|tbd|tba|todo|coming soon|no description(?: available)?"
    r"|description(?: not available| coming soon)?|product description|not available"
    r"|see (?:above|below|title)|[-.,;:_*#?!\s]*)$"
)
_WORD = re.compile(r"\w+")
_SPACE_RUN = re.compile(r"  +")
_BRACKETS = re.compile(r"\[[^\]]*\]|\([^)]*\)")

# Words that make near-identical titles: variants of one product differ only in these
# (colour, size, format, numbers), so titles equal without them share a split.
VARIANT_WORDS = frozenset(
    """
    black white red blue green yellow pink purple orange brown grey gray silver gold beige
    navy ivory cream tan khaki teal turquoise maroon burgundy violet neon clear multi
    multicolor multicolour light dark
    xs s m l xl xxl xxxl 2xl 3xl 4xl small medium large xlarge x large extra size sizes petite
    pack pk pcs pc piece pieces set count ct oz fl ml lb lbs g kg inch inches in cm mm ft
    paperback hardcover hardback kindle edition ed vhs dvd cd audio cassette audiobook
    mass market library binding board book books vol volume volumes part no number
    """.split()
)

_EN_STOP = frozenset(
    "the and of to a in is for with on that this it as are by from be you your an at or".split()
)


def _strip_refers(text: str) -> str:
    """Remove "--This text refers to thePaperbackedition." and the dashes glued before it."""
    parts = []
    pos = 0
    for m in _REFERS.finditer(text):
        parts.append(text[pos:m.start()].rstrip("-\u2013\u2014 "))
        pos = m.end()
    parts.append(text[pos:])
    return " ".join(parts)


def _unglue(text: str) -> str:
    """Put a space after a full stop glued to the next sentence, after a lowercase word.

    "readers.Now" -> "readers. Now"; "U.S.Army" and "e.g.The" stay (no 2 lowercase letters).
    """
    parts = []
    pos = 0
    for m in _GLUED.finditer(text):
        i = m.start()
        if i >= 2 and text[i - 1].islower() and text[i - 2].islower():
            parts.append(text[pos:i + 1])
            pos = i + 1
    if not parts:
        return text
    parts.append(text[pos:])
    return " ".join(parts)


def _spaces(text: str) -> str:
    """Control characters removed, whitespace runs collapsed to one space, ends stripped."""
    if "\ufffd" in text or not text.isprintable():
        # tabs, newlines, non-breaking and other spaces, control characters: the slow path
        return " ".join(_CONTROL.sub(" ", text).split())
    # only ASCII spaces can be left (printable text): one regex pass over the runs, and only
    # when there is one (cheaper than split/join or repeated str.replace)
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    return text.strip(" ")


def _unescape(text: str) -> str:
    text = html.unescape(text)
    # some records are double-escaped ("&amp;#8217;")
    return html.unescape(text) if "&" in text else text


def _clean_once(text: str) -> str:
    if "&" in text:
        text = _unescape(text)
    if not text.isascii():
        text = strip_invisible(text)  # before the tag rules: "<\u202eb>" is a tag once it is gone
    if "<" in text:
        text = neutralise(_TAG.sub(_tag_space, text))
    if "This text refers" in text:
        text = _strip_refers(text)
    if "Copyright" in text:
        text = _COPYRIGHT.sub(" ", text)
    if not text.isascii():
        # after every removal (which can bring a letter and its accent together) and before
        # _unglue, which looks at the letters before a full stop
        text = unicodedata.normalize("NFC", text)
    return _spaces(_unglue(text))


_AGAIN = re.compile(r"&[#A-Za-z0-9]|<[A-Za-z/|!?]|This text refers|Copyright")
"""What a second cleaning pass could still act on: an entity, a tag or special token, boilerplate."""


def _may_change(text: str) -> bool:
    # substring tests first: they are memchr-fast, the regex scans the whole text
    return ("&" in text or "<" in text or "This text" in text or "Copyright" in text) and bool(_AGAIN.search(text))


def clean_text(text: str) -> str:
    """Unescape HTML, remove tags, boilerplate, invisible and control characters, normalise whitespace.

    Idempotent: removing one thing can join its neighbours into another (``<<b>b>``,
    ``&<i>amp;``), so a changed text is cleaned again until it is stable.
    """
    out, passes = _clean_once(text), 1
    while out != text and passes < MAX_PASSES and _may_change(out):
        text, out, passes = out, _clean_once(out), passes + 1
    return out


def _title_once(text: str) -> str:
    if "&" in text:
        text = _unescape(text)
    if not text.isascii():
        text = strip_invisible(text)
    if "<" in text:
        text = neutralise(_TAG.sub(_tag_space, text))
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return _spaces(text)


def clean_title(text: str) -> str:
    """Clean a title: entities, tags, invisible and control characters, whitespace (no boilerplate rules)."""
    out, passes = _title_once(text), 1
    while out != text and passes < MAX_PASSES and _may_change(out):
        text, out, passes = out, _title_once(out), passes + 1
    return out


def cut_content(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters at the last sentence end, else the last space."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    end = max(head.rfind(". ", 0, limit), head.rfind("! ", 0, limit), head.rfind("? ", 0, limit))
    if end >= limit // 2:
        return head[: end + 1]
    space = head.rfind(" ", 0, limit + 1)
    return head[:space].rstrip() if space >= limit // 2 else text[:limit]


def norm_key(text: str) -> str:
    """A comparison key: case-folded words, accents, punctuation and spacing ignored."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
    return " ".join(_WORD.findall(text.casefold())).replace("_", " ")


def group_key(title: str) -> str:
    """The near-identity key of a cleaned title: bracketed parts, variant words, numbers and
    word order ignored.

    "Kids Dance Skirt Neon Green" and "Kids Dance Skirt Neon Yellow" share one key, so they
    land in the same split. Falls back to the title's ``norm_key`` when nothing is left.
    """
    key = norm_key(_BRACKETS.sub(" ", title)) if ("[" in title or "(" in title) else norm_key(title)
    return variant_free(key, title)


def variant_free(key: str, title: str) -> str:
    """``group_key`` from a title's ``norm_key`` (for callers that have it and no brackets)."""
    words = [w for w in set(key.split()) - VARIANT_WORDS if not w.isdigit()]
    return " ".join(sorted(words)) if words else norm_key(title)


def title_keys(titles: list[str]) -> tuple[list[str], list[str]]:
    """``norm_key`` and ``group_key`` of many cleaned titles at once (same results, cheaper).

    ASCII titles without brackets (most of them) go through Arrow compute kernels: on ASCII
    text, lowering equals ``casefold``, ``[^a-z0-9_]`` equals ``\\W``, ``[0-9]+`` equals
    ``str.isdigit`` and byte order equals Python's string order. Other titles use the
    per-title functions.
    """
    keys: list[str] = [""] * len(titles)
    groups: list[str] = [""] * len(titles)
    fast = []
    for i, t in enumerate(titles):
        if t.isascii() and "(" not in t and "[" not in t:
            fast.append(i)
        else:
            keys[i], groups[i] = norm_key(t), group_key(t)
    if fast:
        fk, fg = _ascii_keys([titles[i] for i in fast])
        for i, k, g in zip(fast, fk, fg):
            keys[i], groups[i] = k, g
    return keys, groups


_VARIANT_ARRAY = None


def _ascii_keys(titles: list[str]) -> tuple[list[str], list[str]]:
    """``title_keys`` of ASCII titles without brackets, vectorised with Arrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    global _VARIANT_ARRAY
    if _VARIANT_ARRAY is None:
        _VARIANT_ARRAY = pa.array(sorted(VARIANT_WORDS), pa.string())
    n = len(titles)
    k = pc.ascii_lower(pa.array(titles, pa.string()))
    k = pc.ascii_trim(pc.replace_substring_regex(k, pattern="[^a-z0-9_]+", replacement=" "), characters=" ")
    k = pc.replace_substring(k, pattern="_", replacement=" ")
    words = pc.split_pattern(k, pattern=" ")
    flat, parent = pc.list_flatten(words), pc.list_parent_indices(words)
    # variant words, numbers and the empty strings of repeated spaces are not group words
    keep = pc.invert(pc.or_(pc.is_in(flat, value_set=_VARIANT_ARRAY), pc.match_substring_regex(flat, "^[0-9]*$")))
    flat, parent = flat.filter(keep), parent.filter(keep)
    order = pc.sort_indices(pa.table({"p": parent, "w": flat}), sort_keys=[("p", "ascending"), ("w", "ascending")])
    p = parent.take(order).to_numpy(zero_copy_only=False)
    w = flat.take(order)
    first = np.ones(len(p), dtype=bool)  # drop repeated words of a title (a set in variant_free)
    if len(p) > 1:
        same_w = pc.equal(w.slice(1), w.slice(0, len(w) - 1)).to_numpy(zero_copy_only=False)
        first[1:] = (p[1:] != p[:-1]) | ~same_w
    p, w = p[first], w.filter(pa.array(first))
    counts = np.bincount(p, minlength=n) if len(p) else np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), w), " ")
    # nothing left: the group is the title's own key (variant_free's fallback)
    groups = pc.if_else(pa.array(counts == 0), k, joined)
    return k.to_pylist(), groups.to_pylist()


def is_placeholder(content_key: str) -> bool:
    """True when a normalised-lowercase content is a known placeholder, not a description."""
    return bool(_PLACEHOLDER_RE.match(content_key))


def is_title_echo(title_key: str, content_key: str) -> bool:
    """True when the content only repeats the title (possibly with a few extra characters)."""
    if not content_key:
        return True
    if content_key == title_key or content_key in title_key:
        return True
    if title_key and title_key in content_key:
        rest = content_key.replace(title_key, "")
        return sum(c.isalnum() for c in rest) < 10
    return False


def looks_english(text: str) -> bool:
    """A fast heuristic: mostly ASCII letters and, for longer texts, common English words."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return True
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    if ascii_share < 0.9:
        return False
    words = _WORD.findall(text[:2000].lower())
    if len(words) < 8:
        return True  # too short to judge; ASCII letters are enough
    hits = sum(w in _EN_STOP for w in words)
    return hits / len(words) >= 0.05


def hash64(text: str, seed: int = 0) -> int:
    """A stable signed 64-bit hash (blake2b), independent of PYTHONHASHSEED."""
    salt = (seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") if seed else b""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, salt=salt)
    return int.from_bytes(h.digest(), "little", signed=True)


def stable_id(title: str, content: str) -> str:
    """An id derived from the raw text, for records without a ``uid``."""
    h = hashlib.blake2b(f"{title}\x00{content}".encode("utf-8", "surrogatepass"), digest_size=8)
    return "h" + h.hexdigest()


def split_of(group: str, seed: int, val_fraction: float, test_fraction: float) -> int:
    """0 = train, 1 = val, 2 = test, from a seeded hash of the group key (order-independent).

    CRC-32 is enough here (only uniformity matters, not collisions) and is 5x cheaper.
    """
    u = zlib.crc32(group.encode("utf-8", "surrogatepass"), seed & 0xFFFFFFFF) / 4294967296.0
    if u < test_fraction:
        return 2
    if u < test_fraction + val_fraction:
        return 1
    return 0


def drop_reason(title: str, raw_content: str, content: str, min_content_chars: int,
                english_only: bool = False, title_key: str | None = None) -> str | None:
    """The first row-level rule a cleaned record breaks, or None when it may be kept.

    ``title`` and ``content`` are cleaned; ``raw_content`` tells "empty" from "placeholder";
    ``title_key`` is ``norm_key(title)`` when the caller has it. Duplicate rules need global
    state and are applied by the caller.
    """
    if not title:
        return EMPTY_TITLE
    if len(title) > MAX_TITLE_CHARS:
        return TITLE_TOO_LONG
    if not raw_content.strip():
        return EMPTY_CONTENT
    if not content or (len(content) < 120 and is_placeholder(content.lower())):
        return PLACEHOLDER
    if len(content) < min_content_chars:
        return TOO_SHORT
    # an echo is at most the title plus a few characters: longer content cannot be one
    if len(content) <= 2 * len(title) + 20:
        tkey = norm_key(title) if title_key is None else title_key
        if is_title_echo(tkey, norm_key(content)):
            return TITLE_ECHO
    if english_only and not looks_english(content):
        return NOT_ENGLISH
    return None
