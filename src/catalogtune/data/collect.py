"""The main-process side of prepare: deduplicate in file order, count, and write Parquet.

Workers return ``ChunkResult``s; a ``Collector`` consumes them strictly in input order, so
which copy of a duplicate is kept (the first) does not depend on the number of workers.
Deduplication state is one dict of 64-bit hashes (normalised title -> title+content), about
120 bytes per kept record.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from itertools import repeat
from pathlib import Path
from typing import Any, Callable

from catalogtune.data import clean, kinds
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

    def __init__(self, sink: Sink, limit: int | None = None, lengths: Any = None,
                 drop_kinds: tuple[str, ...] = ()) -> None:
        self.sink = sink
        # kind index -> drop reason code, for kinds dropped from the train split only
        self.drop_kinds = {kinds.KINDS.index(k): REASON_CODE[clean.KIND_REASONS[k]] for k in drop_kinds}
        self.kind_counts = [Counter() for _ in SPLITS]
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
        self.cleaned: Counter[str] = Counter()

    @property
    def full(self) -> bool:
        """True once ``limit`` items have been taken."""
        return self.limit is not None and self.items >= self.limit

    def add(self, res: ChunkResult) -> None:
        """Take one chunk's result (truncated at the limit), deduplicating its candidates."""
        n = len(res.status)
        k = n if self.limit is None else max(0, min(n, self.limit - self.items))
        status = res.status[:k]
        self._dedup(res, k, status)
        # kept records whose text cleaning changed in a way the report names
        for name, items in (("content_truncated", res.truncated), ("invisible_removed", res.invisible)):
            self.cleaned[name] += sum(1 for i in items if i < k and status[i] == CANDIDATE)
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

    def _dedup(self, res: ChunkResult, k: int, status: bytearray) -> None:
        """Keep the first candidate of each title key (in input order), mark the others.

        Vectorised: one C-level lookup per candidate (``map``) and numpy for the rest, rather
        than a Python loop; the result is that of checking candidates one by one in order.
        """
        import numpy as np

        m = bisect_left(res.cand_item, k)  # candidates among the first k items
        if m == 0:
            return
        ht = np.frombuffer(res.h_title, dtype=np.int64, count=m)
        hc = np.frombuffer(res.h_content, dtype=np.int64, count=m)
        seen = self.seen
        # content fingerprints are >= 0, so -1 means "title key not seen in earlier chunks"
        prev = np.fromiter(map(seen.get, ht.tolist(), repeat(-1, m)), dtype=np.int64, count=m)
        new = np.flatnonzero(prev == -1)
        first = new[np.unique(ht[new], return_index=True)[1]] if len(new) else new
        keep = np.zeros(m, dtype=bool)
        keep[first] = True
        seen.update(zip(ht[first].tolist(), hc[first].tolist()))
        dups = np.flatnonzero(~keep)
        if len(dups):
            kept_hc = np.fromiter(map(seen.__getitem__, ht[dups].tolist()), dtype=np.int64, count=len(dups))
            exact = kept_hc == hc[dups]
            items = np.frombuffer(res.cand_item, dtype=np.int32, count=m)[dups]
            for item, ex in zip(items.tolist(), exact.tolist()):
                status[item] = _DUP_EXACT if ex else _DUP_TITLE
        splits = np.frombuffer(res.split, dtype=np.uint8, count=m)
        # a result built without kinds (by hand, or by an older worker) counts as all "product"
        kind = np.frombuffer(res.kinds, dtype=np.uint8, count=m) if len(res.kinds) >= m else np.zeros(m, np.uint8)
        if self.drop_kinds:
            items = np.frombuffer(res.cand_item, dtype=np.int32, count=m)
            for code, reason in self.drop_kinds.items():
                drop = np.flatnonzero(keep & (splits == 0) & (kind == code))
                for item in items[drop].tolist():
                    status[item] = reason
                keep[drop] = False
        for split in range(len(SPLITS)):
            codes, counts = np.unique(kind[keep & (splits == split)], return_counts=True)
            for code, n in zip(codes.tolist(), counts.tolist()):
                self.kind_counts[split][kinds.KINDS[code]] += n
        for split in range(len(SPLITS)):
            rows = np.flatnonzero(keep & (splits == split))
            if len(rows):
                self.splits[split] += len(rows)
                self.sink(split, res.table.take(rows))

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
