"""Continuous batching for greedy decoding: finished rows leave the batch, waiting prompts join it.

``transformers``' ``generate`` decodes a batch until its longest row ends: on the evaluation
prompts rows stop after ~50 of their 128 new tokens, so most decode steps of a static batch
compute rows that are already done. Here a row leaves the batch (and the KV cache) the step it
ends, and once a quarter of the slots is free the longest waiting prompts are prefilled together
and joined to the running batch: their KV cache is left-padded (or the batch's is) to one
length and the attention mask hides the padding, so each row attends to exactly its own tokens.

The repetition rules are those of ``core.decoding`` over each row's generated tokens, kept
incrementally (a seen-token mask for the penalty, an n-gram table for the no-repeat rule: the
library's no-repeat processor rebuilds every row's n-grams at every step). Same outputs as the
static path for greedy decoding (tests/infer/test_batching.py checks it token for token).
Sampling, ``penalty_scope="all"`` and models whose cache is not a plain ``DynamicLayer`` per
layer (gemma3's sliding-window layers) keep the static path.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

Row = tuple[list[int], str]
"""(generated ids before the stop token, "eos" or "length")."""


def supports(model: Any) -> bool:
    """True when ``model``'s KV cache is one plain ``DynamicLayer`` per layer (rows can be joined)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # an unusual config: keep the static path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class _Rules:
    """The output-only repetition penalty, no-repeat n-gram rule and grounding penalty, per row."""

    def __init__(self, vocab_size: int, repetition_penalty: float, ngram: int,
                 ground_vocab: dict | None, ground_penalty: float) -> None:
        self.v, self.penalty, self.n = vocab_size, float(repetition_penalty), int(ngram)
        self.gv, self.gp = (ground_vocab, float(ground_penalty)) if ground_penalty else (None, 0.0)
        self.seen: Any = None  # (rows, V) bool: tokens a row has generated
        self.banned: Any = None  # (rows, V) bool: name/number starts absent from a row's prompt
        self.grams: list[dict[tuple[int, ...], set[int]]] = []
        self.gen: list[list[int]] = []

    def add(self, prompts: Any) -> None:
        """Rows for a left-padded prompt tensor (rows, width) join, with nothing generated yet."""
        import torch

        rows = prompts.shape[0]
        seen = torch.zeros((rows, self.v), dtype=torch.bool)
        self.seen = seen if self.seen is None else torch.cat([self.seen, seen])
        if self.gv is not None:
            from catalogtune.core.decoding import grounding_banned

            banned = grounding_banned(self.gv, prompts)
            self.banned = banned if self.banned is None else torch.cat([self.banned, banned])
        self.grams += [{} for _ in range(rows)]
        self.gen += [[] for _ in range(rows)]

    def keep(self, idx: Sequence[int]) -> None:
        """Only rows ``idx`` (in that order) stay."""
        import torch

        t = torch.tensor(list(idx), dtype=torch.long)
        self.seen = self.seen[t]
        if self.banned is not None:
            self.banned = self.banned[t]
        self.grams = [self.grams[i] for i in idx]
        self.gen = [self.gen[i] for i in idx]

    def apply(self, scores: Any, rows: slice | None = None) -> Any:
        """Scores (rows, V) after the rules; ``rows`` selects the rule rows the scores belong to."""
        import torch

        rows = rows or slice(0, scores.shape[0])
        width = scores.shape[-1]
        if self.penalty != 1.0:
            seen = self.seen[rows, :width]
            if seen.any():
                pen = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
                scores = torch.where(seen, pen, scores)
        gen = self.gen[rows]
        if self.n:
            for r, (g, grams) in enumerate(zip(gen, self.grams[rows])):
                if len(g) >= self.n - 1:
                    banned = grams.get(tuple(g[len(g) - self.n + 1:]))
                    if banned:
                        scores[r, list(banned)] = -float("inf")
        if self.banned is not None:
            started = torch.tensor([bool(g) for g in gen])
            if started.any():
                from catalogtune.core.decoding import grounding_penalty

                last = torch.tensor([g[-1] if g else 0 for g in gen])
                scores = grounding_penalty(scores, self.banned[rows], last, self.gv, self.gp, started)
        return scores

    def push(self, offset: int, tokens: Sequence[int]) -> None:
        """Rows ``offset, offset + 1, ...`` generated ``tokens``."""
        for r, t in enumerate(tokens):
            g = self.gen[offset + r]
            g.append(int(t))
            if t < self.v:
                self.seen[offset + r, t] = True
            if self.n and len(g) >= self.n:
                self.grams[offset + r].setdefault(tuple(g[-self.n:-1]), set()).add(g[-1])


