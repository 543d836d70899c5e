"""The RAG reference index: the training split in a persistent ChromaDB collection.

``run(IndexConfig(data=DIR, out=INDEX_DIR))`` embeds "title. content[:1000]" of every training
record (our own embeddings: Chroma's default embedding function downloads a model) and upserts
them by id, so a re-run after an interruption adds only what is missing. ``INDEX_DIR/index.json``
records the embedder, the data fingerprint and the HNSW settings; an index built from other data
or with another embedder is refused, never mixed. ``Index.open(INDEX_DIR).query(titles, k)``
returns the nearest records with their cosine similarity.

A folder index can also be served by a Chroma server (``chroma run --path INDEX_DIR --host
127.0.0.1 --port 8001``) and opened by address: ``Index.open("http://127.0.0.1:8001")`` (or
``http://HOST:PORT/COLLECTION``; the default collection is "catalog"). With no folder to read,
the manifest comes from the collection's metadata, where every build stores a copy of
index.json. Builds write folders only (their lock and resume logic are folder-based).

The split is streamed twice in Parquet batches (once to validate and fingerprint it, once to
embed and store it), so memory holds one chunk of records, the set of ids and Chroma's HNSW
graph, never the split itself. Before the build commits, one stderr line ("index plan: ...")
gives the records, a timed embedding and storing probe, the projected wall time and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from catalogtune.core import config
from catalogtune.rag.embed import Embedder, HashEmbedder, MiniLMEmbedder, get_embedder
from catalogtune.core.prompt import clean_title
from catalogtune.core.locks import folder_lock
from catalogtune.core.util import CatalogtuneError, atomic_write_json, budget_seconds, peak_rss_mb, read_json, require

MANIFEST = "index.json"
FORMAT = 1
EMBED_CONTENT_CHARS = 1000
"""Characters of the description embedded after the title: MiniLM reads at most 256 word
pieces (about 1000 characters of English), so more would only cost tokenisation time."""
TEXT_RECIPES = {"title+content": f"title. content[:{EMBED_CONTENT_CHARS}]", "title": "title"}
"""``index --text`` choices and the recipe each writes in the manifest (an index is extended and
queried only with its own recipe). On the shared records' validation titles (n = 69) the nearest
record by title + content had a description closer to the real one (MiniLM cosine 0.401) than by
title only (0.357; -0.044 [-0.092, +0.003]); embedding titles only is about 10x faster."""
DEFAULT_TEXT = "title+content"
"""The default ``--text`` choice."""
TEXT_RECIPE = TEXT_RECIPES[DEFAULT_TEXT]

STORE_TITLE_CHARS = 1000
"""Titles are stored up to this length (the longest real title has 1,999 characters)."""
STORE_CONTENT_CHARS = 2000
"""Descriptions are stored up to this length: prompts use at most 400 characters of each."""
MAX_QUERY_CHARS = 1000
"""Longer queries are cut (a 10,000-character query is bounded, not refused)."""
MAX_K = 100
"""Most results one query may ask for."""
QUERY_BATCH = 256
"""Queries embedded and searched per Chroma call."""
READ_ROWS = 8192
"""Parquet rows read per batch while streaming the split."""
PROBE_RECORDS = 32
"""Records embedded and stored by the plan's timed probe (they stay in the index)."""
HNSW_OVERHEAD_BYTES = 1100
"""Per-record memory of Chroma besides the vector (HNSW links, labels, id maps, SQLite cache); the
plan's peak-memory figure adds ``dim * 4`` bytes and this for every record (fitted to a measured
peak RSS of 790 MB for 200k records of dim 384 with the hash embedder)."""

STORE_RATE_100K = 400.0
"""Records per second Chroma stored at 100k records on one core (bench index): the budget's
storing cost when the probe stored nothing to time."""

CONTENT_KEY = "content"
"""Metadata key of a stored record's description (beside "title")."""
META_MANIFEST = "catalogtune_manifest"
"""Collection metadata key holding the manifest as JSON (what a server route reads)."""
SERVER_TIMEOUT_S = 5.0
"""Seconds to wait for a Chroma server to answer its heartbeat (a dead address fails fast)."""
SERVER_QUERY_TIMEOUT_S = 120.0
"""Seconds one request to a Chroma server may take once connected."""
DEFAULT_COLLECTION = "catalog"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Tokenizers turn these strings into real special tokens, so a stored "<|im_end|>" could close
# the chat turn of a RAG prompt; stored text keeps the word but loses the token syntax.
_SPECIAL = re.compile(r"<\|([^|<>]{0,40})\|>|<(/?(?:start_of_turn|end_of_turn|bos|eos|pad|unk|s))>")


