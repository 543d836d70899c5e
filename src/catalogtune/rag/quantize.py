"""The int8 copy of an ONNX export: ``quantize_dynamic`` weights, cached beside the float32 file.

The cached file is named by a digest of the float32 file's bytes, the quantization settings and
the ONNX Runtime version, so a new export or other settings never reuse an old copy. It is built
in a temporary folder, checked by the caller (``check``: the vectors must still agree with the
float32 model's), then written atomically with a sidecar ``.json`` holding its own digest; a
copy whose bytes do not match that digest (truncated, overwritten) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable

from catalogtune.core.util import CatalogtuneError, atomic_write, atomic_write_json, read_json, require

SETTINGS = {"weight_type": "QInt8", "per_channel": True, "reduce_range": False, "op_types": ["MatMul"]}
"""quantize_dynamic's options: signed int8 weights with one scale per output column (per-tensor
scales lost a tenth of recall@10), activations quantized per call (uint8, the x86 VNNI kernels'
u8s8 form), MatMuls with constant weights only: the embedding tables (Gather) stay float32, and
so do the attention score products, whose both inputs vary. Other settings give other vectors:
rename ``OnnxInt8MiniLMEmbedder.space`` with them, so old indexes refuse the new queries."""


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def int8_path(fp32: Path, settings: dict = SETTINGS) -> Path:
    """Where the int8 copy of ``fp32`` is cached (its folder; named by digest and settings)."""
    ort = require("onnxruntime", extra="rag")
    key = json.dumps({"fp32": file_digest(fp32), "settings": settings, "onnxruntime": ort.__version__},
                     sort_keys=True)
    return fp32.with_name(f"{fp32.stem}-int8-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def intact(path: Path) -> bool:
    """True if ``path`` exists and its bytes are the ones recorded when it was built."""
    try:
        meta = read_json(_sidecar(path))
        return isinstance(meta, dict) and path.is_file() and meta.get("sha256") == file_digest(path)
    except (OSError, ValueError):
        return False


def quantize(fp32: Path, dest: Path, check: Callable[[bytes], float], settings: dict = SETTINGS) -> Path:
    """Quantize ``fp32`` into ``dest`` atomically; ``check(model_bytes)`` returns the probes' lowest
    cosine to the float32 model (recorded in the sidecar) or raises ``CatalogtuneError``."""
    qz = require("onnxruntime.quantization", extra="rag", package="onnxruntime")
    with tempfile.TemporaryDirectory(prefix="ct-int8-", dir=dest.parent) as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            qz.quantize_dynamic(str(fp32), str(out), weight_type=getattr(qz.QuantType, settings["weight_type"]),
                                per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                                op_types_to_quantize=list(settings["op_types"]))
        except Exception as exc:  # onnx raises its own DecodeError/ValidationError types
            raise CatalogtuneError(f"cannot quantize the ONNX export {fp32} ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'no message'}); delete it to "
                                   f"export it again, or use --embedder minilm-onnx") from None
        data = out.read_bytes()
    cosine = check(data)
    with atomic_write(dest, "wb", encoding=None) as fh:
        fh.write(data)
    atomic_write_json(_sidecar(dest), {"sha256": hashlib.sha256(data).hexdigest(), "fp32": fp32.name,
                                       "settings": settings, "probe_cosine_min": round(float(cosine), 6)})
    return dest


def cached_int8(fp32: Path, check: Callable[[bytes], float], settings: dict = SETTINGS) -> Path:
    """The int8 copy of ``fp32``, reused when intact, else (missing, corrupt) built again."""
    dest = int8_path(fp32, settings)
    if not intact(dest):
        quantize(fp32, dest, check, settings)
    return dest

