"""Per-chunk work (runs in worker processes): parse, validate, clean and classify records.

Each input item (a non-blank line or a table row) gets one status code. Parsed records keep
their raw lengths; records that pass every row-level rule become *candidates* with the hashes
the main process needs for deduplication and the split decided from their group key.
"""

from __future__ import annotations

import dataclasses
from array import array
from typing import Any, Iterator

import orjson
import pyarrow as pa
from zlib import crc32

from catalogtune.data import clean, kinds
from catalogtune.data.clean import (MAX_CONTENT_CHARS, MAX_TITLE_CHARS, clean_text, clean_title, cut_content,
                                    drop_reason, has_invisible, hash64, split_of, title_keys)
from catalogtune.data.io import LineChunk, RowChunk

CANDIDATE = 0
REASON_CODE = {r: i + 1 for i, r in enumerate(clean.REASONS)}
_EMPTY_TITLE = REASON_CODE[clean.EMPTY_TITLE]
_EMPTY_CONTENT = REASON_CODE[clean.EMPTY_CONTENT]
_TITLE_TOO_LONG = REASON_CODE[clean.TITLE_TOO_LONG]
_RAW_CONTENT_CAP = 4 * MAX_CONTENT_CHARS
"""Raw description characters cleaned at most: enough for MAX_CONTENT_CHARS after cleaning, and a
20 MB description costs milliseconds, not seconds."""
MALFORMED = ("invalid_json", "not_object", "missing_field", "wrong_type")
MALFORMED_CODE = {k: 100 + i for i, k in enumerate(MALFORMED)}
EXAMPLES_PER_CHUNK = 10
_KIND_CODE = {k: i for i, k in enumerate(kinds.KINDS)}


@dataclasses.dataclass(frozen=True)
class RuleOptions:
    """The row-level settings a worker needs (small: sent with every chunk)."""

    seed: int
    val_fraction: float
    test_fraction: float
    min_content_chars: int
    english_only: bool


@dataclasses.dataclass
class ChunkResult:
    """Everything the main process needs from one chunk, in item order."""

    source: int
    blank: int = 0
    status: bytearray = dataclasses.field(default_factory=bytearray)
    """One code per item: CANDIDATE, a drop reason (1..) or a malformed kind (100..)."""
    title_chars: array = dataclasses.field(default_factory=lambda: array("i"))
    content_chars: array = dataclasses.field(default_factory=lambda: array("i"))
    """Raw lengths per item (-1 for malformed items)."""
    examples: list[tuple[int, int, str, str]] = dataclasses.field(default_factory=list)
    """(item index, line number, kind, detail) of the first malformed items."""
    bad_utf8: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """(item index, line number) of lines with invalid UTF-8 (decoded with replacement)."""
    cand_item: array = dataclasses.field(default_factory=lambda: array("i"))
    ids: list[str] = dataclasses.field(default_factory=list)
    titles: list[str] = dataclasses.field(default_factory=list)
    contents: list[str] = dataclasses.field(default_factory=list)
    h_title: array = dataclasses.field(default_factory=lambda: array("q"))
    """Stable hash of the normalised title (the dedup key)."""
    h_content: array = dataclasses.field(default_factory=lambda: array("q"))
    """Cheap fingerprint of the cleaned description (tells exact from same-title duplicates)."""
    table: Any = None
    """The candidates as an Arrow table (id, title, content): sent as buffers, not Python strings."""
    split: bytearray = dataclasses.field(default_factory=bytearray)
    kinds: bytearray = dataclasses.field(default_factory=bytearray)
    """Per candidate: the index of its description kind in ``data.kinds.KINDS``."""
    truncated: array = dataclasses.field(default_factory=lambda: array("i"))
    """Items whose description was cut to ``clean.MAX_CONTENT_CHARS``."""
    invisible: array = dataclasses.field(default_factory=lambda: array("i"))
    """Items whose title or description held bidi or other invisible characters (removed)."""

    def malformed(self, item: int, line: int, kind: str, detail: str) -> None:
        """Record one malformed item."""
        self.status.append(MALFORMED_CODE[kind])
        self.title_chars.append(-1)
        self.content_chars.append(-1)
        if len(self.examples) < EXAMPLES_PER_CHUNK:
            self.examples.append((item, line, kind, detail[:200]))


