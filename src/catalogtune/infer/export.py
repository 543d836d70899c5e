"""`catalogtune export RUN --format merged|gguf|ollama`: the fine-tuned model as files other tools load.

- ``merged``: the LoRA adapter merged into the base (PEFT ``merge_and_unload``), saved as
  safetensors + tokenizer in ``OUT/merged/`` (``from_pretrained`` loads it, no peft needed);
- ``gguf``: one GGUF file, ``OUT/gguf-QUANT/model.gguf``, written with the ``gguf`` library
  (llama.cpp's tensor names, hyper-parameters and tokenizer metadata, so llama.cpp, Ollama and
  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` all load it);
- ``ollama``: that GGUF plus a ``Modelfile`` in ``OUT/ollama-QUANT/`` (``ollama create NAME -f Modelfile``).

GGUF covers the Llama architecture (SmolLM2, tiny-random) and Gemma 3 (llama.cpp's ``gemma3``:
norm weights stored as ``w + 1``, no q/k permutation). ``--quant f16`` stores matrices as fp16,
``q8_0`` as llama.cpp's 8-bit blocks (``gguf.quants``); vectors (norms) stay fp32, as llama.cpp
keeps them. Every output folder is filled beside its final place and renamed in (``atomic_dir``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, atomic_dir

FORMATS = ("merged", "gguf", "ollama")
QUANTS = ("f16", "q8_0")
TITLE_SLOT = "CATALOGTUNETITLESLOT"
"""Stands in for the title when the prompt template is rendered into an Ollama TEMPLATE."""


@dataclass
class ExportConfig:
    """Options of `catalogtune export`."""

    run: Path | None = None
    """Training run folder (config.yaml + adapter/)."""
    format: str = "gguf"
    """What to write: merged (safetensors), gguf, or ollama (GGUF + Modelfile)."""
    quant: str = "f16"
    """GGUF weight type: f16 or q8_0 (gguf and ollama only)."""
    out: Path | None = None
    """Output folder (default RUN/export); the export goes in a subfolder named after the format."""
    model: str | None = None
    """Base model name or path (overrides the base recorded in the run)."""

    def __post_init__(self) -> None:
        if self.run is None:
            raise ValueError("give the run folder: catalogtune export RUN --format gguf")
        self.run = Path(self.run)
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r} (choose {', '.join(FORMATS)})")
        if self.quant not in QUANTS:
            raise ValueError(f"unknown quant {self.quant!r} (choose {', '.join(QUANTS)})")
        if self.out is not None:
            self.out = Path(self.out)


@dataclass
class ExportResult:
    """What an export wrote."""

    path: Path
    """The output folder (``OUT/merged``, ``OUT/gguf-f16``, ``OUT/ollama-q8_0``, ...)."""
    files: list[Path] = field(default_factory=list)
    """The main files in it (model.gguf, Modelfile, model.safetensors...)."""
    manifest: dict[str, Any] = field(default_factory=dict)
    """What ``export.json`` in the folder records."""


# --- architectures -------------------------------------------------------------------------


def _rope_theta(cfg: Any) -> float:
    """The (global) rope base; a scaled rope is refused: llama.cpp would need its parameters too."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params.get("full_attention"), dict):  # Gemma 3: per attention type
        params = params["full_attention"]
    kind = params.get("rope_type", "default")
    if kind not in ("default", None):
        raise CatalogtuneError(f"GGUF export does not handle rope scaling {kind!r}")
    return float(params.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0))


def _head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _llama_hparams(w: Any, cfg: Any) -> None:
    w.add_rope_dimension_count(_head_dim(cfg))
    if _head_dim(cfg) != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(_head_dim(cfg))
        w.add_value_length(_head_dim(cfg))


def _gemma3_hparams(w: Any, cfg: Any) -> None:
    w.add_key_length(_head_dim(cfg))
    w.add_value_length(_head_dim(cfg))
    if getattr(cfg, "sliding_window", None):
        w.add_sliding_window(int(cfg.sliding_window))


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture is written in llama.cpp's layout."""

    gguf_name: str
    """llama.cpp's architecture name (``gguf.MODEL_ARCH_NAMES``)."""
    permute_qk: bool
    """llama.cpp stores Llama's q/k rows interleaved for its rotary kernel."""
    norm_shift: float
    """Added to every norm weight (Gemma computes ``x * (1 + w)``, llama.cpp ``x * w``)."""
    hparams: Any
    """Writes the architecture's own keys (beyond the shared ones)."""


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", True, 0.0, _llama_hparams),
    "gemma3_text": Arch("gemma3", False, 1.0, _gemma3_hparams),
}


