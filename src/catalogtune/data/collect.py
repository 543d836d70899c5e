"""The main-process side of prepare: deduplicate in file order, count, and write Parquet.

Workers return ``ChunkResult``s; a ``Collector`` consumes them strictly in input order, so
which copy of a duplicate is kept (the first) does not depend on the number of workers.
Deduplication state is one dict of 64-bit hashes (normalised title -> title+content), about
120 bytes per kept record.
"""

from __future__ import annotations

from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from catalogtune.data import clean
from catalogtune.data.io import SPLITS
from catalogtune.data.records import CANDIDATE, MALFORMED, MALFORMED_CODE, REASON_CODE, ChunkResult

_DUP_EXACT = REASON_CODE[clean.DUPLICATE_EXACT]
_DUP_TITLE = REASON_CODE[clean.DUPLICATE_TITLE]
_NAME: list[str | None] = [None] * 256
for _r, _c in REASON_CODE.items():
    _NAME[_c] = _r
for _k, _c in MALFORMED_CODE.items():
    _NAME[_c] = _k
_REASON_NAMES = [_NAME[c] for c in range(1, len(REASON_CODE) + 1)]

Sink = Callable[[int, Any], None]
"""Receives (split, Arrow table with id/title/content) of kept records, in input order."""


class Collector:
    """Counts, deduplicates and forwards kept records; stops at ``limit`` items if given."""

    def __init__(self, sink: Sink, limit: int | None = None, lengths: Any = None) -> None:
        self.sink = sink
        self.limit = limit
        self.lengths = lengths  # a RawLengthsWriter, or None
        self.seen: dict[int, int] = {}
        self.items = 0
        self.blank = 0
        self.codes: Counter[int] = Counter()
        self.per_source: Counter[int] = Counter()
        self.examples: list[dict] = []
        self.bad_utf8 = 0
        self.bad_utf8_lines: list[dict] = []
        self.splits = [0, 0, 0]
        self.paths: list[str] = []

    @property
    def full(self) -> bool:
        """True once ``limit`` items have been taken."""
        return self.limit is not None and self.items >= self.limit

    def add(self, res: ChunkResult) -> None:
        """Take one chunk's result (truncated at the limit), deduplicating its candidates."""
        n = len(res.status)
        k = n if self.limit is None else max(0, min(n, self.limit - self.items))
        status = res.status[:k]
        take: list[list[int]] = [[], [], []]
        seen = self.seen
        h_title, h_content, splits = res.h_title, res.h_content, res.split
        for j, item in enumerate(res.cand_item):
            if item >= k:
                break
            ht = h_title[j]
            prev = seen.get(ht)
            if prev is None:
                seen[ht] = h_content[j]
                take[splits[j]].append(j)
            else:
                status[item] = _DUP_EXACT if prev == h_content[j] else _DUP_TITLE
        for split, rows in enumerate(take):
            if rows:
                self.splits[split] += len(rows)
                self.sink(split, res.table.take(rows))
        for code in set(status):
            self.codes[code] += status.count(code)
        self.items += k
        self.per_source[res.source] += k
        if k == n:
            self.blank += res.blank
        path = self.paths[res.source] if res.source < len(self.paths) else str(res.source)
        for item, line, kind, detail in res.examples:
            if item < k and len(self.examples) < 10:
                self.examples.append({"file": path, "line": line, "kind": kind, "detail": detail})
        for item, line in res.bad_utf8:
            if item < k:
                self.bad_utf8 += 1
                if len(self.bad_utf8_lines) < 10:
                    self.bad_utf8_lines.append({"file": path, "line": line})
        if self.lengths is not None:
            self.lengths.add(res.title_chars[:k], res.content_chars[:k], status)

    @property
    def kept(self) -> int:
        """Records kept after every rule."""
        return sum(self.splits)

    def dropped(self) -> dict[str, int]:
        """Parsed records dropped, per rule (every rule listed, zeros included)."""
        return {r: self.codes.get(c, 0) for r, c in REASON_CODE.items()}

    def malformed(self) -> dict[str, int]:
        """Items that could not be read as a record, per kind."""
        return {k: self.codes.get(c, 0) for k, c in MALFORMED_CODE.items()}

    def check(self) -> None:
        """Every item is accounted for exactly once (kept, dropped or malformed)."""
        total = self.kept + sum(self.dropped().values()) + sum(self.malformed().values())
        assert total == self.items, (total, self.items)
        assert self.codes.get(CANDIDATE, 0) == self.kept


class SplitWriters:
    """One ``ParquetWriter`` per split (string columns id, title, content), in row groups."""

    def __init__(self, folder: Path, row_group_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from catalogtune.data.records import SCHEMA

        self.pa = pa
        self.schema = SCHEMA
        self.writers = [pq.ParquetWriter(folder / f"{s}.parquet", SCHEMA) for s in SPLITS]
        self.rows = row_group_rows
        self.buf: list[list[Any]] = [[] for _ in SPLITS]
        self.buffered = [0 for _ in SPLITS]

    def __call__(self, split: int, table: Any) -> None:
        """Buffer kept records of one split; write a row group when the buffer is full."""
        self.buf[split].append(table)
        self.buffered[split] += table.num_rows
        if self.buffered[split] >= self.rows:
            self._flush(split)

    def _flush(self, split: int) -> None:
        if self.buf[split]:
            table = self.pa.concat_tables(self.buf[split])
            self.writers[split].write_table(table, row_group_size=max(self.rows, table.num_rows))
        self.buf[split], self.buffered[split] = [], 0

    def close(self) -> None:
        """Write what is buffered and close the files (an empty split still gets a schema)."""
        for split in range(len(SPLITS)):
            self._flush(split)
            self.writers[split].close()


class RawLengthsWriter:
    """``raw_lengths.parquet``: raw title/content lengths and drop reason of parsed records."""

    def __init__(self, path: Path, rows: int = 1 << 18) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = pa.schema(
            [("title_chars", pa.int32()), ("content_chars", pa.int32()), ("drop_reason", pa.string())]
        )
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows = rows
        self.t: list = []
        self.c: list = []
        self.r: list = []
        self.n = 0

    def add(self, title_chars: array, content_chars: array, status: bytearray) -> None:
        """Append the parsed items of a chunk (malformed ones have no lengths and are skipped)."""
        import numpy as np

        codes = np.frombuffer(bytes(status), dtype=np.uint8)
        parsed = codes < 100
        self.t.append(np.frombuffer(title_chars, dtype=np.int32)[parsed])
        self.c.append(np.frombuffer(content_chars, dtype=np.int32)[parsed])
        self.r.append(codes[parsed])
        self.n += int(parsed.sum())
        if self.n >= self.rows:
            self._flush()

    def _flush(self) -> None:
        if self.n:
            import numpy as np

            pa = self.pa
            codes = np.concatenate(self.r)
            # code 0 (kept) -> null; codes 1.. index the reason names
            reasons = pa.DictionaryArray.from_arrays(
                pa.array(codes.astype(np.int16) - 1, mask=codes == 0), pa.array(_REASON_NAMES, pa.string())
            ).dictionary_decode()
            cols = [pa.array(np.concatenate(self.t)), pa.array(np.concatenate(self.c)), reasons]
            self.writer.write_table(pa.Table.from_arrays(cols, schema=self.schema))
        self.t, self.c, self.r, self.n = [], [], [], 0

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self._flush()
        self.writer.close()


__all__ = ["Collector", "SplitWriters", "RawLengthsWriter", "MALFORMED"]
