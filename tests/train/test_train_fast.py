"""CPU speed-ups of the training engine: same numbers as the stock path, within bf16 precision."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from catalogtune.train import cpu_attention as train_attention

from catalogtune.train import cpu_kernels as train_fast
from catalogtune.train.model import linear_cross_entropy

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _qkv(b=2, h=6, hkv=2, t=37, d=16, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g).to(dtype).requires_grad_()
    k = torch.randn(b, hkv, t, d, generator=g).to(dtype).requires_grad_()
    v = torch.randn(b, hkv, t, d, generator=g).to(dtype).requires_grad_()
    return q, k, v


def _reference(q, k, v, mask=None):
    """float32 attention with repeated key/value heads (transformers' repeat_kv order)."""
    rep = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(rep, dim=1)
    vf = v.float().repeat_interleave(rep, dim=1)
    kw = {"attn_mask": mask} if mask is not None else {"is_causal": True}
    return F.scaled_dot_product_attention(q.float(), kf, vf, **kw).transpose(1, 2)


MODULE = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=True)


def test_cpu_attention_matches_float32_causal_gqa_forward_and_backward():
    q, k, v = _qkv()
    with torch.autocast(**BF16):
        out, _ = train_attention.cpu_attention(MODULE, q, k, v, None, scaling=16 ** -0.5)
    ref = _reference(q, k, v)
    assert out.shape == ref.shape == (2, 37, 6, 16)
    assert (out.float() - ref).abs().max().item() < 0.03
    grad = torch.randn_like(ref)
    (out.float() * grad).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (ref * grad).sum().backward()
    for a, t in zip(got, (q, k, v)):
        rel = ((a.float() - t.grad.float()).norm() / t.grad.float().norm()).item()
        assert rel < 0.03


def test_cpu_attention_with_a_padding_mask_stays_finite_and_matches():
    q, k, v = _qkv(t=12)
    keep = torch.ones(2, 1, 12, 12, dtype=torch.bool).tril()
    keep[1, :, :, :4] = False  # the second sample's first 4 positions are padding
    keep[1, :, :4, :] = False  # ... and its padded rows see nothing at all
    with torch.autocast(**BF16):
        out, _ = train_attention.cpu_attention(MODULE, q, k, v, keep, scaling=0.25)
    assert torch.isfinite(out.float()).all()
    ref = _reference(q, k, v, keep)
    assert (out.float()[0] - ref[0]).abs().max().item() < 0.03
    assert (out.float()[1, 4:] - ref[1, 4:]).abs().max().item() < 0.03


def test_cpu_attention_leaves_float32_without_autocast_to_sdpa():
    q, k, v = _qkv(dtype=torch.float32)
    out, _ = train_attention.cpu_attention(MODULE, q, k, v, None, scaling=16 ** -0.5)
    assert out.dtype == torch.float32
    assert torch.allclose(out, _reference(q, k, v), atol=1e-5)


def test_fast_dropout_drops_about_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    drop = train_fast.FastDropout(0.1)
    x = torch.ones(200, 500)
    y = drop(x)
    frac = (y == 0).float().mean().item()
    assert abs(frac - drop.p) < 0.01 and abs(drop.p - 0.1) < 1 / 256
    assert abs(y.mean().item() - 1.0) < 0.02
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - drop.p))
    drop.eval()
    assert drop(x) is x
    assert train_fast.FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        train_fast.FastDropout(1.0)