def arch_of(cfg: Any) -> Arch:
    """The GGUF recipe for a model config, or a one-line error naming the supported ones."""
    kind = getattr(cfg, "model_type", "")
    if kind == "gemma3":  # the multimodal wrapper: only its text model has a GGUF recipe here
        kind = "gemma3_text"
    if kind not in ARCHS:
        raise CatalogtuneError(
            f"GGUF export supports the Llama (SmolLM2, tiny-random) and Gemma 3 architectures, not {kind!r}"
        )
    return ARCHS[kind]


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's q/k row order (the inverse of transformers' GGUF ``reverse_permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: Any, arch: Arch) -> list[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight, in llama.cpp's names and layout."""
    import gguf

    cfg = model.config
    tmap = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.gguf_name), cfg.num_hidden_layers
    )
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    out = []
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        stem, _, suffix = name.rpartition(".")
        target = tmap.get_name(stem)
        if target is None:
            raise CatalogtuneError(f"no GGUF name for weight {name!r} ({arch.gguf_name})")
        data = tensor.detach().float().cpu().numpy()
        if arch.permute_qk and target.endswith(".attn_q"):
            data = _permute(data, cfg.num_attention_heads)
        elif arch.permute_qk and target.endswith(".attn_k"):
            data = _permute(data, cfg.num_key_value_heads)
        if arch.norm_shift and target.endswith("norm"):
            data = data + arch.norm_shift
        out.append((f"{target}.{suffix}", data))
    return out


# --- tokenizer metadata --------------------------------------------------------------------


def _adds_bos(tok: Any) -> bool:
    """Whether prompts start with a BOS the tokenizer adds (the Generator's encoding rule)."""
    if getattr(tok, "chat_template", None) or tok.bos_token_id is None:
        return False  # a chat template writes its own BOS
    return tok("a")["input_ids"][:1] == [tok.bos_token_id]


def source_gguf(base: str) -> Path | None:
    """The packaged GGUF a registered base was converted from (its tokenizer metadata is exact)."""
    from catalogtune.core import models
    from catalogtune.core.util import home

    for name, spec in models.REGISTRY.items():
        if spec.gguf is None:
            continue
        cached = home() / "models" / name
        if base == name or (Path(base).is_dir() and Path(base).resolve() == cached.resolve()):
            return spec.gguf()
    return None


