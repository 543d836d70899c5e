"""Batched generation and completion scoring with one loaded base model (+ optional LoRA adapter).

``Generator.from_run(RUN_DIR)`` loads the base named in ``RUN_DIR/config.yaml`` and the PEFT
adapter in ``RUN_DIR/adapter/``; ``use_adapter=False`` runs the same weights with the adapter
switched off, so "base" and "fine-tuned" outputs come from one model in memory.

Generation sorts prompts by token length into left-padded batches (less padding), decodes with
the KV cache, stops each row at the prompt template's stop tokens and returns results in input
order. Prompts and outputs are hard-capped, so no input can make generation unbounded.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from catalogtune.core import prompt as prompt_mod
from catalogtune.core.decoding import DECODING, PENALTY_SCOPES, Decoding, output_rules  # noqa: F401  (re-exported)
from catalogtune.core.kernels import fp32_packed  # noqa: F401  (re-exported)
from catalogtune.core.util import CatalogtuneError, auto_threads  # noqa: F401  (re-exported)

MAX_NEW_TOKENS = 1024
"""Hard cap on generated tokens per prompt, whatever the caller asks for."""
MAX_PROMPT_TOKENS = 1024
"""Hard cap on prompt tokens; longer prompts lose tokens from the left (the title is at the end)."""
MAX_SCORE_TOKENS = 512
"""Completions are scored on at most this many tokens (bounded memory: batch x tokens x vocab)."""

_OUTPUT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t and \n


@dataclass
class Generation:
    """One generated description."""

    text: str
    """Decoded output, stripped, without special tokens or control characters."""
    new_tokens: int
    """Tokens generated before the stop token (the stop token itself is not counted)."""
    seconds: float
    """This prompt's share of its batch's wall time (summing over a call gives its wall time)."""
    stopped: str
    """Why it ended: "eos" (a stop token) or "length" (max_new_tokens reached)."""
    token_ids: list[int] = field(default_factory=list, repr=False)
    """The generated token ids before the stop token."""
    prompt_tokens: int = 0
    """Prompt tokens the model saw (after the left truncation cap)."""

    @property
    def stopped_at_eos(self) -> bool:
        """True when the model ended the answer itself."""
        return self.stopped == "eos"


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (avx512_bf16/AMX): only then is autocast faster."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise CatalogtuneError(f"{name} must be an integer >= {lo}, not {value!r}")
    return value


def _check_texts(name: str, items: Any) -> list[str]:
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise CatalogtuneError(f"{name} must be a list of texts")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise CatalogtuneError(f"{name}[{i}] must be text, not {type(p).__name__}")
    return list(items)


class Generator:
    """A loaded model + tokenizer that generates and scores catalogue descriptions."""

    def __init__(self, model: Any, tokenizer: Any, has_adapter: bool = False, bf16: bool | None = None,
                 name: str = "", merge: bool = True, continuous: bool = True) -> None:
        """Wrap a loaded (model, tokenizer); ``bf16=None`` autocasts generation where the CPU is bf16-capable.

        ``merge``: fine-tuned outputs come from a copy with the adapter merged into the weights
        (``merged()``), not from the adapter layers. ``continuous``: greedy decoding with the
        output-only rules uses continuous batching (``infer.batching``; same outputs).
        """
        self.continuous = bool(continuous)
        self._continuous_ok: bool | None = None
        self.model = model.eval()
        self.merge = bool(merge)
        self._merged: Any = None
        self._bf16_nets: dict[str, Any] = {}
        self.tok = tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.has_adapter = has_adapter
        self.name = name
        self.device = next(model.parameters()).device
        # Measured on this project's 2-core avx512_bf16 CPU: bf16 autocast doubles batched decode
        # tokens/s for smollm2-135m. Without native bf16 it would be slower, so it stays off there.
        self.bf16 = (self.device.type == "cpu" and bf16_supported()) if bf16 is None else bool(bf16)
        self.stop_ids = prompt_mod.stop_token_ids(tokenizer)
        # Chat templates already write their own BOS; plain templates need the tokenizer's.
        self._add_special = not bool(getattr(tokenizer, "chat_template", None))
        max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 4096
        self.max_positions = int(max_pos)
        # prompt text -> the references it was built with, for title guidance's negative prompts
        self._built: dict[str, tuple[dict, ...]] = {}

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_model(cls, name_or_path: str | Path, **kwargs: Any) -> "Generator":
        """The base model alone (no adapter): a registered name, a folder or a hub id."""
        from catalogtune.core import models

        model, tok = models.load(name_or_path)
        return cls(model, tok, has_adapter=False, name=str(name_or_path), **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | Path, model: str | Path | None = None, **kwargs: Any) -> "Generator":
        """The base named in ``RUN_DIR/config.yaml`` plus the adapter in ``RUN_DIR/adapter/``.

        ``model`` overrides the base recorded in the run (e.g. when its path moved).
        """
        from catalogtune.core import models

        run = Path(run_dir)
        if not run.is_dir():
            raise CatalogtuneError(f"run folder not found: {run}")
        adapter = run / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise CatalogtuneError(f"run {run} has no adapter ({adapter}/adapter_config.json missing; train it first)")
        base = model or base_model_of(run)
        import peft

        base_model, tok = models.load(base)
        try:
            wrapped = peft.PeftModel.from_pretrained(base_model, str(adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CatalogtuneError(f"cannot load adapter {adapter} onto {base}: {msg}") from None
        return cls(wrapped, tok, has_adapter=True, name=f"{base}+{run.name}", **kwargs)

    # --- prompts ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` the way the model sees a prompt."""
        return list(self.tok(text, add_special_tokens=self._add_special)["input_ids"])

    def prompt(self, title: str, context: Sequence[dict] | None = None) -> str:
        """The prompt for ``title``; retrieved records are dropped from the end until it fits the cap."""
        text, ctx = self._fit(title, context, False)
        if len(self._built) >= 4096:
            self._built.clear()
        self._built[text] = tuple(ctx)
        return text

    def negative_prompt(self, context: Sequence[dict] | None = None) -> str:
        """The prompt guidance contrasts with: the same layout and references, no title."""
        return self._fit("", context, True)[0]

    def _fit(self, title: str, context: Sequence[dict] | None, blank: bool) -> tuple[str, list[dict]]:
        ctx = list(context or [])
        while True:
            text = prompt_mod.build_prompt(self.tok, title, context=ctx or None, blank_title=blank)
            if not ctx or len(self.encode(text)) <= MAX_PROMPT_TOKENS:
                return text, ctx
            ctx.pop()

    def negatives_for(self, prompts: Sequence[str]) -> list[str]:
        """Each prompt's negative prompt, for prompts built by ``prompt`` (its references kept, the
        title dropped); any other text (a raw /v1/completions prompt) is its own negative: it has no
        title to contrast with, and guidance only puts its scores on the log-probability scale."""
        return [self.negative_prompt(list(self._built[p])) if p in self._built else p for p in prompts]

    def _prompt_cap(self, max_new_tokens: int) -> int:
        return max(1, min(MAX_PROMPT_TOKENS, self.max_positions - max_new_tokens))

    @contextlib.contextmanager
    def _adapter(self, use_adapter: bool) -> Iterator[Any]:
        """The module to run: the base (adapter switched off), the merged copy, or the model as is."""
        if self.has_adapter and not use_adapter:
            with self.model.disable_adapter():
                yield self.model
        elif self.has_adapter and self.merge:
            yield self.merged()
        else:
            yield self.model

    @contextlib.contextmanager
    def _gen_net(self, use_adapter: bool) -> Iterator[Any]:
        """The module generation runs: ``_adapter``'s, or under bf16 autocast a copy with bf16 linears.

        Autocast casts an fp32 weight to bf16 at every call when nothing needs its gradient (the
        cast cache only keeps weights that require grad): at decode sizes that re-cast of all the
        weights was 60 % of a step of smollm2-135m (torch profiler, batch 16, avx512_bf16 CPU).
        The copy holds each linear layer's weight already in bf16, the exact value autocast made
        of it (the output layer is untied first: the input embeddings stay fp32), so the outputs
        are the same token for token; built once per role, about half the fp32 model's size.
        """
        if not (self.bf16 and self.device.type == "cpu"):
            with self._adapter(use_adapter) as net:
                yield net
            return
        role = "base" if self.has_adapter and not use_adapter else (
            "merged" if self.has_adapter and self.merge else "model")
        if role not in self._bf16_nets:
            import copy

            if role == "base":
                net = copy.deepcopy(self.model).unload()  # the base model, LoRA layers removed unmerged
            else:
                with self._adapter(use_adapter) as src:  # the merged copy, or the model as is
                    net = copy.deepcopy(src)
            self._bf16_nets[role] = _bf16_linears(net.eval())
        yield self._bf16_nets[role]

    def merged(self) -> Any:
        """A copy of the model with the LoRA update folded into the weights, built on first use.

        A LoRA layer costs two extra small matmuls per projection per token (x A, then B), and at
        decode sizes those launches cost as much as the big one: merged, the fine-tuned model runs
        at the base model's speed. The copy leaves ``self.model`` untouched, so the base outputs
        stay exact (no merge/unmerge rounding drift); it costs one more copy of the weights.
        """
        if self._merged is None:
            import copy

            self._merged = copy.deepcopy(self.model).merge_and_unload().eval()
        return self._merged

    # --- generation ---------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int = 160,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        batch_size: int = 16,
        use_adapter: bool = True,
        seed: int = 0,
        penalty_scope: str = "output",
        ground_penalty: float = 0.0,
        guidance: float = 0.0,
        negative_prompts: list[str] | None = None,
    ) -> list[Generation]:
        """Generate one description per prompt (greedy unless ``do_sample``), in input order.

        ``penalty_scope`` says what the repetition penalty and the no-repeat n-gram rule look at:
        ``"output"`` (the generated tokens only) or ``"all"`` (prompt too, as transformers does).
        Over the prompt they forbid the model to repeat the title or copy a retrieved record's
        3-grams (an author's name, a series title): the answer cannot use what it was given.
        ``ground_penalty`` > 0 lowers the logits of mid-sentence name and number starts that the
        row's prompt lacks (``core.decoding.GroundedNames``). ``guidance`` > 0 decodes by
        ``batching.guide`` against one negative prompt per prompt (default ``negatives_for``: the
        same prompt without the title); the static path uses transformers' guidance processor.
        """
        import torch

        prompts = _check_texts("prompts", prompts)
        max_new_tokens = min(_check_int("max_new_tokens", max_new_tokens, 1), MAX_NEW_TOKENS)
        batch_size = _check_int("batch_size", batch_size, 1)
        no_repeat_ngram_size = _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
        if do_sample and not (temperature > 0 and 0 < top_p <= 1):
            raise CatalogtuneError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
        if not repetition_penalty > 0:
            raise CatalogtuneError(f"repetition_penalty must be > 0, not {repetition_penalty}")
        if not ground_penalty >= 0:
            raise CatalogtuneError(f"ground_penalty must be >= 0, not {ground_penalty}")
        if penalty_scope not in PENALTY_SCOPES:
            raise CatalogtuneError(f"penalty_scope must be one of {', '.join(PENALTY_SCOPES)}, not {penalty_scope!r}")
        if not guidance >= 0:
            raise CatalogtuneError(f"guidance must be >= 0, not {guidance}")
        if guidance and negative_prompts is not None and len(negative_prompts) != len(prompts):
            raise CatalogtuneError("guidance needs one negative prompt per prompt")
        if guidance and negative_prompts is None:
            negative_prompts = self.negatives_for(prompts)
        if not prompts:
            return []
        cap = self._prompt_cap(max_new_tokens)
        encoded = []
        for i, p in enumerate(prompts):
            ids = self.encode(p)
            if not ids:
                raise CatalogtuneError(f"prompt {i} is empty")
            encoded.append(ids[-cap:])  # left truncation keeps the title and the answer cue
        neg_ids = [self.encode(p)[-cap:] for p in _check_texts("negative_prompts", negative_prompts)] if guidance else []
        output_only = penalty_scope == "output"
        gen_cfg = self._generation_config(max_new_tokens, do_sample, temperature, top_p,
                                          1.0 if output_only else repetition_penalty,
                                          0 if output_only else no_repeat_ngram_size)
        rules = (repetition_penalty, no_repeat_ngram_size) if output_only else (1.0, 0)
        # Longest first: similar lengths share a batch (little padding) and peak memory shows early.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        if self.continuous and not do_sample and output_only and self._can_join_rows():
            t0 = time.perf_counter()
            negatives = [neg_ids[i] for i in order] if guidance else None
            rows = self._generate_continuous([encoded[i] for i in order], max_new_tokens, batch_size, use_adapter,
                                             rules, ground_penalty, negatives, guidance)
            share = (time.perf_counter() - t0) / len(order)
            for i, (ids, stopped) in zip(order, rows):
                results[i] = Generation(self._decode(ids), len(ids), share, stopped, ids, len(encoded[i]))
            return results  # type: ignore[return-value]
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + b)  # reproducible sampling without touching the caller's RNG
                rows = self._generate_batch([encoded[i] for i in idx], gen_cfg, use_adapter, rules, ground_penalty,
                                            [neg_ids[i] for i in idx] if guidance else None, guidance)
            share = (time.perf_counter() - t0) / len(idx)
            for i, (ids, stopped) in zip(idx, rows):
                results[i] = Generation(self._decode(ids), len(ids), share, stopped, ids, len(encoded[i]))
        return results  # type: ignore[return-value]

    def _generation_config(self, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                           repetition_penalty: float, no_repeat_ngram_size: int) -> Any:
        from transformers import GenerationConfig

        kw: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=bool(do_sample), num_beams=1,
            eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id, use_cache=True,
        )
        if do_sample:
            kw.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
        if repetition_penalty != 1.0:
            kw["repetition_penalty"] = float(repetition_penalty)
        if no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = no_repeat_ngram_size
        return GenerationConfig(**kw)

    def _generate_batch(self, batch: list[list[int]], gen_cfg: Any, use_adapter: bool,
                        rules: tuple[float, int] = (1.0, 0), ground_penalty: float = 0.0,
                        negatives: list[list[int]] | None = None, guidance: float = 0.0) -> list[tuple[list[int], str]]:
        """Left-pad ``batch``, decode with the KV cache; (ids before the stop token, reason) per row.

        ``rules`` (repetition penalty, no-repeat n-gram size) apply to the generated tokens only.
        ``negatives`` with ``guidance``: title guidance by transformers' classifier-free guidance
        processor (its scale is 1 + ``guidance``), first of the processors.
        """
        import torch

        pad = self.tok.pad_token_id
        from catalogtune.infer.batching import left_padded

        input_ids, mask = left_padded(batch, pad)
        width = input_ids.shape[1]
        with torch.inference_mode(), self._gen_net(use_adapter) as net, self._autocast():
            procs = self._processors(width, rules, ground_penalty)
            if guidance and negatives is not None:
                from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

                neg, neg_mask = left_padded(negatives, pad)
                procs.insert(0, UnbatchedClassifierFreeGuidanceLogitsProcessor(
                    1.0 + guidance, net, neg.to(self.device), neg_mask.to(self.device)))
            out = net.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gen_cfg,
                logits_processor=procs,
            )
        new = out[:, width:].tolist()
        stops = set(self.stop_ids)
        rows = []
        for ids in new:
            cut = next((j for j, t in enumerate(ids) if t in stops), None)
            rows.append((ids, "length") if cut is None else (ids[:cut], "eos"))
        return rows

    def _autocast(self) -> Any:
        """bf16 autocast for generation on a CPU that has it, else nothing."""
        import torch

        if self.bf16 and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _can_join_rows(self) -> bool:
        if self._continuous_ok is None:
            from catalogtune.infer import batching

            self._continuous_ok = batching.supports(self.model)
        return self._continuous_ok

    def _generate_continuous(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                             use_adapter: bool, rules: tuple[float, int], ground_penalty: float,
                             negatives: list[list[int]] | None = None,
                             guidance: float = 0.0) -> list[tuple[list[int], str]]:
        """Greedy decoding of ``prompts`` (in admission order) with continuous batching."""
        import torch

        from catalogtune.infer import batching

        vocab = self._grounding_vocab() if ground_penalty else None
        with torch.inference_mode(), self._gen_net(use_adapter) as net, self._autocast():
            return batching.generate(net, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     pad_id=self.tok.pad_token_id, stop_ids=self.stop_ids, rules=rules,
                                     ground_vocab=vocab, ground_penalty=ground_penalty, device=self.device,
                                     negatives=negatives, guidance=guidance)

    def can_join(self, do_sample: bool = False, penalty_scope: str = "output") -> bool:
        """True when ``generate_live`` can serve these settings (greedy, output-only rules, plain caches)."""
        return self.continuous and not do_sample and penalty_scope == "output" and self._can_join_rows()

    def generate_live(self, feed: Callable[[int], Sequence[tuple[Any, str, int]]],
                      on_done: Callable[[Any, Generation], None], *, batch_size: int = 16, use_adapter: bool = True,
                      repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                      ground_penalty: float = 0.0, on_text: Callable[[Any, str], None] | None = None,
                      guidance: float = 0.0) -> int:
        """Continuous batching over prompts that keep arriving: a server's requests join the running batch.

        ``feed(free)`` returns at most ``free`` new ``(key, prompt, max_new_tokens)`` (an empty list when
        none is waiting); ``on_done(key, generation)`` is called the step a prompt ends, so its answer
        leaves before the batch does. Greedy decoding with output-only rules (``can_join``): the same
        tokens as ``generate`` gives the prompt alone. ``on_text(key, piece)`` streams each prompt's
        text as it grows: the pieces join to the start of the final text (trailing whitespace and
        an unfinished multi-byte character are held back until they are followed by more). Returns
        once nothing is running or fed; the number of prompts generated. ``guidance``: title guidance
        as in ``generate`` (each prompt's negative from ``negatives_for``).
        """
        import torch

        from catalogtune.infer import batching

        if not self.can_join():
            raise CatalogtuneError("generate_live needs greedy decoding on a model whose cache rows can be joined")
        batch_size = _check_int("batch_size", batch_size, 1)
        keys: list[Any] = []
        meta: list[tuple[int, float]] = []  # (prompt tokens, admission time)

        def pull(free: int) -> list[tuple]:
            out = []
            for key, text, limit in feed(free):
                limit = min(_check_int("max_new_tokens", limit, 1), MAX_NEW_TOKENS)
                cap = self._prompt_cap(limit)
                ids = self.encode(_check_texts("prompts", [text])[0])[-cap:]
                keys.append(key)
                meta.append((len(ids), time.perf_counter()))
                out.append((ids, limit, self.encode(self.negatives_for([text])[0])[-cap:]) if guidance else (ids, limit))
            return out

        streams: dict[int, tuple[list[int], list[str]]] = {}  # prompt -> (ids so far, [text sent])

        def token(i: int, t: int) -> None:
            ids, sent = streams.setdefault(i, ([], [""]))
            ids.append(t)
            text = self._stream_text(ids)
            if len(text) > len(sent[0]) and text.startswith(sent[0]):
                on_text(keys[i], text[len(sent[0]):])  # type: ignore[misc]
                sent[0] = text

        def done(i: int, row: tuple[list[int], str]) -> None:
            ids, stopped = row
            on_done(keys[i], Generation(self._decode(ids), len(ids), time.perf_counter() - meta[i][1], stopped,
                                        ids, meta[i][0]))

        vocab = self._grounding_vocab() if ground_penalty else None
        with torch.inference_mode(), self._gen_net(use_adapter) as net, self._autocast():
            rows = batching.generate(net, [], batch_size=batch_size, max_new_tokens=1, pad_id=self.tok.pad_token_id,
                                     stop_ids=self.stop_ids, rules=(repetition_penalty, no_repeat_ngram_size),
                                     ground_vocab=vocab, ground_penalty=ground_penalty, device=self.device,
                                     feed=pull, on_done=done, on_token=token if on_text is not None else None,
                                     guidance=guidance)
        return len(rows)

    def _stream_text(self, ids: list[int]) -> str:
        """The part of ``_decode(ids)`` that more tokens will not change: no trailing space or
        unfinished character (a byte-level piece of a multi-byte one decodes as U+FFFD)."""
        text = _OUTPUT_CONTROL.sub(" ", self.tok.decode(ids, skip_special_tokens=True)).lstrip()
        return text.rstrip("\ufffd").rstrip()

    def _processors(self, width: int, rules: tuple[float, int], ground_penalty: float) -> Any:
        procs = output_rules(width, *rules)
        if ground_penalty:
            from catalogtune.core.decoding import GroundedNames

            procs.append(GroundedNames(self._grounding_vocab(), width, ground_penalty))
        return procs

    def _grounding_vocab(self) -> dict:
        """``core.decoding.grounding_vocab`` of the tokenizer, once per generator (~3 s for 49k tokens)."""
        if getattr(self, "_ground_vocab", None) is None:
            from catalogtune.core.decoding import grounding_vocab

            self._ground_vocab = grounding_vocab(self.tok)
        return self._ground_vocab

    def _decode(self, ids: list[int]) -> str:
        text = self.tok.decode(ids, skip_special_tokens=True)
        return _OUTPUT_CONTROL.sub(" ", text).strip()

    # --- scoring ------------------------------------------------------------------------

    def score(
        self, prompts: list[str], completions: list[str], use_adapter: bool = True, batch_size: int = 8
    ) -> list[tuple[float, int]]:
        """(summed negative log-likelihood, token count) of each description given its prompt.

        The description is scored as ``prompt.completion_text(tok, desc)`` (text + end token), on
        at most ``MAX_SCORE_TOKENS`` tokens; fp32, no autocast, so perplexities stay comparable.
        """
        batch_size = _check_int("batch_size", batch_size, 1)
        pairs = self.score_pairs(prompts, completions)
        # batches of similar length: a short description padded to a long one's width costs as
        # much as the long one (the sample's run from a few tokens to MAX_SCORE_TOKENS); each
        # row's value does not depend on its batch mates (fp32), only the time does
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            for i, res in zip(rows, self._score_batch([pairs[i] for i in rows], use_adapter)):
                out[i] = res
        return out

    def score_pairs(self, prompts: list[str], completions: list[str]) -> list[tuple[list[int], list[int]]]:
        """The (prompt ids, description ids) that ``score`` scores, checked: the prompt's last
        ``MAX_PROMPT_TOKENS``, the description as ``completion_text`` cut to ``MAX_SCORE_TOKENS``."""
        prompts = _check_texts("prompts", prompts)
        completions = _check_texts("completions", completions)
        if len(prompts) != len(completions):
            raise CatalogtuneError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = []
        for i, (p, c) in enumerate(zip(prompts, completions)):
            p_ids = self.encode(p)[-MAX_PROMPT_TOKENS:]
            c_ids = list(self.tok(prompt_mod.completion_text(self.tok, c), add_special_tokens=False)["input_ids"])
            if not p_ids:
                raise CatalogtuneError(f"prompt {i} is empty")
            pairs.append((p_ids, c_ids[:MAX_SCORE_TOKENS]))
        return pairs

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]], use_adapter: bool) -> list[tuple[float, int]]:
        import torch

        seqs = [p + c for p, c in pairs]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):  # left padding: every completion ends at the last column
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions start at 0 on each row's first real token
        keep = max(len(c) for _, c in pairs) + 1  # logits only where completions are predicted
        with torch.inference_mode(), self._adapter(use_adapter) as net, fp32_packed(net):
            logits = net(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=pos.to(self.device), logits_to_keep=keep).logits
        res = []
        for r, (_, c) in enumerate(pairs):
            n = len(c)
            # logits column j holds the prediction for sequence position width - keep + j + 1
            lp = torch.log_softmax(logits[r, keep - 1 - n : keep - 1].float(), dim=-1)
            target = torch.tensor(c, device=lp.device).unsqueeze(1)
            res.append((float(-lp.gather(1, target).sum()), n))
        return res