@dataclass
class IndexConfig:
    """Options of `catalogtune index`."""

    data: Path
    """Prepared data folder (its train split is indexed)."""
    out: Path
    """Index folder (ChromaDB files and index.json)."""
    text: str = DEFAULT_TEXT
    """What is embedded for each record: title+content (the title and the start of the
    description; the better references) or title (about 10x faster to embed: for a catalogue too
    large for the time at hand; the stored documents are the same)."""
    embedder: str = "minilm-onnx"
    """Embedding model: minilm-onnx (all-MiniLM-L6-v2 on ONNX Runtime, the fastest at full quality),
    minilm (the same model on sentence-transformers/torch; interchangeable vectors),
    minilm-onnx-int8 (int8 weights: about 2x faster, recall@10 of minilm's neighbours about 0.9;
    its own vector space, so its indexes take only its queries) or hash (deterministic fake for tests)."""
    batch_size: int | None = None
    """Texts per embedding forward pass (None = the embedder's fastest: 4 for minilm-onnx,
    32 within 256 padded tokens for minilm-onnx-int8, 128 for minilm)."""
    collection: str = DEFAULT_COLLECTION
    """ChromaDB collection name."""
    chunk: int = 2048
    """Records embedded and upserted per step (a kill loses at most one step)."""
    hnsw_m: int = 16
    """HNSW max_neighbors (M): links per node; more = better recall, more memory."""
    hnsw_ef_construction: int = 128
    """HNSW ef_construction: candidate list while building; more = better graph, slower build."""
    hnsw_ef_search: int = 64
    """HNSW ef_search: candidate list per query; more = better recall, slower queries."""
    limit: int | None = None
    """Index only the first N training records (None = all)."""
    budget: str | None = None
    """Wall-time budget of the build (20m, 2h): when the plan's timed probe projects more, only the
    first training records that fit are indexed, and the plan line says how many of how many. The
    number is kept in index.json, so a re-run with the same budget resumes the same build."""
    rebuild: bool = False
    """Replace an existing index built from other data or another embedder."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if (self.batch_size is not None and self.batch_size < 1) or self.chunk < 1:
            raise ValueError("batch_size and chunk must be at least 1")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", self.collection):
            raise ValueError("collection must be 3-512 characters of [A-Za-z0-9._-]")
        if self.hnsw_m < 2 or self.hnsw_ef_construction < 1 or self.hnsw_ef_search < 1:
            raise ValueError("hnsw_m must be >= 2 and the ef values >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.budget is not None:
            budget_seconds(self.budget)
        text_recipe(self.text)


@dataclass
class IndexResult:
    """What `run` did."""

    added: int
    """Records embedded and stored by this run."""
    skipped: int
    """Records already in the index (an earlier, possibly interrupted, run stored them)."""
    total: int
    """Records in the index now."""
    seconds: float
    """Wall time of this run."""
    invalid: int = 0
    """Records left out: no id, duplicate id, or neither title nor content."""
    out: Path | None = None
    """The index folder."""


# --- data -----------------------------------------------------------------------------------


def read_train(data: Path, limit: int | None = None) -> list[dict]:
    """The training split as dicts with ``id``, ``title``, ``content`` (all of it in memory)."""
    rows = [row for rows in iter_train(data, limit) for row in rows]
    if not rows:
        raise CatalogtuneError(f"prepared split is empty: {Path(data) / 'train.parquet'}")
    return rows


def iter_train(data: Path, limit: int | None = None, rows: int = READ_ROWS) -> Iterator[list[dict]]:
    """The training split in batches of at most ``rows`` dicts, in file order (bounded memory)."""
    import pyarrow.parquet as pq

    path = Path(data) / "train.parquet"
    if not path.is_file():
        raise CatalogtuneError(f"prepared split not found: {path} (run 'catalogtune prepare' first)")
    if limit is not None and limit <= 0:
        raise CatalogtuneError(f"limit must be positive, got {limit}")
    left = limit
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=rows, columns=["id", "title", "content"])
        for batch in batches:
            out = batch.to_pylist()[: left]
            if left is not None:
                left -= len(out)
            if out:
                yield out
            if left == 0:
                return
    except CatalogtuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad input file
        raise CatalogtuneError(f"cannot read prepared split {path}: {str(exc).splitlines()[0]}") from None


def _clean(text: Any, limit: int) -> str:
    if not isinstance(text, str):
        return ""
    text = _SPECIAL.sub(lambda m: f"({m.group(1) or m.group(2)})", _CONTROL.sub(" ", text))
    return " ".join(text.split())[:limit]


def valid_records(rows: list[dict], seen: set[str] | None = None) -> tuple[list[dict], int]:
    """(records with a unique id and some text, cleaned and bounded; number left out).

    ``seen`` carries the ids met so far across the chunks of one stream (updated in place).
    """
    seen = set() if seen is None else seen
    out = []
    for row in rows:
        rid = row.get("id")
        rid = rid.strip() if isinstance(rid, str) else ""
        title = _clean(row.get("title"), STORE_TITLE_CHARS)
        content = _clean(row.get("content"), STORE_CONTENT_CHARS)
        if not rid or rid in seen or not (title or content):
            continue
        seen.add(rid)
        out.append({"id": rid, "title": title, "content": content})
    return out, len(rows) - len(out)


def text_recipe(text: str) -> str:
    """The manifest recipe of the ``--text`` choice ``text``; ValueError naming the choices."""
    if text not in TEXT_RECIPES:
        raise ValueError(f"text must be one of {', '.join(TEXT_RECIPES)}, not {text!r}")
    return TEXT_RECIPES[text]


def embed_text(rec: dict, text: str = DEFAULT_TEXT) -> str:
    """The text embedded for a record under the recipe ``text`` (``TEXT_RECIPES``):
    "title. content[:EMBED_CONTENT_CHARS]", or the title alone (the content when it has none)."""
    title, content = rec["title"], rec["content"][:EMBED_CONTENT_CHARS]
    if text == "title":
        return title or content
    return f"{title}. {content}" if title and content else title or content


def fingerprint(records: list[dict], h: Any = None) -> str:
    """A digest of the records (ids and text, in order): another data set gives another one.

    Pass a running ``hashlib.sha256()`` as ``h`` to digest a stream chunk by chunk.
    """
    h = hashlib.sha256() if h is None else h
    for rec in records:
        h.update(f"{rec['id']}\x1f{rec['title']}\x1f{rec['content']}\x1e".encode("utf-8"))
    return h.hexdigest()[:32]


def iter_valid(data: Path, limit: int | None = None) -> Iterator[tuple[list[dict], int]]:
    """(valid records, number left out) per chunk of the training split, deduplicated across chunks."""
    seen: set[str] = set()
    for rows in iter_train(data, limit):
        yield valid_records(rows, seen)


@dataclass
class Scan:
    """The first pass over the split: what the build will store."""

    records: int
    invalid: int
    fingerprint: str
    probe: list[dict]
    """The first records (for the plan's timed probe)."""


def scan(data: Path, limit: int | None = None) -> Scan:
    """Count, validate and fingerprint the split in one streaming pass."""
    h, n, invalid, probe = hashlib.sha256(), 0, 0, []
    for recs, bad in iter_valid(data, limit):
        fingerprint(recs, h)
        n, invalid = n + len(recs), invalid + bad
        if len(probe) < PROBE_RECORDS:
            probe += recs[: PROBE_RECORDS - len(probe)]
    if n + invalid == 0:
        raise CatalogtuneError(f"prepared split is empty: {Path(data) / 'train.parquet'}")
    return Scan(n, invalid, h.hexdigest()[:32], probe)


# --- chroma ---------------------------------------------------------------------------------


def client(path: Path) -> Any:
    """A ChromaDB PersistentClient for ``path`` with telemetry off."""
    chromadb = require("chromadb", extra="rag")
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


_ADDRESS = re.compile(r"(https?):/{1,2}([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?(?:/([^/?#]*))?/?")


def is_address(index: Any) -> bool:
    """True if ``index`` names a Chroma server (``http://HOST:PORT[/COLLECTION]``), not a folder.

    Accepts the ``http:/HOST:PORT`` form that ``Path("http://HOST:PORT")`` collapses to, so an
    address that went through a ``Path`` option still counts.
    """
    return index is not None and re.match(r"https?:/", str(index)) is not None


def parse_address(index: Any) -> tuple[str, str, int, bool, str]:
    """``(address, host, port, ssl, collection)`` of a server address; one-line error if malformed.

    ``address`` is the normalised ``http://HOST:PORT/COLLECTION``; the port defaults to 8000
    (Chroma's) for http and 443 for https, the collection to "catalog".
    """
    m = _ADDRESS.fullmatch(str(index).strip())
    if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
        shown = re.sub(r"^(https?):/(?!/)", r"\1://", str(index))
        raise CatalogtuneError(f"bad Chroma server address {shown!r} (expected http://HOST:PORT or "
                               f"http://HOST:PORT/COLLECTION)")
    scheme, host, port, name = m.group(1), m.group(2), m.group(3), m.group(4) or DEFAULT_COLLECTION
    ssl = scheme == "https"
    port_n = int(port) if port else (443 if ssl else 8000)
    return f"{scheme}://{host}:{port_n}/{name}", host.strip("[]"), port_n, ssl, name


def http_client(index: Any) -> tuple[Any, str, str]:
    """``(client, address, collection)`` for a Chroma server; one-line error naming the address.

    The heartbeat is probed first with a short timeout, so a dead, refusing or silent address
    fails in seconds instead of hanging (Chroma's own HTTP client waits forever).
    """
    import urllib.error
    import urllib.request

    address, host, port, ssl, name = parse_address(index)
    base = address.rsplit("/", 1)[0]
    try:
        with urllib.request.urlopen(f"{base}/api/v2/heartbeat", timeout=SERVER_TIMEOUT_S) as resp:
            ok = "heartbeat" in resp.read(4096).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise CatalogtuneError(f"Chroma server {base} does not answer ({str(why).splitlines()[0][:200] or type(exc).__name__}); "
                               f"start it: chroma run --path INDEX_DIR --host {host} --port {port}") from None
    if not ok:
        raise CatalogtuneError(f"{base} answers, but not as a Chroma server (no heartbeat)")
    chromadb = require("chromadb", extra="rag")
    from chromadb.config import Settings

    try:
        cl = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=Settings(anonymized_telemetry=False))
    except Exception as exc:  # noqa: BLE001 - chroma raises ValueError or its own errors
        raise CatalogtuneError(f"Chroma server {base}: cannot connect ({str(exc).splitlines()[0][:200]})") from None
    session = getattr(getattr(cl, "_server", None), "_session", None)
    if session is not None:  # bound every later request too (private attribute: best effort)
        with contextlib.suppress(Exception):
            import httpx

            session.timeout = httpx.Timeout(SERVER_QUERY_TIMEOUT_S, connect=SERVER_TIMEOUT_S)
    return cl, address, name