def _record_id(uid: Any, title: str, content: str) -> str:
    if isinstance(uid, str) and uid.strip():
        return uid.strip()
    if isinstance(uid, int) and not isinstance(uid, bool):
        return str(uid)
    return clean.stable_id(title, content)


def _bad_fields(res: ChunkResult, item: int, line: int, title: Any, content: Any) -> tuple[Any, Any]:
    """Count a record whose title/content are missing or not text; str subclasses pass as str."""
    if title is None or content is None:
        res.malformed(item, line, "missing_field", "title or content missing or null")
    elif not isinstance(title, str) or not isinstance(content, str):
        bad = "title" if not isinstance(title, str) else "content"
        got = type(title if bad == "title" else content).__name__
        res.malformed(item, line, "wrong_type", f"{bad} is {got}, expected a string")
    else:
        return str(title), str(content)
    return None, None


def _classify_all(res: ChunkResult, records: Any, opts: RuleOptions) -> None:
    """Validate, clean and classify ``(item, line, uid, title, content)`` records.

    One loop with local names: this is the hot path (about 2.25M iterations for trn.json).
    """
    status, tchars, cchars = res.status.append, res.title_chars.append, res.content_chars.append
    cand, ids, titles, contents = res.cand_item.append, res.ids.append, res.titles.append, res.contents.append
    h_content = res.h_content.append
    min_chars, english = opts.min_content_chars, opts.english_only
    seed, val, test = opts.seed, opts.val_fraction, opts.test_fraction
    for item, line, uid, title, content in records:
        if type(title) is not str or type(content) is not str:
            title, content = _bad_fields(res, item, line, title, content)
            if title is None:
                continue
        tchars(len(title))
        cchars(len(content))
        t = clean_title(title)
        if not t:
            status(_EMPTY_TITLE)
            continue
        if len(t) > MAX_TITLE_CHARS:
            status(_TITLE_TOO_LONG)
            continue
        if not content or content.isspace():  # 38% of the real file: skip the costly steps
            status(_EMPTY_CONTENT)
            continue
        if has_invisible(title) or has_invisible(content):
            res.invisible.append(item)
        c = clean_text(content if len(content) <= _RAW_CONTENT_CAP else content[:_RAW_CONTENT_CAP])
        if len(c) > MAX_CONTENT_CHARS or len(content) > _RAW_CONTENT_CAP:
            # a raw cut may have split the last word: then cut before it as well
            c = cut_content(c, min(MAX_CONTENT_CHARS, max(1, len(c) - 1)))
            res.truncated.append(item)
        # the title key is only needed for short content (echo check); candidates get theirs
        # in one vectorised pass below
        reason = drop_reason(t, content, c, min_chars, english)
        if reason is not None:
            status(REASON_CODE[reason])
            continue
        status(CANDIDATE)
        cand(item)
        ids(uid.strip() if type(uid) is str and uid.strip() else _record_id(uid, title, content))
        titles(t)
        contents(c)
        h_content((crc32(c.encode("utf-8", "surrogatepass")) << 31) ^ len(c))
    res.kinds.extend(_kind_codes(res.contents))
    keys, groups = title_keys(res.titles)
    # a title of punctuation only has an empty key: compare it as written
    res.h_title.extend([hash64(k or t) for k, t in zip(keys, res.titles)])
    res.split.extend([split_of(g, seed, val, test) for g in groups])


def _kind_codes(contents: list[str]) -> Iterator[int]:
    """``_KIND_CODE[kinds.content_kind(c)]`` for each description, each distinct one classified once.

    Classifying is most of a chunk's work, and a chunk repeats descriptions (variants of one product
    are neighbours in the real file: the shared samples, two runs of it, hold 378 distinct of 400 and
    309 of 396).
    """
    codes: dict[str, int] = {}
    for c in contents:
        code = codes.get(c)
        if code is None:
            code = codes[c] = _KIND_CODE[kinds.content_kind(c)]
        yield code


_LABELS = b',"target_ind":'