def _bf16_linears(net: Any, packed: bool = True) -> Any:
    """``net`` with every ``nn.Linear`` weight and bias stored in bf16 (in place); a tied output
    layer gets its own copy first, so the input embeddings keep their dtype.

    ``packed``: each layer also keeps its weight in oneDNN's blocked layout and multiplies with
    it (the ``_linear_pointwise`` op inductor's CPU freezing uses), skipping the per-call reorder of
    a plain weight: at decode sizes (16-32 rows) 1.2-1.8x faster per layer than ``F.linear`` on
    bf16 weights (smollm2-135m's shapes, avx512_bf16 EPYC, 1 thread; the 49152-row output layer
    12.4 -> 6.9 ms at 16 rows). The plain bf16 weight stays: the same values, for everything else.
    """
    import torch

    emb, out = net.get_input_embeddings(), net.get_output_embeddings()
    if emb is not None and out is not None and out.weight is emb.weight:
        out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=False)
    import types

    from catalogtune.train.cpu_kernels import pack_weight

    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = m.weight.data.to(torch.bfloat16)
            if m.bias is not None:
                m.bias.data = m.bias.data.to(torch.bfloat16)
            if packed and (w := pack_weight(m.weight.data)) is not None:
                m._packed_weight = w
                m.forward = types.MethodType(_packed_forward, m)
    return net


def _packed_forward(self: Any, x: Any) -> Any:
    """``nn.Linear.forward`` on the layer's oneDNN-packed bf16 weight (``train.cpu_kernels.packed_linear``)."""
    import torch

    from catalogtune.train.cpu_kernels import packed_linear

    return packed_linear(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16), self._packed_weight, self.bias)


def base_model_of(run: Path) -> str:
    """The base model a run was trained from: ``config.yaml`` key ``model``, else the adapter's record."""
    import json

    from catalogtune.core import config

    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        model = config.load_yaml(cfg_path).get("model")
        if model:
            return str(model)
    ad = run / "adapter" / "adapter_config.json"
    try:
        model = json.loads(ad.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        model = None
    if not model:
        raise CatalogtuneError(f"run {run}: {cfg_path} is missing or has no 'model' key (the base model)")
    return str(model)
