"""Tokenisation, masking, batching and the chunked output-layer loss of the training engine."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from catalogtune.core import models
from catalogtune.train import model as tm
from catalogtune.core.prompt import build_prompt, end_token
from catalogtune.train.batches import (
    collate, eval_batches, make_schedule, plan_epoch, read_split, tokenize, useful_tokens,
)
from catalogtune.core.util import CatalogtuneError

RECORDS = [
    {"title": f"red cotton kids set {i}", "content": "a small red cotton set for kids " * (1 + i % 4)}
    for i in range(12)
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return models.load(tiny_model_dir)


def test_tokenize_puts_prompt_first_and_ends_with_end_token(tiny):
    _, tok = tiny
    out = tokenize(RECORDS + [{"title": "x", "content": "  "}, {"title": "", "content": "y"}], tok, 64)
    assert out.skipped == {"empty_content": 1, "bad_title": 1}
    ids, n_prompt = out.examples[0]
    assert ids[:n_prompt] == tok(build_prompt(tok, RECORDS[0]["title"]), add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids(end_token(tok))
    assert all(len(ids) <= 64 for ids, _ in out.examples)


def test_long_descriptions_are_cut_to_max_length(tiny):
    _, tok = tiny
    out = tokenize([{"title": "book", "content": "novel story " * 200}], tok, 40)
    (ids, n_prompt), = out.examples
    assert len(ids) == 40 and out.truncated == 1 and useful_tokens((ids, n_prompt)) == 40 - n_prompt
    assert tokenize([{"title": "book " * 50, "content": "x"}], tok, 16).skipped == {"prompt_too_long": 1}


def test_collate_selects_only_description_positions_never_padding():
    examples = [([1, 2, 3, 10, 11, 12], 3), ([4, 5, 20], 2)]
    c = collate(examples, [0, 1], pad_id=0)
    assert c["input_ids"].tolist() == [[1, 2, 3, 10, 11, 12], [4, 5, 20, 0, 0, 0]]
    flat = c["input_ids"].reshape(-1)
    # each selected row predicts the next token, and only description tokens are targets
    assert flat[c["loss_rows"] + 1].tolist() == c["loss_targets"].tolist() == [10, 11, 12, 20]
    assert c["n_useful"] == 4 and c["n_tokens"] == 9


def test_plan_is_deterministic_complete_and_length_grouped():
    examples = [([0] * (5 + (i * 37) % 200), 2) for i in range(400)]
    a = plan_epoch(examples, 8, seed=1, epoch=0)
    assert a == plan_epoch(examples, 8, seed=1, epoch=0) and a != plan_epoch(examples, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(400))
    padded = sum(len(b) * max(len(examples[i][0]) for i in b) for b in a)
    real = sum(len(e[0]) for e in examples)
    assert padded < 1.1 * real  # random batches would pad ~60% here
    # every size: each example once, whole batches but the last, as many as the schedule counts
    for n in (5, 300, 315, 1000, 2049, 5000):
        plan = plan_epoch([([0] * (1 + i % 13), 1) for i in range(n)], 8, seed=0, epoch=0)
        assert sorted(i for b in plan for i in b) == list(range(n))
        assert len(plan) == make_schedule(n, 8, 1, 0).n_batches
        assert sum(len(b) < 8 for b in plan) == (1 if n % 8 else 0)


def test_schedule_shards_ranks_disjointly():
    examples = [([0] * (3 + i % 7), 1) for i in range(50)]
    s0, s1 = (make_schedule(50, 4, 2, 0, world=2, rank=r) for r in (0, 1))
    assert s0.steps_per_epoch == s1.steps_per_epoch == 3
    got0 = [i for st in range(3) for b in s0.step_batches(examples, st) for i in b]
    got1 = [i for st in range(3) for b in s1.step_batches(examples, st) for i in b]
    assert not set(got0) & set(got1) and len(got0) == len(set(got0))
    with pytest.raises(CatalogtuneError, match="fewer than"):
        make_schedule(3, 4, 1, 0, world=2)
    assert sorted(i for b in eval_batches(examples, 8) for i in b) == list(range(50))


def test_read_split_errors_are_one_line(tmp_path):
    with pytest.raises(CatalogtuneError, match="train"):
        read_split(tmp_path, "train")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "title": pa.array([], pa.string()),
                             "content": pa.array([], pa.string())}), tmp_path / "val.parquet")
    with pytest.raises(CatalogtuneError, match="empty"):
        read_split(tmp_path, "val")


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_chunked_linear_cross_entropy_matches_reference(monkeypatch, softcap):
    monkeypatch.setattr(tm, "chunk_rows", lambda vocab: 7)  # several chunks of 7 rows (one reused buffer)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(20, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 50, (20,), generator=g)
    loss = tm.linear_cross_entropy(h, w, y, softcap=softcap)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    z = h2 @ w2.T
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    ref = torch.nn.functional.cross_entropy(z, y, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-5)


def _hf_summed_loss(model, examples) -> float:
    """Summed description-token loss the usual HF way: labels -100 on the prompt, one example at a time."""
    ref = 0.0
    for ids, n_prompt in examples:
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :n_prompt] = -100
        ref += model(input_ids=x, labels=labels).loss.item() * (len(ids) - n_prompt)
    return ref


def test_loss_model_takes_loss_on_description_only(tiny):
    model, tok = tiny
    examples = tokenize(RECORDS[:3], tok, 64).examples
    lm = tm.LossModel(model)
    c = collate(examples, [0, 1, 2], tok.pad_token_id)
    with torch.no_grad():
        got = lm(c["input_ids"], c["loss_rows"], c["loss_targets"])
        # reference: the usual HF path, labels -100 on the prompt and on the padding, per example
        ref = _hf_summed_loss(model, examples)
    assert got.item() == pytest.approx(ref, rel=1e-4)
    # changing a prompt token's *target* value cannot matter: those rows are never selected
    assert c["n_useful"] == sum(len(i) - n for i, n in examples)


def test_loss_model_matches_hf_loss_on_a_gemma3_with_softcapping():
    # Gemma's decoder scales embeddings and its head may softcap logits: the shortcut must agree.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           final_logit_softcapping=5.0, pad_token_id=0)
    model = Gemma3ForCausalLM(cfg).eval()
    examples = [([5, 6, 7, 8, 9, 10, 11], 3), ([12, 13, 14, 15], 2)]
    c = collate(examples, [0, 1], pad_id=0)
    with torch.no_grad():
        got = tm.LossModel(model)(c["input_ids"], c["loss_rows"], c["loss_targets"]).item()
        ref = _hf_summed_loss(model, examples)
    assert got == pytest.approx(ref, rel=1e-4)


def test_mask_unsupported_takes_no_loss_on_invented_names_and_numbers(tiny):
    _, tok = tiny
    rec = {"title": "garden diary by jane doe",
           "content": "Written by Anna Smith in 1987. Jane Doe kept this garden diary.",
           "context": [{"title": "other", "content": "notes by Anna Smith"}]}
    plain, = tokenize([{**rec, "context": None}], tok, 128).examples
    no_ctx, = tokenize([{**rec, "context": None}], tok, 128, mask_unsupported=True).examples
    ctx, = tokenize([rec], tok, 128, mask_unsupported=True).examples
    assert plain[:2] == no_ctx[:2] and len(plain) == 2  # same ids; only the loss differs
    masked = tok.decode([no_ctx[0][p] for p in no_ctx[2]])
    # without references the name and the year are unsupported; "Jane Doe" is in the title
    assert "Anna" in masked and "Smith" in masked and "1987" in masked
    assert "Jane" not in masked and "garden" not in masked
    # a retrieved record that names Anna Smith supports her: only the year is left
    assert "Anna" not in tok.decode([ctx[0][p] for p in ctx[2]]) and "1987" in tok.decode([ctx[0][p] for p in ctx[2]])
    assert useful_tokens(no_ctx) == useful_tokens(plain) - len(no_ctx[2])
    c = collate([no_ctx, plain], [0, 1], pad_id=0)
    flat = c["input_ids"].reshape(-1)
    assert flat[c["loss_rows"] + 1].tolist() == c["loss_targets"].tolist()
    assert c["n_useful"] == useful_tokens(no_ctx) + useful_tokens(plain)
    assert c["loss_targets"][useful_tokens(no_ctx) - 1].item() == no_ctx[0][-1]  # the end token keeps its loss


def test_mask_scope_plain_masks_only_prompts_without_references(tiny):
    _, tok = tiny
    rec = {"title": "garden diary", "content": "Written by Anna Smith in 1987.",
           "context": [{"title": "other", "content": "a diary"}]}
    both = [{**rec, "context": None}, rec]
    every = tokenize(both, tok, 128, mask_unsupported=True).examples
    plain = tokenize(both, tok, 128, mask_unsupported=True, mask_scope="plain").examples
    assert every[0] == plain[0] and every[0][2]  # the title-only example is masked either way
    assert every[1][2] and plain[1][:2] == every[1][:2] and plain[1][2] == ()  # the one with references is not
    with pytest.raises(ValueError, match="mask_scope"):
        from catalogtune.train import TrainConfig

        TrainConfig(data="d", out="o", mask_scope="some")


def test_kind_prompts_give_each_description_kind_its_own_instruction(tiny):
    from catalogtune.core.prompt import KIND_INSTRUCTIONS

    _, tok = tiny
    records = [
        {"title": "Brass Garden Tap", "content": "A solid brass garden tap with a 3/4 inch thread and a lever handle."},
        {"title": "The Quiet Harbour", "content": "'A gripping read from start to finish.' Sunday Herald "
                                                  "'Beautifully written and very moving.' Daily Courier"},
    ]
    plain = tokenize(records, tok, 256)
    tagged = tokenize(records, tok, 256, kind_prompts=True)
    assert plain.kinds == {"product": 2} and tagged.kinds == {"product": 1, "reviews": 1}
    prompt_of = [tok.decode(ids[:n]) for ids, n in tagged.examples]
    # the product description keeps the prompt every front end builds; the quotes get their own
    assert tagged.examples[0] == plain.examples[0]
    template = getattr(tok, "chat_template", None)
    marker = {k: v[0] if template else f"### {v[1]}:" for k, v in KIND_INSTRUCTIONS.items()}
    assert marker["reviews"] in prompt_of[1] and marker["product"] not in prompt_of[1]
    assert marker["product"] in prompt_of[0]
    assert tagged.examples[1][0][tagged.examples[1][1]:] == plain.examples[1][0][plain.examples[1][1]:]
    # the plain template (no chat template) names the kind in its heading instead
    assert "### Review quotes:" in build_prompt(None, "The Quiet Harbour", kind="reviews")
    assert build_prompt(None, "Brass Garden Tap").endswith("### Description:\n")