def _peft_tiny(tiny_model_dir, dropout=0.0):
    from peft import LoraConfig, get_peft_model

    from catalogtune.core import models

    torch.manual_seed(0)
    model, tok = models.load(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; a random B exercises every gradient
            torch.nn.init.normal_(p, std=0.05)
    return model, tok


def _loss_and_grads(model, ids):
    from catalogtune.train.model import LossModel

    lm = LossModel(model)
    rows = torch.arange(ids.numel() - 1)
    targets = ids.reshape(-1)[1:]
    with torch.autocast(**BF16):
        loss = lm(ids, rows, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_fused_lora_groups_give_the_same_loss_and_lora_gradients(tiny_model_dir):
    ids = torch.randint(5, 500, (3, 20), generator=torch.Generator().manual_seed(1))
    stock, _ = _peft_tiny(tiny_model_dir)
    train_fast.freeze_in_bf16(stock)
    fused, _ = _peft_tiny(tiny_model_dir)
    train_fast.freeze_in_bf16(fused)
    groups = train_fast.fuse_lora_groups(fused)
    assert groups == 2 * 4  # per layer: q/k/v, o, gate/up, down
    loss0, g0 = _loss_and_grads(stock, ids)
    loss1, g1 = _loss_and_grads(fused, ids)
    assert loss1 == pytest.approx(loss0, rel=5e-3)
    assert set(g0) == set(g1) and len(g0) == 2 * 7 * 2
    for name in g0:
        rel = ((g1[name] - g0[name]).norm() / g0[name].norm()).item()
        assert rel < 0.05, name
        assert g1[name].dtype == torch.float32
    # the base weights stay frozen and untouched by the fused path
    assert all(not p.requires_grad for n, p in fused.named_parameters() if "lora_" not in n)
    # ... and with rotary + attention as one node on top (Llama attention modules only)
    assert train_attention.use_cpu_attention(fused) and train_attention.fast_llama_attention(fused) == 2
    loss2, g2 = _loss_and_grads(fused, ids)
    assert loss2 == pytest.approx(loss0, rel=5e-3)
    for name in g0:
        assert ((g2[name] - g0[name]).norm() / g0[name].norm()).item() < 0.05, name


def test_freeze_in_bf16_keeps_lora_weights_trainable_float32(tiny_model_dir):
    model, _ = _peft_tiny(tiny_model_dir)
    n = train_fast.freeze_in_bf16(model, everything=False)
    assert n == 2 * 7  # the linear layers' weights only (the output layer is tied to the embedding)
    emb = model.get_input_embeddings().weight
    assert emb.dtype == torch.float32
    train_fast.freeze_in_bf16(model)
    assert emb.dtype == torch.bfloat16
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
        assert p.requires_grad == ("lora_" in name)


def test_linear_cross_entropy_matches_torch_and_survives_an_impossible_target():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 32, generator=g, requires_grad=True)
    w = torch.randn(300, 32, generator=g, requires_grad=True)
    tgt = torch.randint(0, 300, (50,), generator=g)
    loss = linear_cross_entropy(h, w, tgt, dtype=torch.float32)
    ref = F.cross_entropy(h @ w.T, tgt, reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref.backward()
    assert torch.allclose(gh, h.grad, atol=1e-4) and torch.allclose(gw, w.grad, atol=1e-4)
    # bf16: the precision of bf16 logits
    assert linear_cross_entropy(h, w, tgt, dtype=torch.bfloat16).item() == pytest.approx(ref.item(), rel=2e-2)
    # a target 200 logits below the best: p underflows, the float32 fallback gives the exact loss
    hh = torch.zeros(1, 2)
    hh[0, 0] = 1.0
    ww = torch.tensor([[200.0, 0.0], [0.0, 0.0]])
    exact = F.cross_entropy(hh @ ww.T, torch.tensor([1]), reduction="sum").item()
    got = linear_cross_entropy(hh, ww, torch.tensor([1]), dtype=torch.bfloat16).item()
    assert got == pytest.approx(exact, rel=1e-2) and exact > 150


def test_packed_weights_give_the_plain_matmuls_and_refuse_what_they_cannot_pack():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g).bfloat16()
    x = torch.randn(3, 7, 40, generator=g).bfloat16()
    packed = train_fast.pack_weight(w)
    if packed is None:
        pytest.skip("this torch build has no oneDNN weight packing")
    assert torch.equal(train_fast.packed_linear(x, packed), x @ w.T)
    gy = torch.randn(21, 96, generator=g).bfloat16()
    assert torch.equal(train_fast.packed_linear(gy, train_fast.pack_weight(w.t().contiguous())), gy @ w)
    # only frozen bf16 CPU matrices: a float32 or trainable weight keeps the plain matmul
    assert train_fast.pack_weight(w.float()) is None
    assert train_fast.pack_weight(w.clone().requires_grad_()) is None


def test_fused_groups_use_packed_weights_and_follow_a_fused_optimizer(tiny_model_dir):
    from catalogtune.train.loop import make_optimizer

    model, _ = _peft_tiny(tiny_model_dir)
    train_fast.freeze_in_bf16(model)
    train_fast.fuse_lora_groups(model)
    groups = {id(m._ct_group): m._ct_group for m in model.modules() if hasattr(m, "_ct_group")}.values()
    if train_fast.pack_weight(torch.zeros(4, 4, dtype=torch.bfloat16)) is not None:
        assert all(g.packed is not None for g in groups)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, 1e-2, 0.0, torch.device("cpu"))
    assert opt.defaults["fused"] is True
    opt.register_step_post_hook(train_fast.weights_updated)
    ids = torch.randint(5, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.autocast(**BF16):
        first = model(input_ids=ids, labels=ids).loss
    first.backward()
    opt.step()
    opt.zero_grad()
    with torch.autocast(**BF16):  # the groups' bf16 copies of A and B must be the updated ones
        second = model(input_ids=ids, labels=ids).loss
    assert second.item() < first.item() - 1e-3


def test_linear_cross_entropy_input_gradient_with_a_frozen_bf16_output_layer():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(300, 32, generator=g).bfloat16().requires_grad_()
    w = torch.randn(500, 32, generator=g).bfloat16()  # frozen: its packed transpose is used
    tgt = torch.randint(0, 500, (300,), generator=g)
    linear_cross_entropy(h, w, tgt).backward()
    hf = h.detach().float().requires_grad_()
    F.cross_entropy(hf @ w.float().T, tgt, reduction="sum").backward()
    assert ((h.grad.float() - hf.grad).norm() / hf.grad.norm()).item() < 0.02


def _splits(folder, rows: list[dict], n_train: int) -> None:
    """train.parquet and val.parquet of invented records in ``folder``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows[:n_train]), folder / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[n_train:]), folder / "val.parquet")


def _bf16_here() -> bool:
    from catalogtune.train.model import bf16_supported

    return bf16_supported()


@pytest.mark.skipif(not _bf16_here(), reason="bf16 true needs a CPU with AVX512-BF16/AMX")
def test_training_with_and_without_the_speed_ups_agrees(tiny_model_dir, tmp_path):
    from catalogtune.core import config
    from catalogtune.train.stage import TrainConfig, run

    words = "red blue cotton steel kids gift set pack book novel toy game".split()
    _splits(tmp_path, [{"title": f"{words[i % 12]} {words[(i * 5) % 12]}", "content": f"a {words[(i * 7) % 12]} thing " * 3}
                       for i in range(24)], n_train=20)
    out = {}
    for fast in (True, False):
        cfg = config.build(TrainConfig, data=tmp_path, out=tmp_path / f"run-{fast}", model=str(tiny_model_dir),
                           batch_size=4, max_length=48, lr=1e-2, eval_every=3, max_steps=3, lora_r=4,
                           lora_alpha=8, bf16="true", fast_kernels=fast, patience=0)
        out[fast] = run(cfg).summary
    assert out[True]["speed_ups"]["fused_lora_groups"] == 8 and out[True]["speed_ups"]["cpu_attention"] is True
    assert out[False]["speed_ups"] == {}
    assert out[True]["best_val_loss"] == pytest.approx(out[False]["best_val_loss"], rel=0.02)
    assert out[True]["best_val_loss"] < out[True]["initial_val_loss"]


@pytest.mark.parametrize("cls_name", ["LlamaRMSNorm", "Gemma3RMSNorm"])
def test_fast_rms_norm_matches_the_module_forward_and_backward(cls_name):
    import importlib

    mod_name = "llama" if cls_name.startswith("Llama") else "gemma3"
    cls = getattr(importlib.import_module(f"transformers.models.{mod_name}.modeling_{mod_name}"), cls_name)
    torch.manual_seed(0)
    stock, fast = cls(48), cls(48)
    with torch.no_grad():
        stock.weight.normal_(0.5, 0.2)
    fast.load_state_dict(stock.state_dict())
    for m in (stock, fast):
        m.to(torch.bfloat16).weight.requires_grad_(False)
    assert train_fast.fast_rms_norms(torch.nn.Sequential(fast)) == 1
    x = torch.randn(3, 5, 48).bfloat16().requires_grad_()
    grad = torch.randn(3, 5, 48).bfloat16()
    out0 = stock(x)
    out0.backward(grad)
    g0 = x.grad.clone()
    x.grad = None
    out1 = fast(x)
    out1.backward(grad)
    assert out1.dtype == torch.bfloat16
    assert (out1.float() - out0.float()).abs().max().item() < 0.05
    assert ((x.grad.float() - g0.float()).norm() / g0.float().norm()).item() < 0.01


@pytest.mark.skipif(not _bf16_here(), reason="bf16 true needs a CPU with AVX512-BF16/AMX")
@pytest.mark.parametrize("option", [{"use_dora": True}, {"lora_dropout": 0.1}, {"gradient_checkpointing": True}])
def test_options_outside_the_fused_path_still_train(option, tiny_model_dir, tmp_path):
    from catalogtune.core import config
    from catalogtune.train.stage import TrainConfig, run

    _splits(tmp_path, [{"title": f"item {i} blue", "content": f"a blue item number {i} for kids " * 2}
                       for i in range(12)], n_train=8)
    cfg = config.build(TrainConfig, data=tmp_path, out=tmp_path / "run", model=str(tiny_model_dir), batch_size=4,
                       max_length=40, lr=1e-2, eval_every=4, max_steps=4, lora_r=4, lora_alpha=8, bf16="true",
                       patience=0, **option)
    summary = run(cfg).summary
    fast = summary["speed_ups"]
    assert "fused_lora_groups" not in fast and fast["cpu_attention"] is True
    assert fast.get("fast_dropout", 0) == (2 * 7 if "lora_dropout" in option else 0)
    assert summary["steps"] == 4 and summary["best_val_loss"] < summary["initial_val_loss"]
