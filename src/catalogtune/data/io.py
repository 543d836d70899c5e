"""Streaming readers for raw inputs, and the reader of prepared splits.

Raw inputs (JSON lines, plain or gzip; Parquet; CSV) are turned into bounded *chunks*: a
block of whole lines (``LineChunk``) or a batch of column values (``RowChunk``). Chunks are
small and independent, so worker processes can parse and clean them while memory stays flat.
A truncated or corrupt gzip stops that input where it broke; what was read is kept and the
break is recorded on the input's ``SourceInfo``.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from catalogtune.core.util import CatalogtuneError

SPLITS = ("train", "val", "test")
MAX_LINE_BYTES = 64 << 20
"""A line longer than this is skipped and counted (keeps memory bounded on a newline-free file)."""
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


@dataclasses.dataclass
class LineChunk:
    """Whole lines of a JSON-lines input; ``first_line`` is the 1-based number of the first."""

    source: int
    first_line: int
    data: bytes
    shm: tuple[str, int, int] | None = None
    """(shared memory name, offset, length) when the bytes wait there instead of in ``data``."""


@dataclasses.dataclass
class RowChunk:
    """Column values of a tabular input; ``first_row`` is the 1-based number of the first row."""

    source: int
    first_row: int
    uids: list[Any]
    titles: list[Any]
    contents: list[Any]


@dataclasses.dataclass
class SourceInfo:
    """What happened while reading one input."""

    path: str
    format: str = "jsonl"
    truncated: bool = False
    error: str | None = None
    malformed: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: list[dict] = dataclasses.field(default_factory=list)

    def bad(self, kind: str, line: int | None, detail: str, keep: int = 10) -> None:
        """Count one malformed line found by the reader itself (too long, bad CSV row)."""
        self.malformed[kind] = self.malformed.get(kind, 0) + 1
        if len(self.examples) < keep:
            self.examples.append({"file": self.path, "line": line, "kind": kind, "detail": detail[:200]})


def check_readable(path: Path) -> None:
    """Fail with one line when an input cannot be opened at all."""
    if not path.exists():
        raise CatalogtuneError(f"input not found: {path}")
    if path.is_dir():
        raise CatalogtuneError(f"input is a folder, not a file: {path}")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise CatalogtuneError(f"cannot read input {path}: {exc.strerror or exc}") from None


def detect_format(path: Path) -> str:
    """'jsonl', 'jsonl.gz', 'parquet' or 'csv', from the magic bytes and then the name."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    name = path.name.lower()
    if head[:4] == _PARQUET_MAGIC or name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if head[:2] == _GZIP_MAGIC:
        return "jsonl.gz"
    return "jsonl"


def _inflate(d: Any, data: bytes) -> list[bytes]:
    """Decompress ``data`` in pieces of at most 16 MiB output (bounded memory on a bomb)."""
    outs = []
    out = d.decompress(data, 16 << 20)
    while out:
        outs.append(out)
        out = d.decompress(d.unconsumed_tail, 16 << 20) if d.unconsumed_tail else b""
    return outs


def _gunzip(fh: Any, info: SourceInfo, read_size: int = 1 << 16) -> Iterator[bytes]:
    """Decompress a (multi-member) gzip stream; stop and record where it is cut or corrupt.

    On corrupt data the failing piece is replayed in small steps from a saved decompressor
    state, so everything before the damage is kept.
    """
    d = zlib.decompressobj(31)
    fed = False
    while True:
        buf = fh.read(read_size)
        if not buf:
            break
        while buf:
            fed = True
            saved = d.copy()
            try:
                outs = _inflate(d, buf)
            except zlib.error as exc:
                d = saved
                for k in range(0, len(buf), 256):
                    try:
                        outs = _inflate(d, buf[k:k + 256])
                    except zlib.error:
                        break
                    yield from outs
                    if d.eof:
                        break
                info.truncated, info.error = True, f"corrupt gzip data: {exc}"
                return
            yield from outs
            if d.eof:
                buf, d, fed = d.unused_data.lstrip(b"\x00"), zlib.decompressobj(31), False
            else:
                buf = b""
    if fed and not d.eof:
        tail = d.flush()
        if tail:
            yield tail
        info.truncated, info.error = True, "gzip stream ended early (truncated file)"