def collection_metadata(man: dict) -> dict:
    """The collection metadata that carries ``man`` (Chroma metadata values are flat scalars)."""
    return {"catalogtune": f"rag-index-v{FORMAT}", META_MANIFEST: json.dumps(man, sort_keys=True)}


def _write_metadata(col: Any, man: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        col.modify(metadata=collection_metadata(man))


def manifest_of(col: Any, where: str) -> dict:
    """The manifest stored in a collection's metadata; one-line error if it has none."""
    raw = (getattr(col, "metadata", None) or {}).get(META_MANIFEST)
    if not isinstance(raw, str):
        raise CatalogtuneError(f"RAG index {where}: the collection has no catalogtune manifest in its metadata "
                               f"(built before server support: re-run catalogtune index on the folder, which "
                               f"adds it without re-embedding, then restart the server)")
    try:
        man = json.loads(raw)
    except ValueError:
        man = None
    if not isinstance(man, dict):
        raise CatalogtuneError(f"RAG index {where}: the manifest in the collection metadata is not a JSON object")
    return man


def hnsw_settings(m: int, ef_construction: int, ef_search: int) -> dict:
    """The Chroma collection configuration for a cosine HNSW index."""
    return {"hnsw": {"space": "cosine", "max_neighbors": m, "ef_construction": ef_construction,
                     "ef_search": ef_search}}


def _lock(out: Path) -> Any:
    # Two writers on one index would interleave upserts and manifests.
    return folder_lock(out / ".lock", f"the index {out}", target=out)


def _read_manifest(path: Path) -> dict:
    try:
        man = read_json(path / MANIFEST)
    except (OSError, ValueError):
        raise CatalogtuneError(f"RAG index {path}: {MANIFEST} is unreadable (delete the folder to rebuild)") from None
    if not isinstance(man, dict):
        raise CatalogtuneError(f"RAG index {path}: {MANIFEST} is not a JSON object")
    return man


def space_of(man: dict) -> Any:
    """The vector space an index was built in (manifests before ``space`` name their embedder)."""
    return man.get("space") or ("minilm" if man.get("embedder") == "minilm-onnx" else man.get("embedder"))


def _check_manifest(man: dict, want: dict, out: Path, rebuild: bool) -> bool:
    """True if the existing index may be extended; False if it must be replaced (rebuild)."""
    hint = "use --rebuild to replace it, or another --out"
    if space_of(man) != want["space"]:  # minilm and minilm-onnx vectors are interchangeable
        if rebuild:
            return False
        raise CatalogtuneError(f"index {out} was built with embedder {man.get('embedder')!r}, "
                               f"not {want['embedder']!r}; {hint}")
    for key, what in (("dim", "embedding size"), ("text_recipe", "text recipe"), ("collection", "collection")):
        if man.get(key) != want[key]:
            if rebuild:
                return False
            raise CatalogtuneError(f"index {out} was built with {what} {man.get(key)!r}, "
                                   f"not {want[key]!r}; {hint}")
    if man.get("data_fingerprint") != want["data_fingerprint"]:
        if rebuild:
            return False
        if man.get("budget") and man.get("limit"):
            raise CatalogtuneError(f"index {out} was built within --budget {man['budget']} (the first "
                                   f"{man['limit']:,} training records); give the same budget to resume it, "
                                   f"or {hint.removeprefix('use ')}")
        raise CatalogtuneError(f"index {out} was built from other data ({man.get('data')}, "
                               f"fingerprint {man.get('data_fingerprint')}); {hint}")
    old, new = man.get("hnsw", {}), want["hnsw"]
    if any(old.get(k) != new[k] for k in ("max_neighbors", "ef_construction")) and not rebuild:
        raise CatalogtuneError(f"index {out} was built with HNSW {old}; {hint}")
    return not rebuild


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rec", desc="index", disable=not enabled,
                dynamic_ncols=True)