def _loads_head(raw: bytes) -> Any:
    """Parse a line, skipping the label arrays of the trn.json format (a third of the bytes).

    The cut is safe: inside a JSON string a quote is escaped, so ``,"target_ind":`` can only
    be a key of the top-level object. The line must still end like a whole object, so a
    line cut short (truncated file) is not mistaken for a complete one.
    """
    i = raw.find(_LABELS)
    if i > 0 and raw.rstrip().endswith(b"]}"):
        try:
            head = orjson.loads(raw[:i] + b"}")
        except orjson.JSONDecodeError:
            head = None
        # fields after the labels (another key order): parse the whole line
        if isinstance(head, dict) and "title" in head and "content" in head:
            return head
    return orjson.loads(raw)


def _parsed(res: ChunkResult, chunk: LineChunk) -> Iterator[tuple[int, int, Any, Any, Any]]:
    """(item, line, uid, title, content) of each parsed line; bad lines are recorded on ``res``."""
    item = 0
    lines = chunk.data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the empty string after the final newline is not a line
    for offset, raw in enumerate(lines):
        if not raw.strip():
            res.blank += 1
            continue
        try:
            obj = _loads_head(raw)
        except orjson.JSONDecodeError as exc:
            obj = _repair(res, item, chunk.first_line + offset, raw, exc)
            if obj is None:
                item += 1
                continue
        if type(obj) is dict:
            yield item, chunk.first_line + offset, obj.get("uid"), obj.get("title"), obj.get("content")
        else:
            res.malformed(item, chunk.first_line + offset, "not_object",
                          f"a JSON {type(obj).__name__}, expected an object")
        item += 1


def _repair(res: ChunkResult, item: int, line: int, raw: bytes, exc: Exception) -> Any:
    """A line that orjson refused: decode invalid UTF-8 with replacement, else count it."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        res.bad_utf8.append((item, line))
        try:
            return orjson.loads(raw.decode("utf-8", "replace"))
        except orjson.JSONDecodeError as exc2:
            exc = exc2
    res.malformed(item, line, "invalid_json", str(exc))
    return None


def _lines(chunk: LineChunk, opts: RuleOptions) -> ChunkResult:
    res = ChunkResult(chunk.source)
    _classify_all(res, _parsed(res, chunk), opts)
    return res


def _rows(chunk: RowChunk, opts: RuleOptions) -> ChunkResult:
    res = ChunkResult(chunk.source)
    first = chunk.first_row
    rows = zip(range(len(chunk.titles)), chunk.uids, chunk.titles, chunk.contents)
    _classify_all(res, ((i, first + i, u, t, c) for i, u, t, c in rows), opts)
    return res


SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("content", pa.string())])
_ATTACHED: dict[str, Any] = {}


def _shm_bytes(name: str, offset: int, length: int) -> bytes:
    """A chunk's bytes from the main process's shared memory (attached once per worker)."""
    shm = _ATTACHED.get(name)
    if shm is None:
        from multiprocessing import shared_memory

        shm = _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    return bytes(shm.buf[offset: offset + length])


def die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the main process dies, kill -9 included.

    A worker blocked on its queue never notices a dead parent, and it also holds the resource
    tracker's pipe open: both would live on, re-parented to PID 1. Linux kills the worker
    (PR_SET_PDEATHSIG); elsewhere a thread polls the parent pid.
    """
    import os
    import signal
    import sys
    import threading
    import time

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="catalogtune-parent-watch").start()


def process_chunk(chunk: LineChunk | RowChunk, opts: RuleOptions) -> ChunkResult:
    """Parse and classify every item of a chunk (the unit of work of a worker process).

    The candidates' text goes back as one Arrow table: the main process then moves buffers
    instead of creating and pickling millions of Python strings.
    """
    if isinstance(chunk, LineChunk) and chunk.shm is not None:
        chunk = LineChunk(chunk.source, chunk.first_line, _shm_bytes(*chunk.shm))
    res = _lines(chunk, opts) if isinstance(chunk, LineChunk) else _rows(chunk, opts)
    res.table = pa.Table.from_arrays(
        [pa.array(res.ids, pa.string()), pa.array(res.titles, pa.string()), pa.array(res.contents, pa.string())],
        schema=SCHEMA,
    )
    res.ids, res.titles, res.contents = [], [], []
    return res
