"""The compute ceiling of this machine and the FLOPs a LoRA training step needs.

`matmul_ceiling_tflops` times a large bf16 matmul (the best any training loop on these cores
can hope for). `LoraFlops` counts the matmul work one training token needs, so that
``achieved = flops / wall time`` can be set against the ceiling.

What is counted (the same formula for every system measured, so it rewards useful work, not
wasted work such as padding or output-layer logits on prompt positions):
- every non-pad token through the decoder: forward ``2 N`` + input-gradient ``2 N`` FLOPs per
  token, N = weights in the decoder's linear layers (frozen, so no weight gradient);
- LoRA adapters: ``6 N_lora`` per token (forward, input gradient and weight gradient);
- causal attention: ``12 * heads * head_dim * ctx`` per token per layer (QK^T and AV, forward
  2x, backward 4x), ctx = the positions a token attends to (its index in its own sample + 1);
- the output layer only where loss is taken: ``4 * vocab * hidden`` per useful token.
Embedding lookups, norms and activations are not matmuls and are left out.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


def matmul_ceiling(n: int = 2048, reps: int = 5, trials: int = 5, dtype: str = "bfloat16",
                   device: str = "cpu", packed: bool = False) -> tuple[float, float]:
    """(TFLOP/s of wall time, TFLOP per process CPU-second) of (n x n) @ (n x n) matmuls.

    Uses all cores (``torch.set_num_threads(os.cpu_count())``); of ``trials`` timings of
    ``reps`` matmuls the median is kept: robust to a single odd trial, and it still drops the
    trials slowed by other jobs on shared cores as long as most are not. The per-CPU-second figure is the same work over this process's CPU time, for
    comparing with training runs measured the same way on busy cores. On ``device="cuda"`` the
    GPU's queue is drained before each clock reading (use n >= 8192 to fill a large GPU).
    ``packed`` (CPU): the product runs on oneDNN's packed weight (``mkldnn._linear_pointwise``, the
    kernel of ``core.kernels.fp32_packed`` and of generation's bf16 copy) instead of ``torch.mm``;
    (0.0, 0.0) on a build without those ops.
    """
    import torch

    if n < 64 or reps < 1 or trials < 1:
        raise ValueError("matmul ceiling needs n >= 64, reps >= 1, trials >= 1")
    torch.set_num_threads(os.cpu_count() or 1)
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    product = lambda: a @ b  # noqa: E731
    if packed:
        try:
            w = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
            product = lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")  # noqa: E731
        except (RuntimeError, AttributeError):  # a build without these (inductor's) oneDNN ops
            return 0.0, 0.0
    product()  # warm-up: oneDNN (cuBLAS) picks and caches its kernel on the first call
    sync()
    walls, cpus = [], []
    for _ in range(trials):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(reps):
            product()
        sync()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    flops = 2.0 * n**3 * reps
    return flops / wall / 1e12, flops / max(cpu, 1e-9) / 1e12


def matmul_ceiling_tflops(n: int = 2048, reps: int = 5, trials: int = 5, dtype: str = "bfloat16") -> float:
    """Wall-time TFLOP/s of a large matmul (median trial, see `matmul_ceiling`)."""
    return matmul_ceiling(n, reps, trials, dtype)[0]


@dataclass(frozen=True)
class LoraFlops:
    """Per-token FLOP counts of a LoRA training step for one model."""

    decoder_params: int
    """Weights in the decoder's linear layers (output layer excluded)."""
    head_params: int
    """Weights of the output layer (vocab x hidden)."""
    lora_params: int
    """Trainable LoRA weights (A and B of every adapted layer)."""
    layers: int
    """Decoder layers with attention."""
    attn_width: int
    """heads x head_dim of the query projection."""

    def flops(self, tokens: float, useful_tokens: float, avg_ctx: float) -> float:
        """Training FLOPs for ``tokens`` non-pad tokens of which ``useful_tokens`` carry loss.

        ``avg_ctx`` is the mean number of positions a token attends to (causal, within its sample).
        """
        per_token = 4 * self.decoder_params + 6 * self.lora_params
        per_token += 12 * self.layers * self.attn_width * avg_ctx
        return tokens * per_token + useful_tokens * 4 * self.head_params


def _linear_params(model: Any, r: int, skip: Sequence[str] = ("lm_head",)) -> tuple[int, int, int]:
    import torch

    decoder = head = lora = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        size = mod.in_features * mod.out_features
        if name.split(".")[-1] in skip:
            head += size
        else:
            decoder += size
            lora += r * (mod.in_features + mod.out_features)
    return decoder, head, lora


def lora_flops(model_dir: str | Path, lora_r: int = 16) -> LoraFlops:
    """Count the weights of ``model_dir``'s architecture without loading any (meta device).

    Assumes LoRA on every linear layer of the decoder (our default and the anchor's "all-linear").
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    decoder, head, lora = _linear_params(model, lora_r)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if head == 0:  # some heads are not nn.Linear; fall back to vocab x hidden
        head = int(text.vocab_size) * int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return LoraFlops(decoder, head, lora, int(text.num_hidden_layers), heads * head_dim)


def avg_context(lengths: Iterable[int]) -> float:
    """Mean attended positions per token over samples of the given token lengths (causal)."""
    total = pairs = 0
    for n in lengths:
        total += n
        pairs += n * (n + 1) // 2
    return pairs / total if total else 0.0