def run(cfg: IndexConfig) -> IndexResult:
    """Build or extend the index of ``cfg.data``'s training split in ``cfg.out``."""
    t0 = time.perf_counter()
    if is_address(cfg.out):
        shown = re.sub(r"^(https?):/(?!/)", r"\1://", str(cfg.out))  # Path("http://h:p") -> "http:/h:p"
        raise CatalogtuneError(f"catalogtune index builds a folder, not into a server ({shown}): build with "
                               f"--out INDEX_DIR, then serve it: chroma run --path INDEX_DIR --host 127.0.0.1 --port 8001")
    limit, decided = cfg.limit, cfg.budget is None
    prior = _read_manifest(cfg.out) if cfg.budget is not None and (cfg.out / MANIFEST).is_file() else None
    if prior is not None and not cfg.rebuild and prior.get("budget") == cfg.budget:
        limit, decided = prior.get("limit"), True  # the same budget: the same records as the first run
    found = scan(cfg.data, limit)
    if not found.records:
        raise CatalogtuneError(f"no usable records in the training split of {cfg.data}")
    emb = get_embedder(cfg.embedder)
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise CatalogtuneError(f"index folder {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    want = {
        "format": FORMAT, "embedder": emb.name, "space": emb.space, "dim": emb.dim,
        "text_recipe": text_recipe(cfg.text),
        "collection": cfg.collection, "data": str(cfg.data), "data_fingerprint": found.fingerprint,
        "records": found.records, "limit": limit,
        # named only once the probe has fixed the records (a build killed before then decides again)
        "budget": cfg.budget if decided else None,
        "hnsw": hnsw_settings(cfg.hnsw_m, cfg.hnsw_ef_construction, cfg.hnsw_ef_search)["hnsw"],
    }
    with _lock(out):
        # Checked under the lock: a build in progress has temporary files before its manifest.
        if any(p.name != ".lock" for p in out.iterdir()) and not (out / MANIFEST).is_file():
            raise CatalogtuneError(f"{out} exists and is not a catalogtune index (no {MANIFEST})")
        man = _read_manifest(out) if (out / MANIFEST).is_file() else None
        keep = man is None or _check_manifest(man, want, out, cfg.rebuild)
        building = {**want, "status": "building", "count": None}
        if man is None:  # before Chroma creates files, so a killed first build is known as ours
            atomic_write_json(out / MANIFEST, building)
        cl = client(out)
        if not keep:
            for name in {str(man.get("collection", cfg.collection)), cfg.collection}:
                with contextlib.suppress(Exception):  # absent collection: nothing to delete
                    cl.delete_collection(name)
        # Only now (old vectors gone) may the manifest name the new data.
        atomic_write_json(out / MANIFEST, building)
        col = cl.get_or_create_collection(
            cfg.collection, configuration=hnsw_settings(*[want["hnsw"][k] for k in (
                "max_neighbors", "ef_construction", "ef_search")]),
            embedding_function=None, metadata={"catalogtune": f"rag-index-v{FORMAT}"},
        )
        if (col.configuration_json or {}).get("hnsw", {}).get("ef_search") != cfg.hnsw_ef_search:
            with warnings.catch_warnings():  # "legacy embedding function config": we embed ourselves
                warnings.simplefilter("ignore", DeprecationWarning)
                col.modify(configuration={"hnsw": {"ef_search": cfg.hnsw_ef_search}})
        _write_metadata(col, building)  # a server reading it mid-build sees "building"
        batch = cfg.batch_size or emb.batch_size
        probed, per_record = plan(col, found, emb, batch, cfg.text)
        if not decided and per_record:
            fit = budget_fit(found.records, col.count(), per_record, budget_seconds(cfg.budget))
            if fit < found.records:  # the first records that fit the budget; the manifest names them
                print(f"index plan: budget {cfg.budget}: the first {fit:,} of {found.records:,} training records "
                      f"fit and are indexed" + ("" if cfg.text == "title" else " (--text title embeds about 10x faster)"),
                      file=sys.stderr, flush=True)
                limit = fit
                found = scan(cfg.data, limit)
                want.update(records=found.records, limit=limit, data_fingerprint=found.fingerprint)
        if not decided:
            want["budget"] = cfg.budget
            building = {**want, "status": "building", "count": None}
            atomic_write_json(out / MANIFEST, building)
            _write_metadata(col, building)
        added, skipped = _fill(col, iter_valid(cfg.data, limit), found.records, emb, cfg,
                               cl.get_max_batch_size(), batch)
        added, skipped = added + probed, skipped - probed
        total = col.count()
        done = {**want, "status": "complete", "count": total, "seconds_last_run": round(time.perf_counter() - t0, 3)}
        _write_metadata(col, done)  # before index.json: a complete folder always has its server copy
        atomic_write_json(out / MANIFEST, done)
    return IndexResult(added, skipped, total, time.perf_counter() - t0, found.invalid, out)


