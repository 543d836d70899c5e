"""The CUDA paths: the torch backend in bf16 on a GPU, QLoRA 4-bit, and `--backend unsloth`.

Skipped on machines without CUDA (CI); they run where a GPU is (`pytest -m gpu`). Each trains
the tiny random Llama on a few synthetic records, like the CPU tests in test_train.py.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from catalogtune.train.stage import run
from catalogtune.train.batches import read_split
from catalogtune.train.loop import Loop
from helpers import small_train_cfg, write_train_val

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
needs_unsloth = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth")

@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    return write_train_val(tmp_path_factory.mktemp("gpudata"))


@pytest.fixture
def gpu_cfg(gpu_data, tiny_model_dir, tmp_path):
    def make(name="run", **kw):
        return small_train_cfg(gpu_data, tiny_model_dir, tmp_path / name, **{"bf16": "true", **kw})
    return make


def _losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("loss") is not None]


def _train_and_check(cfg, gpu_data) -> tuple[Loop, dict]:
    """Run ``cfg`` through the Loop; assert LoRA weights moved, frozen ones did not, on the GPU."""
    loop = Loop(cfg, read_split(gpu_data, "train"), read_split(gpu_data, "val"))
    before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
    summary = loop.run()
    trainable = [n for n, p in loop.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in loop.model.named_parameters():
        assert p.device.type == "cuda", n
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n
    assert summary["steps"] == cfg.max_steps and summary["backend"] == cfg.backend
    assert summary["device"] == "cuda" and summary["peak_gpu_mb"] > 0 and summary["gpu"]
    assert (cfg.out / "adapter" / "adapter_model.safetensors").is_file()
    return loop, summary


def test_torch_backend_bf16_on_gpu_and_resume_equals_uninterrupted(gpu_cfg, gpu_data):
    loop, summary = _train_and_check(gpu_cfg("full", max_steps=6, eval_every=0, save_every=3), gpu_data)
    assert loop.bf16 and summary["best_val_loss"] is None
    assert "bf16_frozen" in summary["speed_ups"]
    losses = _losses(loop.run_dir)
    assert all(x == x for x in losses) and min(losses[-2:]) < losses[0]  # finite, and it learns
    def die_at_4(step, loop):  # a hard failure after step 4: the step-3 checkpoint is what is left
        if step == 4:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run(gpu_cfg("part", max_steps=6, eval_every=0, save_every=3), callback=die_at_4)
    resumed = run(gpu_cfg("part", max_steps=6, eval_every=0, save_every=3, resume=True))
    assert resumed.summary["resumed_from"] == 3 and resumed.summary["steps"] == 6
    a = load_file(str(loop.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@needs_bnb
def test_qlora_4bit_trains_adapters_over_a_frozen_nf4_base(gpu_cfg, gpu_data):
    import bitsandbytes as bnb

    loop, summary = _train_and_check(gpu_cfg("qlora", load_in_4bit=True, max_steps=6), gpu_data)
    quantized = [m for m in loop.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_state.quant_type == "nf4" for m in quantized)
    assert summary["best_val_loss"] is not None and summary["best_val_loss"] == summary["best_val_loss"]
    assert "bf16_frozen" not in summary.get("speed_ups", {})  # the CPU/bf16 speed-ups keep off 4-bit
    losses = _losses(loop.run_dir)
    assert min(losses[-2:]) < losses[0]


@needs_unsloth
def test_unsloth_backend_trains_and_writes_a_peft_adapter(gpu_cfg, gpu_data):
    from peft import PeftConfig

    cfg = gpu_cfg("unsloth", backend="unsloth", max_steps=6)
    loop, summary = _train_and_check(cfg, gpu_data)
    assert type(loop.model.get_base_model()).forward.__module__.startswith("unsloth")  # Unsloth's patched model
    losses = _losses(loop.run_dir)
    assert min(losses[-2:]) < losses[0]
    adapter = PeftConfig.from_pretrained(str(cfg.out / "adapter"))
    assert adapter.r == 4 and set(adapter.target_modules) >= {"q_proj", "v_proj"}
