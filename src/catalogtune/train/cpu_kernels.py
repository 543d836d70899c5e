"""CPU speed-ups for LoRA training that the libraries do not give on small models.

Measured on 2 cores with SmolLM2-135M, batch 8 of ~165 tokens (see `catalogtune bench train`):

- ``freeze_in_bf16``: the frozen base weights are stored in bf16 when training under bf16
  autocast. Autocast would otherwise cast every fp32 weight to bf16 on every forward (and keep
  the copies for backward); the frozen weights never change, so their fp32 copy buys nothing.
  LoRA weights stay float32 (the optimizer updates them).
- ``FastDropout``: LoRA dropout from random bytes (one RNG call per 4 elements) instead of
  ``bernoulli_``, which took a quarter of a training step with dropout 0.05.
- ``fuse_lora_groups``: q/k/v and gate/up LoRA layers computed as one stacked matmul each, in
  one autograd node with a hand-written backward (fewer, larger matmuls; no casts).
- ``fast_rms_norms``: RMS norms with a frozen weight as one autograd node (half the time).
- ``pack_weight``: frozen bf16 weights of those groups (and the output layer, in the chunked
  cross-entropy) kept a second time in oneDNN's blocked layout, once for ``x W^T`` and once for
  ``g W``: the plain-layout matmul re-packs the weight on every call, the packed one runs
  7-9 % faster on the decoder's shapes and 24 % faster on SmolLM2's output-layer gradient.

Attention has its own module, `catalogtune.train.cpu_attention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
def _bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16

def freeze_in_bf16(model: nn.Module, everything: bool = True) -> int:
    """Store frozen floating-point parameters of ``model`` in bf16; returns how many.

    ``everything``: embeddings and norms too, so the activations between layers (the residual
    stream) are bf16, as in a model loaded with ``dtype=bfloat16`` (what Unsloth and most
    QLoRA recipes train): half the memory traffic for the many elementwise passes and no
    casts. Otherwise only the linear layers' weights (not an output layer tied to the input
    embedding), and the residual stream stays float32 as under plain autocast.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = 0
    for mod in model.modules():
        if not everything and not isinstance(mod, nn.Linear):
            continue
        for name, p in mod.named_parameters(recurse=False):
            if p.requires_grad or p.dtype != torch.float32 or (not everything and id(p) in tied):
                continue
            p.data = p.data.to(torch.bfloat16)
            n += 1
    return n