class _SpareLayer:
    """A ``DynamicLayer`` whose keys and values live in a buffer with spare room along the sequence.

    ``DynamicLayer.update`` concatenates each new token onto the whole cache, copying every
    layer's keys and values at every decode step (about a fifth of a decode step of smollm2-135m
    at batch 16 and 240 cached tokens, measured with the torch profiler). Here a step writes into
    the spare room and ``keys``/``values`` are views of the filled part; the buffer grows by
    ``SPARE`` positions when full. Assigning ``keys``/``values`` (a join, a row leaving, a trimmed
    lead) copies the tensor into a fresh buffer, so the batching code below treats it as a plain layer.
    Under autocast the buffer holds the autocast dtype: the rotary embedding hands over fp32 keys,
    which attention cast to bf16 again at every step, the whole cache each time (another quarter
    of a bf16 decode step); stored cast once, attention reads the same values.
    """

    SPARE = 64

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def make(layer_type: type) -> type:
        """The subclass of ``layer_type`` (transformers' ``DynamicLayer``) with a spare-room buffer."""

        class Spare(layer_type):  # type: ignore[misc, valid-type]
            def _get(self, name: str) -> Any:
                buf = self.__dict__.get("_" + name)
                return buf if buf is None or buf.dim() != 4 else buf[:, :, : self.__dict__["_n" + name]]

            def _set(self, name: str, t: Any) -> None:
                import torch

                if t is None or t.dim() != 4:
                    self.__dict__["_" + name], self.__dict__["_n" + name] = t, 0
                    return
                shape = list(t.shape)
                shape[2] += _SpareLayer.SPARE
                dtype = t.dtype
                if t.is_floating_point() and torch.is_autocast_enabled(t.device.type):
                    dtype = torch.get_autocast_dtype(t.device.type)  # what attention would cast it to
                buf = torch.empty(shape, dtype=dtype, device=t.device)
                buf[:, :, : t.shape[2]] = t
                self.__dict__["_" + name], self.__dict__["_n" + name] = buf, t.shape[2]

            keys = property(lambda self: self._get("keys"), lambda self, t: self._set("keys", t))
            values = property(lambda self: self._get("values"), lambda self, t: self._set("values", t))

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                kb, vb = self.__dict__.get("_keys"), self.__dict__.get("_values")
                n, q = self.__dict__.get("_nkeys", 0), key_states.shape[2]
                if kb is None or kb.dim() != 4 or n + q > kb.shape[2] or kb.shape[0] != key_states.shape[0]:
                    return super().update(key_states, value_states, *args, **kwargs)  # cat, then a new buffer
                kb[:, :, n: n + q] = key_states
                vb[:, :, n: n + q] = value_states
                self.__dict__["_nkeys"] = self.__dict__["_nvalues"] = n + q
                return self.keys, self.values

        Spare.__name__ = Spare.__qualname__ = "Spare" + layer_type.__name__
        return Spare


def _spare_cache(config: Any) -> Any:
    """A ``DynamicCache`` whose layers write new tokens into spare room (``_SpareLayer``)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=config)
    spare = _SpareLayer.make(DynamicLayer)
    cache.layers = [spare() for _ in cache.layers]
    return cache


def _left_pad(t: Any, width: int, dim: int) -> Any:
    import torch

    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def left_padded(rows: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    """(ids, attention mask) of ``rows`` left-padded to the longest."""
    import torch

    width = max(len(ids) for ids in rows)
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        ids_t[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    return ids_t, mask


Feed = Callable[[int], Sequence[tuple]]
"""``feed(free)``: at most ``free`` new (prompt ids, max new tokens) to join a running batch, each
with its negative prompt's ids third when the decoding is guided."""


