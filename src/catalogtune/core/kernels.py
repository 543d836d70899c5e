"""CPU kernels the stages share: float32 linear layers on oneDNN's packed weights.

torch and its oneDNN ops are imported inside the functions, so ``core`` stays light to import.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def fp32_packed(net: Any) -> Iterator[Any]:
    """Within: every float32 CPU ``nn.Linear`` of ``net`` multiplies with a copy of its weight in
    oneDNN's blocked layout (``mkldnn._linear_pointwise``, as ``infer.generate._bf16_linears`` does in bf16).

    Still float32, the same values to rounding (the likelihoods agree to ~1e-6 per token): oneDNN's
    fp32 kernels ran 1.4-1.8x the speed of ``F.linear`` (MKL) on smollm2-135m's scoring shapes on
    the AMD EPYC here (2 threads). Used for scoring likelihoods and for the MiniLM metric passes.
    The copies live only inside the block (packing the whole 135M model takes a fraction of a
    second; a scoring call takes seconds), so the weights never go stale and the memory comes back.
    A build without these ops runs the layers as they are. Nested or concurrent blocks are safe: a
    layer another block already patched is left to it, and a layer whose copy is gone runs as usual.
    """
    import types

    import torch

    patched = []
    if torch.backends.mkldnn.is_available():
        for m in net.modules():
            w = getattr(m, "weight", None)
            if (type(m) is not torch.nn.Linear or "forward" in m.__dict__ or type(w) is not torch.nn.Parameter
                    or w.device.type != "cpu" or w.dtype != torch.float32):
                continue
            try:
                m._pw32 = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), None)
            except (RuntimeError, AttributeError):  # a build without inductor's oneDNN ops
                break
            m.forward = types.MethodType(_fp32_packed_forward, m)
            patched.append(m)
    try:
        yield net
    finally:
        for m in patched:
            del m.forward, m._pw32


def _fp32_packed_forward(self: Any, x: Any) -> Any:
    """``nn.Linear.forward`` on the layer's packed float32 weight (``fp32_packed``); other dtypes as usual."""
    import torch

    packed = self.__dict__.get("_pw32")  # gone when another thread's block ended meanwhile
    if packed is None or x.dtype != torch.float32:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
