"""Continuous batching gives the static path's greedy outputs token for token."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from catalogtune.infer import batching
from catalogtune.infer import generate as G
from helpers import make_run

TITLES = [
    "Kids Dance Skirt Neon Green", "Pip's Puppies", "The Prophet: a small book of poems for the home, 1 2 3",
    "Black steel kitchen set", "A", "Music album cd for kids ages 3 years and up with a long title of words",
    "Stainless Steel Insulated Water Bottle 750ml", "Backup software licence, 5 devices", "Owl mug",
]


@pytest.fixture(scope="module")
def gens(tmp_path_factory, tiny_model_dir) -> tuple[G.Generator, G.Generator]:
    run = make_run(tmp_path_factory.mktemp("cb") / "run", tiny_model_dir)
    return G.Generator.from_run(run, bf16=False), G.Generator.from_run(run, bf16=False, continuous=False)


@pytest.fixture(scope="module")
def prompts(gens) -> list[str]:
    return [gens[0].prompt(t) for t in TITLES]


@pytest.fixture()
def early_stop(gens, prompts):
    """Make a token the random model writes at different steps of different rows a stop token:
    rows then end at different steps. Call with the decoding keywords of the test."""
    saved = [g.stop_ids for g in gens]

    def pick(**kw):
        out = gens[1].generate(prompts, max_new_tokens=24, batch_size=3, **kw)
        early = {t for g in out for t in g.token_ids[:3]}
        stops = {g.token_ids[4 + (5 * r) % 18] for r, g in enumerate(out)} - early
        for g, s in zip(gens, saved):
            g.stop_ids = [*s, *sorted(stops)]
        return stops

    yield pick
    for g, s in zip(gens, saved):
        g.stop_ids = s


@pytest.mark.parametrize("kw", [
    {},  # the project decoding: repetition penalty 1.2, no repeated 3-grams, output only
    {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0},
    {"use_adapter": False},
    {"no_repeat_ngram_size": 2, "ground_penalty": 3.0},
])
def test_continuous_equals_static_greedy_token_for_token(gens, prompts, early_stop, kw):
    cont, static = gens
    kw = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, **kw}
    early_stop(**kw)
    a = cont.generate(prompts, max_new_tokens=24, batch_size=3, **kw)
    b = static.generate(prompts, max_new_tokens=24, batch_size=3, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.stopped for g in a] == [g.stopped for g in b]
    if not kw["no_repeat_ngram_size"]:
        return  # without rules the random model loops on one token: every row ends alike
    # rows ended at different steps, so rows left and joined the batch mid-way
    assert len({g.new_tokens for g in a}) > 1


def test_finished_rows_stop_costing_compute(gens, prompts, early_stop):
    """The output layer sees fewer rows: a static batch computes its finished rows to the end."""
    cont, static = gens
    early_stop()
    rows = {}
    for key, g in (("cont", cont), ("static", static)):
        rows[key] = 0
        with g._adapter(True) as net:
            head = net.get_output_embeddings()

        def count(_m, _inp, out, key=key):
            rows[key] += out.shape[0]

        h = head.register_forward_hook(count)
        try:
            out = g.generate(prompts, max_new_tokens=24, batch_size=3)
        finally:
            h.remove()
    # at least one row per generated token, and never more than the static path
    assert sum(o.new_tokens for o in out) <= rows["cont"] < rows["static"]


def test_sampling_and_sliding_window_models_keep_the_static_path(gens, prompts):
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, vocab_size=128, sliding_window=8)
    assert not batching.supports(SimpleNamespace(config=cfg))
    assert batching.supports(gens[0].model)
    cont, static = gens
    kw = dict(max_new_tokens=10, do_sample=True, seed=3, batch_size=4)
    assert [g.token_ids for g in cont.generate(prompts, **kw)] == [g.token_ids for g in static.generate(prompts, **kw)]


def test_prompts_fed_while_running_join_the_batch_and_keep_their_tokens(gens, prompts, early_stop):
    """generate_live: prompts arrive during decoding, each with its own token limit; every answer
    equals what the prompt gets alone, and a short one is answered before the batch ends."""
    cont, static = gens
    early_stop()
    kw = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
    limits = [24, 5, 24, 3, 24, 12, 24, 8, 24]
    arrivals = {1: [0, 1], 4: [2, 3, 4], 9: [5, 6, 7, 8]}  # feed call -> prompts arriving then
    calls, done, queued = [0], [], []

    def feed(free):  # a server queue: what arrived so far, at most ``free`` of it
        calls[0] += 1
        queued.extend(arrivals.get(calls[0], []))
        take = queued[:free]
        del queued[:free]
        return [(i, prompts[i], limits[i]) for i in take]

    n = cont.generate_live(feed, lambda key, g: done.append((key, g, calls[0])), batch_size=4, **kw)
    assert n == len(prompts) and sorted(k for k, _, _ in done) == list(range(len(prompts)))
    got = {k: g for k, g, _ in done}
    for i, p in enumerate(prompts):
        (alone,) = static.generate([p], max_new_tokens=limits[i], batch_size=1, **kw)
        assert got[i].token_ids == alone.token_ids and got[i].stopped == alone.stopped
        assert got[i].prompt_tokens == len(cont.encode(p))
    finished_at = {k: step for k, _, step in done}
    assert finished_at[3] < finished_at[0] or got[0].new_tokens <= 3  # the 3-token answer left first
    arrived = {i: call for call, due in arrivals.items() for i in due}
    # some prompt joined while an earlier one was still decoding
    assert any(arrived[i] < arrived[j] < finished_at[i] for i in arrived for j in arrived)


def test_live_generation_refuses_sampling_models(gens):
    from catalogtune.core.util import CatalogtuneError

    static = gens[1]
    assert not static.can_join() and gens[0].can_join() and not gens[0].can_join(do_sample=True)
    with pytest.raises(CatalogtuneError, match="greedy"):
        static.generate_live(lambda free: [], lambda key, g: None)


def _guided_reference(gen, prompt: str, negative: str, scale: float, max_new: int) -> list[int]:
    """Title guidance the slow obvious way: one row, both prompts recomputed whole at every step."""
    import torch

    cond, neg, out = gen.encode(prompt), gen.encode(negative), []
    with torch.inference_mode(), gen._adapter(True) as net:
        for _ in range(max_new):
            c = net(input_ids=torch.tensor([cond + out])).logits[0, -1]
            u = net(input_ids=torch.tensor([neg + out])).logits[0, -1]
            c, u = torch.log_softmax(c.float(), -1), torch.log_softmax(u.float(), -1)
            t = int((c + scale * (c - u)).argmax())
            if t in gen.stop_ids:
                break
            out.append(t)
    return out


def test_title_guidance_equals_the_obvious_two_prompt_decoder(gens, prompts, early_stop):
    """Guided rows (each with its negative prompt in a second cache) leave and join the batch and
    still choose exactly what recomputing both prompts alone chooses; scale 0 is plain decoding."""
    cont, static = gens
    kw = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    early_stop(**kw)
    negatives = [cont.negative_prompt() for _ in prompts]
    assert negatives[0] == prompts[0].replace(TITLES[0], "")
    got = cont.generate(prompts, max_new_tokens=12, batch_size=3, guidance=1.5, negative_prompts=negatives, **kw)
    for p, n, g in zip(prompts, negatives, got):
        assert g.token_ids == _guided_reference(cont, p, n, 1.5, 12)
    plain = cont.generate(prompts, max_new_tokens=12, batch_size=3, **kw)
    assert [g.token_ids for g in got] != [g.token_ids for g in plain]  # the guidance changed something
    zero = cont.generate(prompts, max_new_tokens=12, batch_size=3, guidance=0.0, negative_prompts=negatives, **kw)
    assert [g.token_ids for g in zero] == [g.token_ids for g in plain]


def test_title_guidance_on_the_static_and_live_paths(gens, prompts, early_stop):
    """The static path (transformers' guidance processor, for sampling and sliding-window models)
    and a server's live batch choose the same tokens as the continuous path; negatives default to
    each prompt built by ``prompt`` without its title."""
    cont, static = gens
    kw = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3, "guidance": 1.0}
    early_stop(**kw)
    a = cont.generate(prompts, max_new_tokens=12, batch_size=3, **kw)
    assert [static.prompt(t) for t in TITLES] == prompts  # each generator knows the prompts it built
    b = static.generate(prompts, max_new_tokens=12, batch_size=3, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    plain = cont.generate(prompts, max_new_tokens=12, batch_size=3, **{**kw, "guidance": 0.0})
    assert [g.token_ids for g in a] != [g.token_ids for g in plain]
    queue, got = list(enumerate(prompts)), {}

    def feed(free):
        take, queue[:] = queue[:free], queue[free:]
        return [(i, p, 12) for i, p in take]

    cont.generate_live(feed, lambda key, g: got.__setitem__(key, g), batch_size=4,
                       repetition_penalty=1.2, no_repeat_ngram_size=3, guidance=1.0)
    assert [got[i].token_ids for i in range(len(prompts))] == [g.token_ids for g in a]


def test_title_guidance_refuses_what_it_cannot_do(gens, prompts):
    from catalogtune.core.util import CatalogtuneError

    cont, static = gens
    neg = [cont.negative_prompt() for _ in prompts]
    with pytest.raises(CatalogtuneError, match="one negative prompt per prompt"):
        cont.generate(prompts, guidance=1.0, negative_prompts=neg[:2])
    with pytest.raises(CatalogtuneError, match=">= 0"):
        cont.generate(prompts, guidance=-1.0, negative_prompts=neg)
    # a prompt the generator did not build is its own negative: no title to contrast with
    raw = "### Product title:\nnot built by prompt()\n\n### Description:\n"
    assert cont.negatives_for([raw, prompts[1]]) == [raw, cont.negative_prompt()]
    kw = {"max_new_tokens": 6, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    assert cont.generate([raw], guidance=2.0, **kw)[0].token_ids == cont.generate([raw], **kw)[0].token_ids



@pytest.mark.parametrize("spare", [1, 3])
def test_kv_cache_spare_room_grows_and_keeps_outputs(gens, prompts, early_stop, monkeypatch, spare):
    """Decode steps write into the cache's spare room; when it fills (every ``spare`` steps here),
    the buffer is copied into a larger one, and rows leaving and joining copy it too: the tokens
    stay the static path's."""
    cont, static = gens
    kw = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
    early_stop(**kw)
    monkeypatch.setattr(batching._SpareLayer, "SPARE", spare)
    a = cont.generate(prompts, max_new_tokens=24, batch_size=3, **kw)
    b = static.generate(prompts, max_new_tokens=24, batch_size=3, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({g.new_tokens for g in a}) > 1


def test_kv_cache_layer_writes_in_place_and_views_only_the_filled_part():
    import torch
    from transformers.cache_utils import DynamicLayer

    layer = batching._SpareLayer.make(DynamicLayer)()
    k0, v0 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    keys, values = layer.update(k0, v0)
    assert torch.equal(keys, k0) and torch.equal(values, v0) and layer.get_seq_length() == 5
    buf = layer.__dict__["_keys"]
    assert buf.shape[2] == 5 + batching._SpareLayer.SPARE
    k1, v1 = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    keys, values = layer.update(k1, v1)
    assert layer.__dict__["_keys"] is buf  # written in place, no new buffer
    assert torch.equal(keys, torch.cat([k0, k1], 2)) and torch.equal(values, torch.cat([v0, v1], 2))
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, torch.cat([k0, k1], 2)[1:]) and layer.values.shape == (1, 3, 6, 4)


def test_guided_prefill_computes_the_shared_start_once(gens, early_stop, monkeypatch):
    """With the title last (a chat template after the references), a negative prompt shares all
    but its tail with its prompt: the prefill runs the tails only, and the guided outputs still
    equal the obvious decoder's (both prompts recomputed whole at every step), rows joining late."""
    cont, _ = gens
    monkeypatch.setattr(cont.tok, "chat_template", "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>"
                        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}", raising=False)
    refs = [{"title": f"Record {i}", "content": "a plain record about cups and mugs " * (1 + i % 3)} for i in range(3)]
    prompts = [cont.prompt(t, context=refs[: 1 + i % 3]) for i, t in enumerate(TITLES[:7])]
    negatives = cont.negatives_for(prompts)
    assert all(p.endswith("<|assistant|>") and t in p and t not in n for p, n, t in zip(prompts, negatives, TITLES))
    kw = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
    ran: list[int] = []
    real = batching._Side._forward
    monkeypatch.setattr(batching._Side, "_forward",
                        lambda self, net, ids, m, **k: ran.append(int(m.sum())) or real(self, net, ids, m, **k))
    got = cont.generate(prompts, max_new_tokens=10, batch_size=3, guidance=1.5, negative_prompts=negatives, **kw)
    for p, n, g in zip(prompts, negatives, got):
        assert g.token_ids == _guided_reference(cont, p, n, 1.5, 10)
    prompt_tokens = sum(len(cont.encode(p)) for p in prompts)
    negative_tokens = sum(len(cont.encode(n)) for n in negatives)
    # every prompt once, and of the negatives only what follows the shared start (a few tokens each)
    assert sum(ran) < prompt_tokens + 0.25 * negative_tokens and sum(ran) >= prompt_tokens + len(prompts)
