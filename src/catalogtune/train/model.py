"""The trainable model: base model + LoRA (PEFT), and a loss that skips wasted output-layer work.

``LossModel`` runs the base model's inner decoder, keeps only the hidden states whose next
token carries loss (the description), and applies the output layer + cross-entropy to those
rows in chunks (``linear_cross_entropy``). The (rows x vocabulary) logits of one chunk are the
only ones alive at a time, and their gradient is computed in the same pass, so nothing of
size vocabulary is kept for the backward pass: this matters for Gemma's 262k vocabulary.
``LossModel`` is an ``nn.Module`` so ``accelerate`` can wrap it (DDP/FSDP hook its forward).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from catalogtune.train.cpu_kernels import pack_weight, packed_linear
from catalogtune.core.util import CatalogtuneError, require

CHUNK_ELEMENTS = 1 << 24
"""Logits per chunk (rows x vocabulary): 32 MiB in bf16, small enough to stay near the caches."""
MIN_CHUNK_ROWS = 256
"""Never fewer rows per chunk: the output-layer matmul needs about this many to run near the
matmul ceiling (Gemma's 262k vocabulary would otherwise get 64-row chunks, 1.4x slower)."""

TINY = 1e-30
"""Target probabilities below this are recomputed from float32 logits (bf16 rounding of a tiny p)."""

_WORKSPACE: dict[str, Any] = {}


def chunk_rows(vocab: int) -> int:
    """Rows of ``h`` per chunk of the chunked cross-entropy for a ``vocab``-wide output layer."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, vocab))


def _logits_buffer(rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (rows x vocab) buffer that every chunk and every step reuses (CPU only).

    A fresh 30-130 MB logits tensor per chunk costs a page fault per 4 KiB page (glibc maps
    blocks over 32 MiB anew on every allocation): about 8 % of a SmolLM2 training step on 2
    cores, a third of Gemma's output layer. One buffer per process, replaced when the shape
    family changes; the softmax then runs in place in it.
    """
    key = (device, dtype, vocab)
    buf = _WORKSPACE.get("buf")
    if buf is None or _WORKSPACE.get("key") != key or buf.shape[0] < rows:
        _WORKSPACE.pop("buf", None)  # drop the old buffer before making the new one
        buf = torch.empty(rows, vocab, dtype=dtype, device=device)
        _WORKSPACE.update(key=key, buf=buf)
    return buf[:rows]


def _packed_transpose(w: torch.Tensor) -> torch.Tensor | None:
    """``w^T`` packed for oneDNN (`train_fast.pack_weight`), made once per frozen weight (CPU only).

    The output layer's input gradient ``g @ W`` (K = vocabulary) runs 1.2x faster packed.
    """
    if w.device.type != "cpu" or w.requires_grad or w.dtype != torch.bfloat16:
        return None
    key = (id(w), w.data_ptr(), w._version, tuple(w.shape))
    hit = _WORKSPACE.get("wt")
    if hit is None or hit[0] != key:
        _WORKSPACE["wt"] = hit = (key, pack_weight(w.t().contiguous()))
    return hit[1]


def _chunk(hc: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, tgt: torch.Tensor,
           grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss, d loss / d logits or None) of one chunk of rows, in the matmul dtype.

    The softmax runs once, in the logits' dtype (bf16 under autocast, float32 accumulation
    inside), and gives both the loss, ``-log p[target]``, and the gradient, ``p - onehot``:
    one pass over the (rows x vocabulary) logits instead of logsumexp + exp + casts.
    bf16 logits are what any bf16-autocast trainer computes the loss from. On CPUs the logits
    and then the probabilities live in one reused buffer (`_logits_buffer`): the returned
    gradient is only valid until the next chunk.
    """
    if hc.device.type == "cpu":
        p = _logits_buffer(hc.shape[0], w.shape[0], torch.result_type(hc, w), hc.device)
        torch.mm(hc, w.T, out=p)
        if b is not None:
            p += b
        torch.ops.aten._softmax.out(p, -1, False, out=p)  # in place: row-wise, same index
    else:
        z = hc @ w.T
        if b is not None:
            z += b
        p = torch.softmax(z, dim=-1)
    rows = torch.arange(len(tgt), device=p.device)
    pt = p[rows, tgt].float()
    loss = -torch.log(pt.clamp_min(TINY))
    small = pt < TINY
    if bool(small.any()):  # a very unlikely target: the exact value from float32 logits
        zs = hc[small].float() @ w.float().T
        if b is not None:
            zs += b.float()
        loss[small] = torch.logsumexp(zs, dim=-1) - zs.gather(1, tgt[small][:, None]).squeeze(1)
    if not grads:
        return loss.sum(), None
    p[rows, tgt] -= 1.0
    return loss.sum(), p


def _softcap_chunk(hc: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, tgt: torch.Tensor,
                   softcap: float, grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``_chunk`` for models with a final logit soft cap, in float32 throughout."""
    z = (hc @ w.T).float()
    if b is not None:
        z += b.float()
    t = torch.tanh(z / softcap)
    z = t * softcap
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z.gather(1, tgt[:, None]).squeeze(1)).sum()
    if not grads:
        return loss, None
    g = z.sub_(lse[:, None]).exp_()
    g[torch.arange(len(tgt), device=g.device), tgt] -= 1.0
    g *= 1.0 - t * t
    return loss, g.to(hc.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of ``softcap(h @ W.T + b)`` against ``targets``; chunked, fused grads."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, dtype):  # type: ignore[override]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        chunk = chunk_rows(weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            wt = _packed_transpose(w) if need_h and not need_w and w is weight else None
            for s in range(0, h.shape[0], chunk):
                hc = h[s:s + chunk].to(dtype)
                tgt = targets[s:s + chunk]
                if softcap:
                    loss, g = _softcap_chunk(hc, w, b, tgt, softcap, need_h or need_w)
                else:
                    loss, g = _chunk(hc, w, b, tgt, need_h or need_w)
                total += loss
                if g is not None:
                    if need_h:
                        gh = g @ w if wt is None else packed_linear(g, wt)
                        grad_h[s:s + chunk] = gh.to(h.dtype)
                    if need_w:
                        grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
    bias: torch.Tensor | None = None, softcap: float | None = None, dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Summed next-token cross-entropy of rows ``h`` (N, d) under the output layer ``weight`` (V, d).

    Matmuls run in ``dtype`` (bf16 under autocast), softmax and the sum in float32.
    """
    if dtype is None:
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    if h.shape[0] == 0:
        return h.sum() * 0.0
    return _LinearCrossEntropy.apply(h, weight, bias, targets, softcap, dtype)


class LossModel(nn.Module):
    """Wraps a (PEFT) causal LM; ``forward`` returns the summed loss over the description tokens."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        self._decoder = base.get_decoder()
        self._head = base.get_output_embeddings()
        if self._decoder is None or self._head is None:
            raise CatalogtuneError(f"{type(base).__name__} exposes no decoder/output layer to train")
        self.softcap = getattr(getattr(base.config, "get_text_config", lambda: base.config)(),
                               "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, loss_rows: torch.Tensor, loss_targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (float32 scalar) of the rows ``loss_rows`` of the flattened batch."""
        out = self._decoder(input_ids=input_ids, use_cache=False)
        h = out[0] if isinstance(out, tuple) else out.last_hidden_state  # (B, T, d)
        h = h.reshape(-1, h.shape[-1]).index_select(0, loss_rows)  # (N, d): loss rows only
        head = self._head
        return linear_cross_entropy(h, head.weight, loss_targets, getattr(head, "bias", None), self.softcap)


def lora_targets(names: list[str]) -> Any:
    """PEFT's ``target_modules``: ``["all-linear"]`` becomes the string PEFT expects."""
    return "all-linear" if names == ["all-linear"] else list(names)


def load_for_training(cfg: Any, device: torch.device) -> tuple[nn.Module, Any]:
    """(PEFT model with fresh LoRA weights, tokenizer) for ``cfg`` on ``device``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from catalogtune.core import models

    if cfg.backend == "unsloth":
        from catalogtune.train.unsloth import load_unsloth

        model, tok = load_unsloth(cfg)
    elif cfg.load_in_4bit:
        model, tok = _load_4bit(cfg, device)
    else:
        model, tok = models.load(cfg.model, dtype=torch.float32, device=str(device))
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if not isinstance(model, PeftModel):
        lora = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=lora_targets(cfg.target_modules), use_dora=cfg.use_dora,
            bias="none", task_type="CAUSAL_LM",
        )
        try:
            with warnings.catch_warnings():  # PEFT calls a property transformers has deprecated
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, lora)
        except ValueError as exc:
            raise CatalogtuneError(f"LoRA setup failed: {str(exc).splitlines()[0]}") from None
    return model, tok


def _load_4bit(cfg: Any, device: torch.device) -> tuple[nn.Module, Any]:
    require("bitsandbytes", extra="gpu")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from catalogtune.core import models

    path = models.resolve(cfg.model)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    token = models.hub_token()
    tok = AutoTokenizer.from_pretrained(str(path), token=token)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), quantization_config=bnb, device_map={"": device.index or 0}, dtype=torch.bfloat16, token=token,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model, tok


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (LoRA weights) by name, detached copies on CPU."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into ``model`` (names must match exactly)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        raise CatalogtuneError("the checkpoint's LoRA weights do not match this model/config")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p.device, p.dtype))


def bf16_supported() -> bool:
    """Whether bf16 autocast is fast here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)