def _line_chunks(stream: Iterator[bytes], source: int, info: SourceInfo,
                 chunk_bytes: int) -> Iterator[LineChunk]:
    """Cut a byte stream into chunks of about ``chunk_bytes`` whole lines, keeping line numbers."""
    pending: list[bytes] = []
    size = 0
    line = 1
    skipping = False  # inside an over-long line: drop bytes until its newline
    for block in stream:
        if skipping:
            nl = block.find(b"\n")
            if nl < 0:
                continue
            block, skipping, line = block[nl + 1:], False, line + 1
        pending.append(block)
        size += len(block)
        if size < chunk_bytes:
            continue
        data = b"".join(pending)
        start = 0
        while len(data) - start >= chunk_bytes:
            cut = data.find(b"\n", start + chunk_bytes - 1)
            if cut < 0:
                cut = data.rfind(b"\n", start)  # emit the complete lines, keep the long one
                if cut < 0:
                    break
            chunk = data[start: cut + 1]
            yield LineChunk(source, line, chunk)
            line += chunk.count(b"\n")
            start = cut + 1
        rest = data[start:]
        if len(rest) > MAX_LINE_BYTES and b"\n" not in rest:
            info.bad("line_too_long", line, f"line longer than {MAX_LINE_BYTES} bytes")
            rest, skipping = b"", True
        pending, size = ([rest] if rest else []), len(rest)
    if pending and not skipping:
        yield LineChunk(source, line, b"".join(pending))


def _parquet_chunks(path: Path, source: int, info: SourceInfo, rows: int) -> Iterator[RowChunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise CatalogtuneError(f"cannot read Parquet input {path}: {str(exc).splitlines()[0]}") from None
    names = set(pf.schema_arrow.names)
    _require_columns(path, names)
    cols = [c for c in ("uid", "title", "content") if c in names]
    first = 1
    try:
        for batch in pf.iter_batches(batch_size=rows, columns=cols):
            d = batch.to_pydict()
            n = batch.num_rows
            yield RowChunk(source, first, d.get("uid", [None] * n), d["title"], d["content"])
            first += n
    except Exception as exc:
        info.truncated, info.error = True, f"Parquet read stopped at row {first}: {str(exc).splitlines()[0]}"


def _csv_chunks(path: Path, source: int, info: SourceInfo, block: int) -> Iterator[RowChunk]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    def on_bad(row: Any) -> str:
        info.bad("bad_csv_row", row.number, row.text or "")
        return "skip"

    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=block),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_bad),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in ("uid", "title", "content")},
                strings_can_be_null=False,
            ),
        )
    except Exception as exc:
        raise CatalogtuneError(f"cannot read CSV input {path}: {str(exc).splitlines()[0]}") from None
    names = set(reader.schema.names)
    _require_columns(path, names)
    first = 1
    try:
        for batch in reader:
            d = batch.select([c for c in ("uid", "title", "content") if c in names]).to_pydict()
            n = batch.num_rows
            yield RowChunk(source, first, d.get("uid", [None] * n), d["title"], d["content"])
            first += n
    except Exception as exc:
        info.truncated, info.error = True, f"CSV read stopped near row {first}: {str(exc).splitlines()[0]}"


def _require_columns(path: Path, names: set[str]) -> None:
    missing = [c for c in ("title", "content") if c not in names]
    if missing:
        raise CatalogtuneError(f"input {path} has no {' or '.join(missing)} column (found: {', '.join(sorted(names))})")


def iter_chunks(path: Path, source: int, info: SourceInfo, chunk_bytes: int = 4 << 20,
                chunk_rows: int = 5000) -> Iterator[LineChunk | RowChunk]:
    """Stream one input as chunks; reading problems are recorded on ``info``."""
    check_readable(path)
    fmt = info.format = detect_format(path)
    if fmt == "parquet":
        yield from _parquet_chunks(path, source, info, chunk_rows)
        return
    if fmt == "csv":
        yield from _csv_chunks(path, source, info, chunk_bytes)
        return
    with open(path, "rb") as fh:
        if fmt == "jsonl.gz":
            stream: Iterator[bytes] = _gunzip(fh, info)
        else:
            stream = iter(lambda: fh.read(1 << 20), b"")
        yield from _line_chunks(stream, source, info, chunk_bytes)