def _store(col: Any, recs: list[dict], vecs: np.ndarray) -> None:
    # add, not upsert: callers pass only records found missing (one writer, under the lock), and
    # upsert costs more per record in Chroma. The description goes in the metadata, not in
    # Chroma's document field: documents also feed its SQLite full-text index, which local Chroma
    # builds whatever the collection's schema says and which cost 40 % of storing (30k records:
    # 53.7 s as documents, 32.3 s as metadata; ``stored_content``).
    col.add(ids=[r["id"] for r in recs], embeddings=vecs,
            metadatas=[{"title": r["title"], CONTENT_KEY: r["content"]} for r in recs])


def stored_content(meta: dict | None, doc: str | None) -> str:
    """A stored record's description: its metadata's (builds since 2026-12-03) or its document's
    (earlier builds, which a reader still opens)."""
    value = (meta or {}).get(CONTENT_KEY)
    return value if isinstance(value, str) else doc or ""


def _missing(col: Any, recs: list[dict]) -> list[dict]:
    have = set(col.get(ids=[r["id"] for r in recs], include=[])["ids"])
    return [r for r in recs if r["id"] not in have]


def _chunks(stream: Iterator[tuple[list[dict], int]], step: int) -> Iterator[list[dict]]:
    """Regroup the stream's valid records into lists of ``step`` (the last may be shorter)."""
    buf: list[dict] = []
    for recs, _ in stream:
        buf += recs
        while len(buf) >= step:
            yield buf[:step]
            buf = buf[step:]
    if buf:
        yield buf