class FastDropout(nn.Module):
    """Inverted dropout whose mask comes from random bytes: ``p`` is rounded to a multiple of 1/256.

    ``torch.Tensor.random_`` on int32 fills 31 random bits per element; three of its four bytes
    are uniform, so a mask of ``n`` elements needs ``ceil(n / 3)`` draws, several times cheaper on
    CPUs than ``bernoulli_``'s one float draw per element.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError("dropout p must be in [0, 1)")
        self.threshold = round(p * 256)
        self.p = self.threshold / 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 2) // 3, dtype=torch.int32, device=x.device).random_()
        # the low three bytes of each word are uniform (random_ leaves the sign bit at 0)
        keep = words.view(torch.uint8).view(-1, 4)[:, :3].reshape(-1)[:n].view(x.shape) >= self.threshold
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:  # noqa: D102 - nn.Module
        return f"p={self.p}"


def fast_lora_dropout(model: nn.Module) -> int:
    """Replace PEFT's LoRA dropout modules (``nn.Dropout`` with p > 0) by ``FastDropout``."""
    n = 0
    for mod in model.modules():
        drops = getattr(mod, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, drop in list(drops.items()):
                if isinstance(drop, nn.Dropout) and drop.p > 0:
                    drops[name] = FastDropout(drop.p)
                    n += 1
    return n


def _plain_adapter(layer: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """The one active plain-LoRA adapter of a PEFT ``Linear`` called under bf16 autocast, else None.

    None (use PEFT's own forward) for extra call arguments, disabled or merged adapters,
    several adapters, variants such as DoRA, or no autocast.
    """
    active = layer.active_adapters
    if (args or kwargs or layer.disable_adapters or layer.merged or len(active) != 1 or not _bf16_autocast()
            or active[0] in layer.lora_variant or active[0] not in layer.lora_A):
        return None
    return active[0]


def _lora_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """PEFT LoRA ``Linear.forward`` for one plain adapter under bf16 autocast, with fewer passes.

    PEFT casts the input to the LoRA weights' float32 and autocast casts it back, per layer,
    then scales the LoRA output in a separate pass; here the input is cast to bf16 once and the
    scale is folded into the (rank x out) matrix B. Anything else goes to PEFT's own forward.
    """
    name = _plain_adapter(self, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    xb = x.to(torch.bfloat16)
    base = self.base_layer
    a = self.lora_A[name].weight.to(torch.bfloat16)
    b = (self.lora_B[name].weight * self.scaling[name]).to(torch.bfloat16)
    y = torch.nn.functional.linear(xb, base.weight.to(torch.bfloat16), None if base.bias is None else base.bias.to(torch.bfloat16))
    return y + torch.nn.functional.linear(torch.nn.functional.linear(self.lora_dropout[name](xb), a), b)


def fast_lora_forward(model: nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` of ``model`` the ``_lora_forward`` path; returns how many."""
    import types

    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for mod in model.modules():
        if type(mod) is LoraLinear and isinstance(mod.base_layer, nn.Linear):
            mod.forward = types.MethodType(_lora_forward, mod)
            n += 1
    return n


class _RMSNorm(torch.autograd.Function):
    """RMS norm with a frozen weight: float32 statistics, bf16 in and out, backward written out.

    ``gemma``: the weight enters as ``1 + w`` and the product is taken in float32 (Gemma's
    convention); otherwise the normalised input is rounded to the input dtype first, then
    multiplied by ``w`` (Llama's). Half the time of the module's autograd chain on CPU.
    """

    @staticmethod
    def forward(ctx, x, weight, eps, gemma):  # type: ignore[override]
        xf = x.float()
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        xhat = xf.mul_(r)
        ctx.save_for_backward(x, r, weight)
        ctx.gemma = gemma
        if gemma:
            return xhat.mul_(1.0 + weight.float()).to(x.dtype)
        return xhat.to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, r, weight = ctx.saved_tensors
        gh = grad.float() * (1.0 + weight.float()) if ctx.gemma else (grad * weight).float()
        xhat = x.float().mul_(r)
        dot = (gh * xhat).mean(-1, keepdim=True)
        return gh.sub_(xhat.mul_(dot)).mul_(r).to(x.dtype), None, None, None


_NORMS = {"LlamaRMSNorm": False, "MistralRMSNorm": False, "Qwen2RMSNorm": False, "Qwen3RMSNorm": False,
          "Gemma3RMSNorm": True, "GemmaRMSNorm": True, "Gemma2RMSNorm": True}
"""RMS norm classes whose forward `_RMSNorm` reproduces, and whether they use Gemma's ``1 + w``."""


def _norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if self.weight.requires_grad or x.dtype != torch.bfloat16:
        return type(self).forward(self, x)
    eps = getattr(self, "variance_epsilon", None)
    return _RMSNorm.apply(x, self.weight, getattr(self, "eps", 1e-6) if eps is None else eps,
                          _NORMS[type(self).__name__])


def fast_rms_norms(model: nn.Module) -> int:
    """Route the known RMS norm modules of ``model`` through `_RMSNorm` (bf16 inputs only)."""
    import types

    n = 0
    for mod in model.modules():
        if type(mod).__name__ in _NORMS and isinstance(getattr(mod, "weight", None), nn.Parameter):
            mod.forward = types.MethodType(_norm_forward, mod)
            n += 1
    return n


# ----------------------------------------------------------------------------- memory


def keep_freed_memory() -> bool:
    """glibc malloc settings for a CPU training process; True where they were taken.

    A training step allocates and frees the same few hundred MB of activations each step.
    By default glibc gives blocks over 32 MiB their own mapping and returns freed memory at
    the top of the heap to the system, so pages come back zeroed and page-faulted, step after
    step (up to 450k faults on a long SmolLM2 batch). Here every block below 1 GiB comes from
    the heap, the heap is never trimmed, and all threads share one arena (the autograd thread's
    own arena would map its big blocks anew): once the heap has reached the run's peak, steps
    reuse its pages. The peak RSS is what it was; memory is returned when the process ends.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has it as a no-op, others lack it)
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all([mallopt(m_mmap_threshold, 1 << 30), mallopt(m_trim_threshold, 1 << 30), mallopt(m_arena_max, 1)])


# ----------------------------------------------------------------------------- packed weights


def pack_weight(w: torch.Tensor) -> torch.Tensor | None:
    """``w`` (out, in) in oneDNN's blocked layout for `packed_linear`, or None where that is not possible.

    Only frozen, plain bf16 CPU tensors (not tensor subclasses such as sharded parameters).
    The packed copy does not follow later changes to ``w``: use it for frozen weights only.
    """
    if (type(w) is not torch.Tensor or w.device.type != "cpu" or w.dtype != torch.bfloat16 or w.dim() != 2
            or w.requires_grad or not torch.backends.mkldnn.is_available()):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None)
    except (RuntimeError, AttributeError):  # a build without these (inductor's) oneDNN ops
        return None


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for ``packed = pack_weight(W)``; ``x`` is (..., in) bf16."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


# ----------------------------------------------------------------------------- fused LoRA groups

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling projections that read the same input in Llama/Gemma-style decoders."""


class _FusedLoraFn(torch.autograd.Function):
    """``y = x W^T + (x A^T) B^T`` for stacked frozen ``W``, stacked ``A`` and block-diagonal ``B``.

    One autograd node instead of PEFT's per-layer chain (base matmul, cast, A, B, scale, add),
    with the backward written out: ``dx = g W + (g B) A``, ``dA = (g B)^T x``, ``dB = g^T (x A^T)``.
    Matmuls run in bf16; the LoRA gradients come back in the parameters' float32. Only ``x``
    and the (tokens x rank) product ``x A^T`` are kept for the backward pass. ``packed`` is
    None or (`pack_weight` of ``W``, of ``W^T``) for the two base matmuls.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, packed, a, b, scales, outs, *ab):  # type: ignore[override]
        # a: the members' A stacked, (n*r, in); b: their B (times scale) block-diagonal,
        # (sum outs, n*r), both bf16 copies of the parameters ``ab`` (made once per optimizer
        # step by `_Group`); the zero blocks of b cost (n-1)/n of a rank-r product, nothing
        # next to the base matmul, and keep it one contiguous matmul
        n = len(outs)
        xb = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        xa = xb @ a.T  # (N, n*r)
        if packed is not None:
            y = packed_linear(xb, packed[0], bias)
        else:
            y = torch.addmm(bias, xb, weight.T) if bias is not None else xb @ weight.T
        y.addmm_(xa, b.T)
        ctx.save_for_backward(xb, xa, weight, a, b)
        ctx.packed = packed
        ctx.meta = (scales, outs, [p.shape[0] for p in ab[:n]], x.shape, x.dtype, ab[0].dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        xb, xa, weight, a, b = ctx.saved_tensors
        scales, outs, ranks, x_shape, x_dtype, p_dtype = ctx.meta
        g = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)
        gb = g @ b  # (N, n*r): s * g_i B_i per member (B already holds the scale)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = g @ weight if ctx.packed is None else packed_linear(g, ctx.packed[1])
            dx = dx.addmm_(gb, a).view(x_shape).to(x_dtype)
        grads_a = list((gb.T @ xb).to(p_dtype).split(ranks))
        full_b = (g.T @ xa).to(p_dtype)  # (sum outs, n*r); member i's gradient is block (i, i)
        grads_b, col, row = [], 0, 0
        for s, o, r in zip(scales, outs, ranks):
            grads_b.append(full_b[col:col + o, row:row + r].mul(s))
            col, row = col + o, row + r
        return (dx, None, None, None, None, None, None, None, *grads_a, *grads_b)


_UPDATES = [0]
"""Optimizer steps so far in this process (see `weights_updated`)."""


def weights_updated(*_: Any) -> None:
    """Record that the optimizer changed the LoRA weights (usable as an optimizer step hook)."""
    _UPDATES[0] += 1


class _Group:
    """Members of one fused group: their stacked frozen weight, the bf16 LoRA copies of the
    current optimizer step, and the outputs computed but not yet picked up."""

    def __init__(self, members: list[nn.Module]):
        self.members = members
        self.weight = torch.cat([m.base_layer.weight.detach().to(torch.bfloat16) for m in members])
        self.outs = tuple(m.base_layer.out_features for m in members)
        start = 0
        for m, o in zip(members, self.outs):  # the members' weights become views: no second copy
            m.base_layer.weight.data = self.weight[start:start + o]
            start += o
        biases = [m.base_layer.bias for m in members]
        self.bias = None if all(b is None for b in biases) else torch.cat([
            (b.detach() if b is not None else torch.zeros(m.base_layer.out_features)).to(torch.bfloat16)
            for b, m in zip(biases, members)])
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lora: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        fwd = pack_weight(self.weight)
        bwd = pack_weight(self.weight.t().contiguous()) if fwd is not None else None
        self.packed = (fwd, bwd) if bwd is not None else None

    def lora(self, name: str) -> tuple[torch.Tensor, torch.Tensor, list, tuple]:
        """(stacked bf16 A, block-diagonal bf16 scaled B, the parameters, the scales) for ``name``.

        The bf16 copies are remade only when a parameter changed: its version counter moves on
        in-place updates, and `weights_updated` counts the optimizer steps (torch's fused
        AdamW updates in place without moving version counters). Once per step, not per call.
        """
        a_params = [m.lora_A[name].weight for m in self.members]
        b_params = [m.lora_B[name].weight for m in self.members]
        scales = tuple(m.scaling[name] for m in self.members)
        key = (name, scales, _UPDATES[0], *(p._version for p in a_params + b_params),
               *(id(p) for p in a_params + b_params))
        if self._lora is None or self._lora[0] != key:
            with torch.no_grad():
                dt = torch.bfloat16
                a = torch.cat([p.to(dt) for p in a_params])
                b = torch.block_diag(*[(p * s).to(dt) for p, s in zip(b_params, scales)])
            self._lora = (key, a, b)
        return self._lora[1], self._lora[2], a_params + b_params, scales

    def fused(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The whole group's output for ``x``, (..., sum of outs)."""
        a, b, params, scales = self.lora(name)
        packed = self.packed if x.device.type == "cpu" else None
        return _FusedLoraFn.apply(x, self.weight, self.bias, packed, a, b, scales, self.outs, *params)

    def run(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """This member's output for ``x``: computed with the whole group, or picked up."""
        idx = self.members.index(member)
        hit = self.pending.pop(idx, None)
        if hit is not None and hit[0] is x:
            return hit[1]
        parts = self.fused(member.active_adapters[0], x).split(self.outs, dim=-1)
        self.pending = {j: (x, p) for j, p in enumerate(parts) if j != idx}
        return parts[idx]


def _grouped_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _plain_adapter(self, args, kwargs)
    if name is None or not isinstance(self.lora_dropout[name], nn.Identity):
        self._ct_group.pending.clear()
        return type(self).forward(self, x, *args, **kwargs)
    return self._ct_group.run(self, x)


def fuse_lora_groups(model: nn.Module) -> int:
    """Route every plain PEFT LoRA ``Linear`` of ``model`` through `_FusedLoraFn`.

    q/k/v and gate/up siblings (same parent) form one group each: the first called computes
    all of them in one pass, the others pick up their slice when called with the same input.
    Any other LoRA linear is a group of one. The frozen base weights must already be bf16
    (``freeze_in_bf16``); the stacked copies are made once here. Returns the groups made.
    """
    import types

    from peft.tuners.lora import Linear as LoraLinear

    groups = 0
    for parent in model.modules():
        children = {n: c for n, c in parent.named_children()
                    if type(c) is LoraLinear and isinstance(c.base_layer, nn.Linear)
                    and c.base_layer.weight.dtype == torch.bfloat16}
        taken: set[str] = set()
        for names in GROUPS:
            if all(n in children for n in names):
                sets = [list(names)]
                taken.update(names)
                break
        else:
            sets = []
        sets += [[n] for n in children if n not in taken]
        for names in sets:
            group = _Group([children[n] for n in names])
            for n in names:
                children[n]._ct_group = group
                children[n].forward = types.MethodType(_grouped_forward, children[n])
            groups += 1
    return groups