class _Side:
    """One KV cache over the running rows and its attention mask (1 where the cache holds a token)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.cache: Any = None
        self.mask: Any = None

    def prefill(self, net: Any, rows: Sequence[list[int]], pad_id: int) -> tuple[Any, Any]:
        """Prefill ``rows`` (left-padded together) and append them to the batch; (their last logits,
        the left-padded ids)."""
        ids, m = left_padded(rows, pad_id)
        new_cache, logits = self._forward(net, ids, m)
        self._append(None, m.to(self.device), new_cache)
        return logits, ids

    def _forward(self, net: Any, ids: Any, m: Any, past: Any = None, past_mask: Any = None,
                 start: Any = None) -> tuple[Any, Any]:
        """Run left-padded ``ids`` (mask ``m``), after ``past`` (a cache, its mask ``past_mask``, each
        row holding ``start`` tokens) when given; (the cache, the last logits)."""
        import torch

        pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
        if start is not None:
            pos = (pos + start[:, None]).masked_fill(m == 0, 0)
        cache = past if past is not None else _spare_cache(net.config)
        full = m if past is None else torch.cat([past_mask, m], 1)
        out = net(input_ids=ids.to(self.device), attention_mask=full.to(self.device), position_ids=pos.to(self.device),
                  past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[:, -1, :]

    def _append(self, kv: list[tuple[Any, Any]] | None, m: Any, fresh: Any) -> None:
        """Join rows to the running cache: per layer keys and values ``kv`` (None: ``fresh``'s own)
        and their mask ``m``; ``fresh`` (a cache) is adopted when nothing runs."""
        import torch

        if self.cache is None:
            for layer, (k, v) in zip(fresh.layers, kv or []):
                layer.keys, layer.values = k, v
            self.cache, self.mask = fresh, m
            return
        kv = kv if kv is not None else [(layer.keys, layer.values) for layer in fresh.layers]
        t_all = max(self.mask.shape[1], m.shape[1])
        for old, (k, v) in zip(self.cache.layers, kv):
            old.keys = torch.cat([_left_pad(old.keys, t_all, 2), _left_pad(k, t_all, 2)])
            old.values = torch.cat([_left_pad(old.values, t_all, 2), _left_pad(v, t_all, 2)])
        self.mask = torch.cat([_left_pad(self.mask, t_all, 1), _left_pad(m, t_all, 1)])

    def prefill_pairs(self, net: Any, rows: Sequence[list[int]], negatives: Sequence[list[int]],
                      pad_id: int) -> tuple[Any, Any, Any]:
        """Prefill each prompt and its negative as neighbouring rows (2i, 2i + 1) and append them;
        (the prompts' last logits, the negatives' last logits, the prompts left-padded).

        A negative prompt is its prompt without the title: the same tokens up to the title line
        (instruction and references, most of a RAG prompt). Those are computed once, in the
        prompts' pass; the negative copies their keys and values and runs only its own tail (the
        end of the turn), so a guided prefill costs about one prompt's compute, not two. The
        same positions see the same tokens, so the cache holds what a full pass would.
        """
        import torch

        ids, m = left_padded(rows, pad_id)
        cache_p, logits_p = self._forward(net, ids, m)
        width = ids.shape[1]
        shared = [shared_start(p, n) for p, n in zip(rows, negatives)]
        lead = max(shared)
        prefix_mask = torch.zeros((len(rows), lead), dtype=m.dtype)
        index = torch.zeros((len(rows), lead), dtype=torch.long)  # masked columns: any key, the mask hides it
        for r, (p, n_shared) in enumerate(zip(rows, shared)):
            first = width - len(p)  # the prompt's left padding
            if n_shared:
                index[r, lead - n_shared:] = torch.arange(first, first + n_shared)
                prefix_mask[r, lead - n_shared:] = 1
        gather = index.to(self.device)[:, None, :, None]
        past = _spare_cache(net.config)
        for j, layer in enumerate(cache_p.layers):
            g = gather.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            past.layers[j].update(torch.gather(layer.keys, 2, g), torch.gather(layer.values, 2, g))
        tails = [n[s:] for n, s in zip(negatives, shared)]
        t_ids, t_m = left_padded(tails, pad_id)
        cache_n, logits_n = self._forward(net, t_ids, t_m, past=past, past_mask=prefix_mask, start=torch.tensor(shared))
        m_n = torch.cat([prefix_mask, t_m], 1)
        t_all = max(width, m_n.shape[1])
        kv = []
        for lp, ln in zip(cache_p.layers, cache_n.layers):
            pair = []
            for a, b in ((lp.keys, ln.keys), (lp.values, ln.values)):
                a, b = _left_pad(a, t_all, 2), _left_pad(b, t_all, 2)
                pair.append(torch.stack([a, b], 1).flatten(0, 1))  # rows 2i, 2i + 1
            kv.append((pair[0], pair[1]))
        both_m = torch.stack([_left_pad(m, t_all, 1), _left_pad(m_n, t_all, 1)], 1).flatten(0, 1)
        self._append(kv, both_m.to(self.device), cache_p)
        return logits_p, logits_n, ids

    def step(self, net: Any, pending: Any) -> Any:
        """Feed each row its pending token; the next logits."""
        import torch

        self.mask = torch.cat([self.mask, torch.ones((self.mask.shape[0], 1), dtype=self.mask.dtype,
                                                     device=self.device)], 1)
        pos = self.mask.sum(1, keepdim=True) - 1
        out = net(input_ids=pending[:, None], attention_mask=self.mask, position_ids=pos,
                  past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def keep(self, t: Any) -> None:
        """Only rows ``t`` (a tensor of row indices, in order) stay; columns none of them uses go."""
        if t is None:
            self.cache = self.mask = None
            return
        self.cache.batch_select_indices(t)
        self.mask = self.mask[t]
        used = self.mask.any(0).nonzero()
        lead = int(used[0]) if len(used) else self.mask.shape[1]
        if lead:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]


def shared_start(prompt: Sequence[int], negative: Sequence[int]) -> int:
    """Tokens of ``negative`` that a guided prefill takes from ``prompt``'s cache: their common
    start, less one when that is all of ``negative`` (its last token must run: its logits)."""
    same = 0
    for a, b in zip(prompt, negative):
        if a != b:
            break
        same += 1
    return min(same, len(negative) - 1)


def guide(cond: Any, uncond: Any, scale: float) -> Any:
    """Context-aware decoding (Shi et al. 2024): log p(y|x) + scale * (log p(y|x) - log p(y|x without the title)).

    Tokens the prompt makes likely gain, tokens that are likely whatever the product is (a stock
    opening, a generic blurb) lose; ``scale`` 0 is plain decoding.
    """
    import torch

    c = torch.log_softmax(cond.float(), -1)
    u = torch.log_softmax(uncond.float(), -1)
    return c + scale * (c - u)


def generate(net: Any, prompts: Sequence[list[int]], *, batch_size: int, max_new_tokens: int, pad_id: int,
             stop_ids: Sequence[int], rules: tuple[float, int], ground_vocab: dict | None = None,
             ground_penalty: float = 0.0, device: Any = None, join_at: int | None = None,
             feed: Feed | None = None, on_done: Callable[[int, Row], None] | None = None,
             on_token: Callable[[int, int], None] | None = None,
             negatives: Sequence[list[int]] | None = None, guidance: float = 0.0) -> list[Row]:
    """Greedy continuous-batched decoding of ``prompts`` (token ids, in the order to admit them).

    ``ground_vocab`` (``core.decoding.grounding_vocab``) with ``ground_penalty`` > 0 lowers name and
    number starts each row's prompt lacks, as ``GroundedNames`` does. ``join_at``: free slots that trigger a join of
    waiting prompts (default a quarter of ``batch_size``). ``feed`` (a server's queue) is asked for new
    prompts whenever the batch and its waiting list have room; they are numbered after ``prompts`` in
    the order fed, each with its own token limit, and the loop returns once nothing is running,
    waiting or fed. ``on_done(i, row)`` is called the step prompt ``i`` ends. Returns one row per
    prompt, given and fed, in order. ``on_token(i, token)`` sees each token prompt ``i`` keeps (not
    the stop token), before its ``on_done``: a server streams from it.

    ``negatives`` (one per prompt) with ``guidance`` > 0: each row also runs its negative prompt
    (the same prompt without the title), fed the same tokens, and chooses by ``guide``; fed prompts
    then carry their negative third. A prompt and its negative are neighbouring rows of one cache
    (rows 2i and 2i + 1), so a guided step is one forward pass over twice the rows: the weights
    are read once per step, not once per side.
    """
    import torch

    device = device or torch.device("cpu")
    join_at = max(1, join_at or batch_size // 4)
    stops = set(int(s) for s in stop_ids)
    vocab = int(net.config.get_text_config(decoder=True).vocab_size)
    rules_ = _Rules(vocab, rules[0], rules[1], ground_vocab, ground_penalty)
    prompts = list(prompts)
    guided = bool(guidance)
    negatives = list(negatives or [])
    if guided and len(negatives) != len(prompts):
        raise ValueError("negatives: one per prompt")
    limits = [max_new_tokens] * len(prompts)
    results: list[Row | None] = [None] * len(prompts)
    waiting = list(range(len(prompts)))
    active: list[int] = []  # prompt index of each batch row
    side = _Side(device)  # guided: cache rows 2i (prompt) and 2i + 1 (its negative) for batch row i
    pending: Any = None  # (rows,) the token each row generated and has not fed yet

    def finish(keep_rows: list[int]) -> None:
        nonlocal pending, active
        t = torch.tensor(keep_rows, dtype=torch.long, device=device) if keep_rows else None
        side.keep(None if t is None else torch.stack([2 * t, 2 * t + 1], 1).flatten() if guided else t)
        pending = pending[t] if keep_rows else None
        active = [active[i] for i in keep_rows]
        rules_.keep(keep_rows)

    def choose(logits: list[Any], rows: slice) -> list[int]:
        scores = guide(logits[0], logits[1], guidance) if guided else logits[0].float()
        return rules_.apply(scores, rows).argmax(-1).tolist()

    def settle(tokens: list[int], offset: int) -> list[int]:
        """Record rows ``offset..``'s new tokens; the batch rows among them that go on."""
        go_on = []
        for r, t in enumerate(tokens):
            b = offset + r
            g = rules_.gen[b]
            i = active[b]
            if on_token is not None and t not in stops:
                on_token(i, t)
            if t in stops:
                results[i] = (list(g), "eos")
            elif len(g) + 1 >= limits[i]:
                results[i] = (g + [t], "length")
            else:
                go_on.append(b)
                continue
            if on_done is not None:
                on_done(i, results[i])  # type: ignore[arg-type]
        rules_.push(offset, tokens)
        return go_on

    def pull() -> None:
        free = batch_size - len(active) - len(waiting)
        if feed is None or free <= 0:
            return
        for ids, limit, *neg in feed(free):
            if guided:
                if not neg:
                    raise ValueError("a guided batch needs each fed prompt's negative")
                negatives.append(list(neg[0]))
            waiting.append(len(prompts))
            prompts.append(list(ids))
            limits.append(int(limit))
            results.append(None)

    while True:
        pull()
        if not (waiting or active):
            break
        if waiting and (not active or batch_size - len(active) >= min(join_at, len(waiting))):
            take = waiting[: batch_size - len(active)]
            waiting = waiting[len(take):]
            if guided:
                lp, ln, ids = side.prefill_pairs(net, [prompts[i] for i in take], [negatives[i] for i in take], pad_id)
                logits = [lp, ln]
            else:
                first, ids = side.prefill(net, [prompts[i] for i in take], pad_id)
                logits = [first]
            offset = len(active)
            active = active + take
            rules_.add(ids)
            tokens = choose(logits, slice(offset, offset + len(take)))
            new_pending = torch.tensor(tokens, dtype=torch.long, device=device)
            pending = new_pending if pending is None else torch.cat([pending, new_pending])
            go_on = list(range(offset)) + settle(tokens, offset)
            if len(go_on) < len(active):
                finish(go_on)
            continue
        # one decode step for every active row
        if guided:
            both = side.step(net, pending.repeat_interleave(2))
            tokens = choose([both[0::2], both[1::2]], slice(0, len(active)))
        else:
            tokens = choose([side.step(net, pending)], slice(0, len(active)))
        go_on = settle(tokens, 0)
        pending = torch.tensor(tokens, dtype=torch.long, device=device)
        if len(go_on) < len(active):
            finish(go_on)
    return results  # type: ignore[return-value]