def _fill(col: Any, stream: Iterator[tuple[list[dict], int]], total: int, emb: Embedder, cfg: IndexConfig,
          max_batch: int, batch: int) -> tuple[int, int]:
    """Embed and store the streamed records missing from ``col``; (added, skipped).

    Pipelined: a thread embeds the next chunk while this one stores the last (ONNX Runtime, the
    tokenizer and Chroma's HNSW inserts all release the GIL), so the build takes about the longer
    of the two instead of their sum. A kill loses at most the chunks in flight; a re-run embeds
    them again.
    """
    from concurrent.futures import ThreadPoolExecutor

    added = skipped = 0

    def vectors(todo: list[dict]) -> np.ndarray:
        return emb.embed([embed_text(r, cfg.text) for r in todo], batch_size=batch)

    def store(job: tuple[list[dict], int, Any]) -> None:
        nonlocal added
        todo, n, fut = job
        if todo:
            _store(col, todo, fut.result())
            added += len(todo)
        bar.update(n)

    with _progress(total, 0, cfg.progress) as bar, ThreadPoolExecutor(1, thread_name_prefix="embed") as pool:
        last = None
        for chunk in _chunks(stream, max(1, min(cfg.chunk, max_batch))):
            todo = _missing(col, chunk)
            skipped += len(chunk) - len(todo)
            job = (todo, len(chunk), pool.submit(vectors, todo) if todo else None)
            if last is not None:
                store(last)
            last = job
        if last is not None:
            store(last)
    return added, skipped


def budget_fit(records: int, stored: int, per_record_s: float, budget_s: float) -> int:
    """How many of ``records`` an index may hold when the ones after ``stored`` cost ``per_record_s``
    each and the build has ``budget_s`` seconds (at least what is stored already)."""
    return min(records, max(stored, 1, stored + int(budget_s / per_record_s)))