def _copied_tokenizer(path: Path, n_vocab: int) -> dict[str, Any] | None:
    """tokenizer.ggml.* fields of ``path`` when its vocabulary has ``n_vocab`` tokens."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.ggml.")}
    if len(fields.get("tokenizer.ggml.tokens") or []) != n_vocab:
        return None
    return fields


def _byte_level(tok: Any) -> bool:
    spec = json.loads(tok.backend_tokenizer.to_str())
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    return spec.get("model", {}).get("type") == "BPE" and "ByteLevel" in pre


def built_tokenizer(tok: Any, n_vocab: int) -> dict[str, Any]:
    """tokenizer.ggml.* fields made from a fast tokenizer (byte-level BPE as ``gpt2``, else SPM ``llama``)."""
    import gguf

    spec = json.loads(tok.backend_tokenizer.to_str())
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    if max(by_id) >= n_vocab:
        raise CatalogtuneError(f"tokenizer has ids up to {max(by_id)} but the model only {n_vocab} rows")
    tokens, types = [], []
    for i in range(n_vocab):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif t == tok.unk_token:
            tokens.append(t)
            types.append(gguf.TokenType.UNKNOWN)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.BYTE if t.startswith("<0x") and len(t) == 6 else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec.get("model", {}).get("merges", [])]
    fields: dict[str, Any] = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [int(t) for t in types]}
    if _byte_level(tok):
        pre = json.dumps(spec.get("pre_tokenizer"))
        fields["tokenizer.ggml.model"] = "gpt2"
        fields["tokenizer.ggml.pre"] = "smollm" if '"individual_digits": true' in pre else "gpt2"
        fields["tokenizer.ggml.merges"] = merges
    else:  # sentencepiece-style BPE: llama.cpp orders merges by score; ids follow merge order
        fields["tokenizer.ggml.model"] = "llama"
        fields["tokenizer.ggml.pre"] = "default"
        fields["tokenizer.ggml.scores"] = [-float(i) for i in range(n_vocab)]
        if merges:
            fields["tokenizer.ggml.merges"] = merges
    for key, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unknown", tok.unk_token_id),
                     ("padding", tok.pad_token_id)):
        if tid is not None:
            fields[f"tokenizer.ggml.{key}_token_id"] = int(tid)
    return fields


def _write_tokenizer(w: Any, fields: dict[str, Any], tok: Any) -> None:
    w.add_tokenizer_model(str(fields["tokenizer.ggml.model"]))
    w.add_tokenizer_pre(str(fields.get("tokenizer.ggml.pre", "default")))
    w.add_token_list(list(fields["tokenizer.ggml.tokens"]))
    w.add_token_types(list(fields["tokenizer.ggml.token_type"]))
    if "tokenizer.ggml.scores" in fields:
        w.add_token_scores(list(fields["tokenizer.ggml.scores"]))
    if fields.get("tokenizer.ggml.merges"):
        w.add_token_merges(list(fields["tokenizer.ggml.merges"]))
    # The special ids the fine-tuned model was trained with win over the source file's.
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unknown": tok.unk_token_id, "padding": tok.pad_token_id}
    for key, adder in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                       ("unknown", w.add_unk_token_id), ("padding", w.add_pad_token_id)):
        tid = ids[key] if ids[key] is not None else fields.get(f"tokenizer.ggml.{key}_token_id")
        if tid is not None:
            adder(int(tid))
    w.add_add_bos_token(_adds_bos(tok))
    w.add_add_eos_token(False)
    if fields["tokenizer.ggml.model"] == "llama" or "tokenizer.ggml.add_space_prefix" in fields:
        w.add_add_space_prefix(bool(fields.get("tokenizer.ggml.add_space_prefix", False)))
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)


# --- writers -------------------------------------------------------------------------------


def write_gguf(model: Any, tok: Any, path: Path, quant: str = "f16", name: str = "", base: str = "") -> dict:
    """Write ``model`` (merged, no adapter) and ``tok`` as one GGUF file; returns tensor counts by type."""
    import gguf
    import numpy as np

    cfg = model.config
    arch = arch_of(cfg)
    tensors = gguf_tensors(model, arch)
    n_vocab = int(model.get_input_embeddings().weight.shape[0])
    w = gguf.GGUFWriter(str(path), arch.gguf_name)
    w.add_type("model")
    w.add_name(name or arch.gguf_name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_vocab_size(n_vocab)
    arch.hparams(w, cfg)
    q8 = quant == "q8_0"
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.MOSTLY_F16)
    if q8:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    src = source_gguf(base) if base else None
    fields = (_copied_tokenizer(src, n_vocab) if src else None) or built_tokenizer(tok, n_vocab)
    _write_tokenizer(w, fields, tok)
    counts: dict[str, int] = {}
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    for tname, data in tensors:
        if data.ndim < 2:
            kind, arr, raw = "F32", data.astype(np.float32), None
        elif q8 and data.shape[-1] % block == 0:
            kind, raw = "Q8_0", gguf.GGMLQuantizationType.Q8_0
            arr = gguf.quants.quantize(data.astype(np.float32), raw)
        else:  # rows that do not fill whole 32-value blocks stay fp16 (llama.cpp does the same)
            kind, arr, raw = "F16", data.astype(np.float16), None
        w.add_tensor(tname, arr, raw_dtype=raw)
        counts[kind] = counts.get(kind, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def _go_escape(text: str) -> str:
    """Literal text inside a Go template: ``{{`` must not open an action."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(tok: Any, gguf_name: str = "model.gguf", note: str = "") -> str:
    """An Ollama Modelfile: the training prompt as TEMPLATE, the stop tokens, evaluate's decoding."""
    from catalogtune.core import prompt as prompt_mod
    from catalogtune.core.decoding import DECODING

    rendered = prompt_mod.build_prompt(tok, TITLE_SLOT)
    if rendered.count(TITLE_SLOT) != 1:
        raise CatalogtuneError("the prompt template does not contain the title exactly once")
    before, after = rendered.split(TITLE_SLOT)
    template = f"{_go_escape(before)}{{{{ .Prompt }}}}{_go_escape(after)}"
    if '"""' in template:
        raise CatalogtuneError('the prompt template contains """, which a Modelfile cannot quote')
    stops = [tok.convert_ids_to_tokens(i) for i in prompt_mod.stop_token_ids(tok)]
    lines = [
        "# Exported by catalogtune" + (f": {note}" if note else ""),
        "# The user's message is the product title; TEMPLATE wraps it exactly as in training.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops if s]
    lines += [
        "# Close to the decoding `catalogtune evaluate` and `catalogtune serve` use: greedy, repetition",
        "# penalty on the answer's tokens. Ollama's penalty looks at the last repeat_last_n tokens, the",
        "# prompt's included, so early tokens may differ; no_repeat_ngram_size "
        f"{DECODING.no_repeat_ngram_size} has no Ollama equivalent.",
        "PARAMETER temperature 0",
        f"PARAMETER repeat_penalty {DECODING.repetition_penalty}",
        "PARAMETER repeat_last_n 64",
        f"PARAMETER num_predict {DECODING.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def load_merged(run: Path, model: str | None = None) -> tuple[Any, Any, str]:
    """(base with the run's adapter merged in, tokenizer, base name) for ``run``."""
    from catalogtune.infer.generate import Generator, base_model_of

    gen = Generator.from_run(run, model=model, bf16=False)  # one-line errors: no run, no adapter
    merged = gen.model.merge_and_unload()
    return merged.eval(), gen.tok, str(model or base_model_of(Path(run)))


def run(cfg: ExportConfig) -> ExportResult:
    """Merge the run's adapter into its base and write the export ``cfg.format`` asks for."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.run)  # type: ignore[arg-type]
    if not run_dir.is_dir():
        raise CatalogtuneError(f"run folder not found: {run_dir}")
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise CatalogtuneError(f"run {run_dir} has no adapter (adapter/adapter_config.json missing; train it first)")
    out = Path(cfg.out) if cfg.out is not None else run_dir / "export"
    model, tok, base = load_merged(run_dir, cfg.model)
    if cfg.format != "merged":
        arch_of(model.config)  # refuse an unsupported architecture before writing anything
    folder = out / ("merged" if cfg.format == "merged" else f"{cfg.format}-{cfg.quant}")
    manifest: dict[str, Any] = {"format": cfg.format, "run": str(run_dir.resolve()), "base": base,
                                "model_type": getattr(model.config, "model_type", "")}
    with atomic_dir(folder) as tmp:
        if cfg.format == "merged":
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            files = sorted(p.name for p in tmp.iterdir())
        else:
            name = f"{Path(base).name}+{run_dir.resolve().name}"
            manifest["quant"] = cfg.quant
            manifest["tensors"] = write_gguf(model, tok, tmp / "model.gguf", cfg.quant, name=name, base=base)
            files = ["model.gguf"]
            if cfg.format == "ollama":
                note = f"{name}, adapter merged, {cfg.quant}"
                (tmp / "Modelfile").write_text(modelfile(tok, "model.gguf", note), encoding="utf-8")
                files.append("Modelfile")
        manifest["files"] = files
        manifest["seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportResult(path=folder, files=[folder / f for f in files], manifest=manifest)


def main(argv: list[str]) -> int:
    """`catalogtune export RUN --format merged|gguf|ollama [--quant f16|q8_0] [--out DIR]`."""
    p = argparse.ArgumentParser(prog="catalogtune export", description=__doc__.splitlines()[0])
    p.add_argument("run", help="training run folder (config.yaml + adapter/)")
    config.add_arguments(p, ExportConfig, skip=("run",))
    ns = p.parse_args(argv)
    cfg = config.from_namespace(ExportConfig, ns)
    res = run(cfg)
    for f in res.files:
        print(f)
    if cfg.format == "ollama":
        print(f"next: cd {res.path} && ollama create {Path(res.manifest['base']).name}-ft -f Modelfile")
    return 0
