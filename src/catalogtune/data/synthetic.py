"""A synthetic ``trn.json.gz`` in the real format, for benchmarks (never used for training).

Records are real ones resampled and perturbed: titles get extra words and numbers (so most are
unique, as in the real file), descriptions are real ones with inserted words, some dirt
(entities, tags, glued boilerplate) and the real share of empty descriptions (~38%), exact
duplicates and same-title duplicates. Lines are assembled from pre-encoded pieces, so 2.25M
records take well under a minute plus compression (done by ``gzip -1`` in a parallel process
where available).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import IO, Iterator

import orjson

from catalogtune.core.util import CatalogtuneError, atomic_write, shared_sample

EMPTY_SHARE = 0.38
"""About 858k of the 2.25M real training records have an empty description."""
DIRT = ("&nbsp;", " &amp; ", "<br>", "<b>new</b> ", "&#8217;s", "--This text refers to thePaperbackedition.",
        "Copyright 1991 Reed Business Information, Inc.", "  \t ")
_FALLBACK = [
    {"title": "Kids Dance Skirt Neon Green", "content": "Soft two layer dance skirt for girls. 14 inches in length"},
    {"title": "Pip's Puppies", "content": "Anna Lee&#8217;s best&#8211;loved adventures of that dog Pip."},
]


def _base_records(source: Path | None) -> list[dict]:
    path = source or shared_sample()
    if path is None:
        return list(_FALLBACK)
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and isinstance(rec.get("title"), str) and isinstance(rec.get("content"), str):
                    out.append({"title": rec["title"], "content": rec["content"]})
    if not out:
        raise CatalogtuneError(f"no usable records in {path} to base synthetic data on")
    return out


def _content_pool(base: list[dict], vocab: list[str], rng: random.Random, size: int) -> list[bytes]:
    """Pre-encoded description variants: a real description, perturbed and sometimes dirtied."""
    pool = []
    texts = [r["content"] for r in base if r["content"]]
    for _ in range(size):
        text = rng.choice(texts)
        cut = rng.randrange(len(text) + 1)
        text = f"{text[:cut]} {rng.choice(vocab)} {text[cut:]}"
        if rng.random() < 0.15:
            text = f"{text}{rng.choice(DIRT)}"
        pool.append(orjson.dumps(text))
    return pool


def _targets_pool(rng: random.Random, size: int = 512) -> list[bytes]:
    out = []
    for _ in range(size):
        k = rng.randint(1, 50)
        ind = sorted(rng.sample(range(1_300_000), k))
        out.append(b'"target_ind":' + orjson.dumps(ind) + b',"target_rel":' + orjson.dumps([1.0] * k))
    return out


def iter_lines(n: int, seed: int = 0, source: Path | None = None) -> Iterator[bytes]:
    """``n`` synthetic JSON lines (bytes, newline-terminated) in the trn.json format."""
    rng = random.Random(seed)
    base = _base_records(source)
    vocab = sorted({w for r in base for w in r["title"].split() if w.isalpha() and len(w) > 2}) or ["Item"]
    contents = _content_pool(base, vocab, rng, min(20000, max(100, n // 10)))
    targets = _targets_pool(rng)
    titles = [r["title"] for r in base]
    recent: list[bytes] = []
    for i in range(n):
        u = rng.random()
        if u < 0.005 and recent:  # exact duplicate line of a recent record
            yield rng.choice(recent)
            continue
        base_title = rng.choice(titles)
        title = f"{base_title} {rng.choice(vocab)} {rng.choice(vocab)} {rng.randrange(1000)}"
        if u < 0.01 and recent:  # same title as a recent record, other description
            title = orjson.loads(rng.choice(recent))["title"]
        v = rng.random()
        if v < EMPTY_SHARE:
            content = b'""'
        elif v < EMPTY_SHARE + 0.003:
            content = orjson.dumps(base_title)  # a description that only repeats the title
        else:
            content = rng.choice(contents)
        line = (b'{"uid":"S%09d","title":' % i + orjson.dumps(title) + b',"content":' + content
                + b"," + rng.choice(targets) + b"}\n")
        if len(recent) < 64:
            recent.append(line)
        elif rng.random() < 0.01:
            recent[rng.randrange(64)] = line
        yield line


@contextlib.contextmanager
def _gzip_sink(path: Path) -> Iterator[IO[bytes]]:
    """A gzip writer: the gzip program in a parallel process if present, else zlib here."""
    exe = shutil.which("gzip")
    with atomic_write(path, "wb") as fh:
        if exe is None:
            with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1) as gz:
                yield gz
            return
        proc = subprocess.Popen([exe, "-1", "-c"], stdin=subprocess.PIPE, stdout=fh)
        try:
            yield proc.stdin  # type: ignore[misc]
        finally:
            proc.stdin.close()  # type: ignore[union-attr]
            if proc.wait() != 0:
                raise CatalogtuneError(f"gzip failed while writing {path}")


def generate(path: str | Path, n: int, seed: int = 0, source: Path | None = None) -> Path:
    """Write ``n`` synthetic records to ``path`` (gzip when it ends in .gz), atomically."""
    if n <= 0:
        raise CatalogtuneError(f"the number of records must be positive, got {n}")
    path = Path(path)
    ctx = _gzip_sink(path) if path.suffix == ".gz" else atomic_write(path, "wb")
    with ctx as out:
        batch: list[bytes] = []
        for line in iter_lines(n, seed, source):
            batch.append(line)
            if len(batch) >= 4096:
                out.write(b"".join(batch))
                batch = []
        out.write(b"".join(batch))
    return path