def plan(col: Any, found: Scan, emb: Embedder, batch: int, text: str = DEFAULT_TEXT) -> tuple[int, float | None]:
    """Time a probe (the first records embedded and stored), print the plan line.

    Returns the records the probe added (they stay in the index, so the build does not repeat
    them) and the measured seconds per record (embedding and storing; None when nothing is left).
    """
    todo = _missing(col, found.probe)
    left = max(0, found.records - col.count())
    if left == 0:
        print(f"index plan: {found.records:,} records, all already stored", file=sys.stderr, flush=True)
        return 0, None
    recs = todo or found.probe
    if hasattr(emb, "warm"):
        emb.warm()  # loads the model: not part of the rate
    t = time.perf_counter()
    vecs = emb.embed([embed_text(r, text) for r in recs], batch_size=batch)
    embed_s = (time.perf_counter() - t) / len(recs)
    store_s = None
    if todo:
        t = time.perf_counter()
        _store(col, todo, vecs)
        store_s = (time.perf_counter() - t) / len(todo)
    print(plan_line(found.records, left, emb, embed_s, store_s, text), file=sys.stderr, flush=True)
    # Storing slows as the HNSW graph grows: a probe that stored nothing counts the rate measured at 100k.
    return len(todo), embed_s + (store_s if store_s else 1 / STORE_RATE_100K)


LONG_BUILD_S = 2 * 3600
"""A title+content build projected longer than this names the faster title recipe in its plan."""


def plan_line(records: int, left: int, emb: Embedder, embed_s: float, store_s: float | None,
              text: str = DEFAULT_TEXT) -> str:
    """One stderr line: what the build will do, how long and how much memory it should take."""
    wall = left * (embed_s + (store_s or 0.0))
    h, rem = divmod(int(wall), 3600)
    took = f"{h} h {rem // 60} min" if h else f"{rem // 60} min {rem % 60} s"
    # Chroma keeps every vector and its HNSW links in memory; the ids set costs ~100 bytes each.
    peak_gb = (peak_rss_mb() * 2**20 + records * (emb.dim * 4 + HNSW_OVERHEAD_BYTES + 100)) / 2**30
    stored = f", storing {1 / store_s:,.0f} records/s" if store_s else ""
    return (f"index plan: {records:,} records, {left:,} to embed and store ({emb.name}); the probe embedded "
            f"{1 / embed_s:,.1f} records/s{stored} -> about {took}, peak memory about {peak_gb:.1f} GB"
            + ("; --text title embeds about 10x faster (somewhat weaker references)"
               if text == DEFAULT_TEXT and wall > LONG_BUILD_S else ""))


# --- querying -------------------------------------------------------------------------------


def _check_opened(man: dict, where: str, embedder: Embedder | str | None, data: str | Path | None) -> Embedder:
    """Check an opened index's manifest (finished, same data, same vector space); its embedder."""
    if man.get("status") != "complete":
        raise CatalogtuneError(f"RAG index {where} is unfinished (re-run catalogtune index to complete it)")
    if data is not None:
        fp = scan(Path(data), man.get("limit")).fingerprint
        if fp != man.get("data_fingerprint"):
            raise CatalogtuneError(f"RAG index {where} was built from other data than {data} "
                                   f"({man.get('data')}); rebuild it with catalogtune index --rebuild")
    if embedder is None or isinstance(embedder, str):
        emb = get_embedder(embedder or str(man.get("embedder", "")))
    else:
        emb = embedder
    if emb.space != space_of(man) or emb.dim != man.get("dim"):
        raise CatalogtuneError(f"RAG index {where} was built with embedder {man.get('embedder')!r} "
                               f"(dim {man.get('dim')}), not {emb.name!r} (dim {emb.dim})")
    return emb


