"""`--backend unsloth`: load the base model and its LoRA adapters with Unsloth (CUDA only).

Unsloth's `FastLanguageModel` swaps in fused Triton kernels for the LoRA MLP/QKV/O layers,
RoPE and cross-entropy, and its own gradient checkpointing; the training loop stays ours
(`catalogtune.train.stage`), so the data, masking, checkpoints and outputs are the same as with the
default torch backend. It is an optional extra that only installs where CUDA is
(``pip install 'catalogtune[unsloth]'``); anywhere else asking for it is a one-line error.

API used (Unsloth's documented entry points, see unsloth/models/loader.py and llama.py):
``FastLanguageModel.from_pretrained(model_name=, max_seq_length=, dtype=, load_in_4bit=, token=)``
-> (model, tokenizer), then ``FastLanguageModel.get_peft_model(model, r=, target_modules=,
lora_alpha=, lora_dropout=, bias="none", use_gradient_checkpointing="unsloth", random_state=)``
-> a PEFT model (so ``save_pretrained`` writes a normal PEFT adapter).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from catalogtune.core.util import CatalogtuneError

INSTALL = "pip install 'catalogtune[unsloth]'"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""All linear layers of a Llama/Gemma/Qwen/Mistral decoder (what Unsloth patches with its kernels)."""


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def _package_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def check_available() -> None:
    """Raise a one-line CatalogtuneError unless CUDA and the unsloth package are both there.

    Cheap (no Unsloth import): the engine calls it before any long work starts.
    """
    cuda, pkg = _cuda_available(), _package_available()
    if cuda and pkg:
        return
    missing = [what for what, ok in (("a CUDA GPU", cuda), ("the unsloth package", pkg)) if not ok]
    fix = INSTALL if cuda else f"run on a CUDA machine with {INSTALL}"
    raise CatalogtuneError(
        f"--backend unsloth needs {' and '.join(missing)}: {fix}, or use the default --backend torch"
    )


def import_unsloth() -> Any:
    """Import Unsloth (first, ahead of transformers and peft where possible) -> FastLanguageModel.

    A missing package or a start-up failure (no GPU it supports) is a one-line CatalogtuneError.
    """
    try:
        import unsloth  # noqa: F401 - must come before FastLanguageModel for its patches
        from unsloth import FastLanguageModel
    except ImportError as exc:
        raise CatalogtuneError(f"unsloth is not importable ({exc}): {INSTALL}") from None
    except Exception as exc:  # e.g. NotImplementedError when it finds no GPU it supports
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogtuneError(f"unsloth failed to start: {first[:200]}") from None
    return FastLanguageModel


def _dtype(bf16: str) -> Any:
    import torch

    # "auto": Unsloth picks bf16 where the GPU has it, else fp16 (dtype=None).
    return {"true": torch.bfloat16, "false": torch.float16}.get(str(bf16).lower())


def _targets(target_modules: Any) -> list[str]:
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules or [])
    if not names or "all-linear" in names:
        return list(DEFAULT_TARGETS)
    return names


def load_unsloth(cfg: Any) -> tuple[Any, Any]:
    """(PEFT model with LoRA adapters, tokenizer) for a `TrainConfig`, loaded with Unsloth.

    Reads ``model``, ``max_length``, ``load_in_4bit``, ``bf16``, ``lora_r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules``, ``use_dora`` and ``seed`` from ``cfg``. The returned
    model already has its adapters (the engine must not wrap it in PEFT again); it lives on the
    GPU. Without CUDA or without the package: a one-line CatalogtuneError.
    """
    check_available()
    if getattr(cfg, "use_dora", False):
        raise CatalogtuneError("DoRA is not supported by the unsloth backend: use --backend torch or --no-use-dora")
    from catalogtune.core import models

    FastLanguageModel = import_unsloth()
    path = models.resolve(cfg.model)
    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(path),
            max_seq_length=int(cfg.max_length),
            dtype=_dtype(getattr(cfg, "bf16", "auto")),
            load_in_4bit=bool(getattr(cfg, "load_in_4bit", False)),
            token=models.hub_token(),
        )
    except OSError as exc:
        raise CatalogtuneError(f"unsloth cannot load model {cfg.model}: {str(exc).splitlines()[0]}") from None
    # Unsloth's fused LoRA kernels apply only with lora_dropout == 0 and bias "none"; other
    # values still train correctly, on the slower PEFT path.
    model = FastLanguageModel.get_peft_model(
        model,
        r=int(cfg.lora_r),
        target_modules=_targets(getattr(cfg, "target_modules", None)),
        lora_alpha=int(cfg.lora_alpha),
        lora_dropout=float(cfg.lora_dropout),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=int(getattr(cfg, "seed", 3407)),
    )
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    return model, tok