def prefetch(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Reading overlaps with the main loop: gzip inflation releases the GIL, and it is the
    largest serial cost of the main process after deduplication and writing.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    break
            else:
                put((end, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((end, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            x, exc = q.get()
            if x is end:
                if exc is not None:
                    raise exc
                return
            yield x
    finally:
        stop.set()
        thread.join()


def split_path(data_dir: str | Path, split: str) -> Path:
    """The Parquet file of one split."""
    if split not in SPLITS:
        raise CatalogtuneError(f"unknown split {split!r} (choose {', '.join(SPLITS)})")
    return Path(data_dir) / f"{split}.parquet"


def split_rows(data_dir: str | Path, split: str) -> int:
    """Rows in a prepared split (from the Parquet footer: nothing is read); 0 when it is missing."""
    import pyarrow.parquet as pq

    path = split_path(data_dir, split)
    try:
        return int(pq.ParquetFile(path).metadata.num_rows) if path.is_file() else 0
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
        raise CatalogtuneError(f"cannot read prepared split {path}: {str(exc).splitlines()[0]}") from None


def read_split_sample(data_dir: str | Path, split: str, n: int, seed: int = 0, rows: int = 65536) -> list[dict]:
    """A seeded sample of ``n`` records of a split, stratified by title length and inferred category
    (``categories.stratified_indices``), in file order, streamed in two passes: only each row's
    stratum and then the chosen rows are held, never the whole split."""
    import pyarrow.parquet as pq

    from catalogtune.data.categories import stratified_indices, stratum

    path = split_path(data_dir, split)
    if not path.is_file():
        raise CatalogtuneError(f"prepared split not found: {path} (run 'catalogtune prepare' first)")
    try:
        pf = pq.ParquetFile(path)
        codes: dict[tuple[str, str], int] = {}
        strata = bytearray()  # one byte a row: 3 title buckets x 6 categories
        for batch in pf.iter_batches(batch_size=rows, columns=["title", "content"]):
            for title, content in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                strata.append(codes.setdefault(stratum(str(title or ""), str(content or "")), len(codes)))
        names = sorted(codes, key=codes.get)
        chosen = stratified_indices([names[c] for c in strata], n, seed)
        out: list[dict] = []
        want, start = iter(chosen), 0
        nxt = next(want, None)
        for batch in pf.iter_batches(batch_size=rows, columns=["id", "title", "content"]):
            end = start + batch.num_rows
            take = []
            while nxt is not None and nxt < end:
                take.append(nxt - start)
                nxt = next(want, None)
            if take:
                out.extend(batch.take(take).to_pylist())
            start = end
            if nxt is None:
                break
    except CatalogtuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
        raise CatalogtuneError(f"cannot read prepared split {path}: {str(exc).splitlines()[0]}") from None
    if not out:
        raise CatalogtuneError(f"prepared split is empty: {path}")
    return out


def read_split(data_dir: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """Records ``{"id", "title", "content"}`` of a prepared split, in file order.

    A missing, unreadable or empty split is a one-line error naming the file.
    """
    import pyarrow.parquet as pq

    path = split_path(data_dir, split)
    if not path.is_file():
        raise CatalogtuneError(f"prepared split not found: {path} (run 'catalogtune prepare' first)")
    if limit is not None and limit <= 0:
        raise CatalogtuneError(f"limit must be positive, got {limit}")
    try:
        pf = pq.ParquetFile(path)
        out: list[dict] = []
        for batch in pf.iter_batches(batch_size=min(limit or 65536, 65536), columns=["id", "title", "content"]):
            out.extend(batch.to_pylist())
            if limit is not None and len(out) >= limit:
                del out[limit:]
                break
    except Exception as exc:
        raise CatalogtuneError(f"cannot read prepared split {path}: {str(exc).splitlines()[0]}") from None
    if not out:
        raise CatalogtuneError(f"prepared split is empty: {path}")
    return out