class Index:
    """An opened index: ``query(texts, k)`` -> nearest training records with cosine scores."""

    def __init__(self, path: Path | str, manifest: dict, collection: Any, embedder: Embedder) -> None:
        # ``path``: the index folder, or the normalised address of a server index (a str)
        self.path, self.manifest, self.collection, self.embedder = path, manifest, collection, embedder
        self._count: int | None = None  # the record count, once ``_size`` knows it

    @classmethod
    def open(cls, index_dir: str | Path, embedder: Embedder | str | None = None,
             data: str | Path | None = None) -> "Index":
        """Open ``index_dir`` (a folder, or ``http://HOST:PORT[/COLLECTION]`` of a Chroma server);
        one-line errors when missing, unreachable, unfinished or built differently.

        With ``data`` (a prepared folder), its training split must be the one indexed; this
        reads and hashes the split, so callers pass it when they need the guarantee.
        """
        if is_address(index_dir):
            cl, address, name = http_client(index_dir)
            try:
                col = cl.get_collection(name, embedding_function=None)
            except Exception as exc:  # noqa: BLE001 - chroma raises several types for a missing collection
                raise CatalogtuneError(f"RAG index {address}: collection {name!r} cannot be opened "
                                       f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
            man = manifest_of(col, address)
            return cls(address, man, col, _check_opened(man, address, embedder, data))
        path = Path(index_dir)
        if not (path / MANIFEST).is_file():
            what = "not found" if not path.exists() else f"has no {MANIFEST}"
            raise CatalogtuneError(f"RAG index {path} {what} (build it: catalogtune index --data DIR --out {path})")
        man = _read_manifest(path)
        emb = _check_opened(man, str(path), embedder, data)
        try:
            col = client(path).get_collection(man["collection"], embedding_function=None)
        except Exception as exc:  # noqa: BLE001 - chroma raises several types for a missing collection
            raise CatalogtuneError(f"RAG index {path}: collection {man.get('collection')!r} "
                                   f"cannot be opened ({str(exc).splitlines()[0][:200]})") from None
        return cls(path, man, col, emb)

    def count(self) -> int:
        """Records in the index."""
        return int(self.collection.count())

    def _size(self) -> int:
        """The record count ``query`` bounds ``k`` with: the complete manifest's, else asked once.
        Chroma's ``count()`` takes ~125 ms at 1.35M records (10 s the first time), more than the
        search itself (2-3 ms), and an opened index is complete and not extended meanwhile."""
        if self._count is None:
            known = self.manifest.get("count")
            self._count = known if isinstance(known, int) and not isinstance(known, bool) and known >= 0 \
                else self.count()
        return self._count

    def query(self, texts: list[str], k: int = 5) -> list[list[dict]]:
        """For each text, up to ``k`` records ``{"id", "title", "content", "score"}``, best first."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise CatalogtuneError("query() takes a list of texts")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise CatalogtuneError(f"k must be an integer from 1 to {MAX_K}")
        cleaned = []
        for i, t in enumerate(texts):
            try:
                cleaned.append(clean_title(t, max_chars=MAX_QUERY_CHARS))
            except CatalogtuneError as exc:
                raise CatalogtuneError(f"query {i}: {exc}") from None
        n = min(k, self._size())
        if n == 0 or not cleaned:
            return [[] for _ in cleaned]
        results: list[list[dict]] = []
        for i in range(0, len(cleaned), QUERY_BATCH):
            vecs = self.embedder.embed(cleaned[i : i + QUERY_BATCH])
            results += self.query_vectors(vecs, n)
        return results

    def query_vectors(self, vecs: np.ndarray, k: int) -> list[list[dict]]:
        """Nearest records of already-embedded, normalised query vectors."""
        res = self.collection.query(query_embeddings=np.asarray(vecs, dtype=np.float32), n_results=k,
                                    include=["metadatas", "documents", "distances"])
        out = []
        for ids, metas, docs, dists in zip(res["ids"], res["metadatas"], res["documents"], res["distances"]):
            out.append([
                {"id": rid, "title": (meta or {}).get("title", ""), "content": stored_content(meta, doc),
                 # Chroma's cosine distance is 1 - cos; clip float noise to [-1, 1].
                 "score": float(min(1.0, max(-1.0, 1.0 - d)))}
                for rid, meta, doc, d in zip(ids, metas, docs, dists)
            ])
        return out


def main(argv: list[str]) -> int:
    """`catalogtune index --data DIR --out INDEX_DIR [--embedder minilm|hash] [--batch-size N]`."""
    p = argparse.ArgumentParser(prog="catalogtune index", description="Build the RAG reference index.")
    p.add_argument("--config", type=Path, default=None, help="YAML preset of IndexConfig keys")
    config.add_arguments(p, IndexConfig)
    ns = p.parse_args(argv)
    if ns.config is None and (ns.data is None or ns.out is None):
        p.error("--data and --out are required")
    cfg = config.from_namespace(IndexConfig, ns, ns.config)
    res = run(cfg)
    print(f"index {res.out}: {res.added} added, {res.skipped} already there, {res.invalid} left out, "
          f"{res.total} in total ({res.seconds:.1f} s)")
    return 0


__all__ = ["IndexConfig", "IndexResult", "Index", "run", "main", "get_embedder", "HashEmbedder",
           "MiniLMEmbedder", "Embedder", "read_train", "iter_train", "iter_valid", "scan", "embed_text",
           "TEXT_RECIPES", "fingerprint", "plan_line", "is_address", "parse_address", "http_client"]
