"""`catalogtune bench generate`: batched Generator tokens/s against plain `generate`, one prompt at a time.

Both paths get the same prompts (real titles from the shared sample, the project's prompt
template), greedy decoding, the same max_new_tokens and the same stop tokens; each counts the
tokens it generated before the stop token. The anchor is transformers' ``model.generate`` on one
prompt at a time with the model as loaded (fp32; with ``--run``, the PEFT model with its adapter
layers), measured in the same process, interleaved with the batched path batch by batch.

``--settings evaluate`` (the default) measures what ``evaluate`` does: the project's decoding
(repetition penalty and no repeated 3-grams on the output, on both paths), title guidance at
evaluate's scale (each token also scores the same prompt without the title: the batched path runs
it in a second cache, the anchor through transformers' classifier-free guidance processor, which
re-runs the negative prompt's cache beside ``generate``), RAG-length prompts (three other
catalogue records as references) and, with ``--run``, the adapter on.
``--settings plain``: bare greedy decoding of bare title prompts.

The roofline is the best the batched path could do at the batch used: a decode step must read
every weight once (bytes / measured memory bandwidth) and do 2 FLOPs per weight per row (FLOPs /
measured matmul ceiling in the dtype generation runs in), and before its first step each row's
prompt costs 2 FLOPs per weight per prompt token (the prefill, which the measured tokens/s
include); tokens/s <= batch x new tokens / (prefill time + new tokens x step time). Under title
guidance every row is two rows (its prompt and its negative prompt) for the decode FLOPs, the
prefill adds only each negative's tail (what follows the start it shares with its prompt, which
the prompt's pass computes: ``batching.shared_start``), and the weights are still read once per
step at the limit. The
decode-only limit is printed beside it. KV-cache reads and attention are left out, so the real
limit is a little lower. The machine is shared, so
CPU seconds are reported beside wall seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from catalogtune.bench import timed
from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, shared_sample, torch_threads


@dataclass
class BenchGenerateConfig:
    """Options of `catalogtune bench generate`."""

    model: str = "smollm2-135m"
    """Base model name or path."""
    prompts: int = 32
    """How many titles (prompts) both paths generate for."""
    max_new_tokens: int = 64
    """Most tokens per prompt (same for both paths)."""
    batch_size: int = 32
    """Prompts per batch on the batched path."""
    sample: Path | None = None
    """JSONL file with a "title" per line (default: the shared real sample)."""
    bf16: bool | None = None
    """bf16 autocast on the batched path (default: on where the CPU runs bf16 natively)."""
    threads: int | None = None
    """torch threads (default: one per core, or 1 when the machine is already busier than its cores)."""
    same_precision_anchor: bool = False
    """Also time the Generator itself one prompt at a time (separates batching from bf16)."""
    run: Path | None = None
    """Training run whose adapter is on (the fine-tuned model, as evaluate's "finetuned" system)."""
    settings: str = "evaluate"
    """evaluate: the project's decoding and RAG-length prompts; plain: greedy on bare title prompts."""
    roofline: bool = True
    """Measure memory bandwidth and the matmul ceiling and print the roofline at the batch used."""
    static: bool = True
    """Also time the static-batch path (continuous batching off: transformers' generate per batch)."""
    guidance: float | None = None
    """Title guidance scale on every path (default: evaluate's under --settings evaluate, 0 under plain)."""

    def __post_init__(self) -> None:
        for name in ("prompts", "max_new_tokens", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError("threads must be >= 1")
        if self.max_new_tokens > 1024:
            raise ValueError("max_new_tokens must be <= 1024 (the generator's hard cap)")
        if self.settings not in ("evaluate", "plain"):
            raise ValueError("settings must be evaluate or plain")
        if self.guidance is not None and not float(self.guidance) >= 0:
            raise ValueError("guidance may not be negative")

    @property
    def guidance_scale(self) -> float:
        """The guidance both paths decode with."""
        from catalogtune.core.decoding import DECODING

        if self.guidance is not None:
            return float(self.guidance)
        return float(DECODING.guidance) if self.settings == "evaluate" else 0.0


@dataclass
class BenchGenerateResult:
    """The figures printed as the benchmark's JSON line."""

    figures: dict[str, Any]
    """batched/sequential tokens per second, speedup, and the run's settings."""


def load_titles(path: Path | None, n: int) -> list[str]:
    """The first ``n`` non-empty titles of a JSONL file (the shared sample by default)."""
    return [r["title"] for r in load_records(path, n)]


def load_records(path: Path | None, n: int) -> list[dict]:
    """The first ``n`` records with a non-empty title of a JSONL file (the shared sample by default)."""
    path = path or shared_sample()
    if path is None or not Path(path).is_file():
        raise CatalogtuneError(f"title sample not found: {path or 'shared/data/amazon_titles_sample.jsonl'}"
                               " (give --sample FILE.jsonl)")
    records: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                title = rec.get("title")
            except (ValueError, AttributeError):
                continue  # a bad line is skipped: the bench needs titles, not every record
            if isinstance(title, str) and title.strip():
                content = rec.get("content")
                records.append({"title": title, "content": content if isinstance(content, str) else ""})
            if len(records) == n:
                break
    if len(records) < n:
        raise CatalogtuneError(f"{path} has only {len(records)} usable titles, {n} asked")
    return records


def rag_contexts(records: list[dict], k: int = 3) -> list[list[dict]]:
    """For each record, ``k`` other records with a description as its references (RAG-length prompts)."""
    pool = [r for r in records if r["content"].strip()] or records
    return [[pool[(i + j) % len(pool)] for j in range(1, k + 1)] for i in range(len(records))]


def _plain_generate(gen: Any, prompts: list[str], max_new_tokens: int, rules: tuple[float, int] = (1.0, 0),
                    guidance: float = 0.0) -> tuple[int, list[str]]:
    """The anchor: ``model.generate`` on one prompt at a time, greedy, no batching, no autocast.

    ``rules`` (repetition penalty, no-repeat n-gram size) on the output, as the batched path;
    ``guidance``: transformers' classifier-free guidance processor (scale 1 + ``guidance``) on the
    prompt's negative (``Generator.negatives_for``), first of the processors.
    """
    import torch
    from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

    from catalogtune.core.decoding import output_rules

    stops = set(gen.stop_ids)
    total, texts = 0, []
    for p in prompts:
        ids = torch.tensor([gen.encode(p)])
        procs = output_rules(ids.shape[1], *rules)
        if guidance:
            neg = torch.tensor([gen.encode(gen.negatives_for([p])[0])])
            procs.insert(0, UnbatchedClassifierFreeGuidanceLogitsProcessor(1.0 + guidance, gen.model, neg,
                                                                           torch.ones_like(neg)))
        with torch.inference_mode():
            out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=gen.stop_ids,
                                     pad_token_id=gen.tok.pad_token_id, logits_processor=procs)
        new = out[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(new) if t in stops), len(new))
        total += cut
        texts.append(gen._decode(new[:cut]))  # the same text clean-up as the batched path
    return total, texts


def run(cfg: BenchGenerateConfig) -> BenchGenerateResult:
    """Time the batched path and the one-at-a-time anchor on the same prompts, batch by batch."""
    from catalogtune.infer.generate import Generator

    records = load_records(cfg.sample, int(cfg.prompts))
    load_before = os.getloadavg()[0]
    # the thread count is process-wide: torch_threads gives it back (tests call this in-process)
    with torch_threads(int(cfg.threads) if cfg.threads is not None else None) as threads:
        gen = (Generator.from_run(cfg.run, bf16=cfg.bf16) if cfg.run is not None
               else Generator.from_model(cfg.model, bf16=cfg.bf16))
        contexts = rag_contexts(records) if cfg.settings == "evaluate" else [None] * len(records)
        prompts = [gen.prompt(r["title"], context=c) for r, c in zip(records, contexts)]
        figures = _measure(gen, prompts, cfg)
        if cfg.roofline:
            new_per_row = figures["new_tokens"] / max(1, figures["prompts"])
            guided = figures["guidance"] > 0
            prefill = figures["mean_prompt_tokens"] + (figures["mean_negative_tail_tokens"] if guided else 0.0)
            figures.update(roofline(gen, int(cfg.batch_size), figures["batched_tokens_per_s"],
                                    prompt_tokens=prefill, new_tokens=new_per_row, passes=2 if guided else 1))
    figures.update(threads=threads, load_avg_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)])
    return BenchGenerateResult(figures=figures)


def _measure(gen: Any, prompts: list[str], cfg: BenchGenerateConfig) -> dict[str, Any]:
    from catalogtune.core.decoding import DECODING
    from catalogtune.infer.batching import shared_start

    mnt = int(cfg.max_new_tokens)
    rules = (DECODING.repetition_penalty, DECODING.no_repeat_ngram_size) if cfg.settings == "evaluate" else (1.0, 0)
    g = cfg.guidance_scale
    kw = {"repetition_penalty": rules[0], "no_repeat_ngram_size": rules[1], "penalty_scope": "output", "guidance": g}
    # Warm both paths (allocator, oneDNN kernels) so neither pays first-call costs in the timing.
    gen.generate(prompts[:2], max_new_tokens=4, batch_size=2, **kw)
    _plain_generate(gen, prompts[:1], 4, rules, g)

    # Interleave the paths chunk by chunk: on a shared machine the load drifts, and every path
    # should see the same drift. A chunk holds 4 batches, so continuous batching has waiting
    # prompts to put in the slots that finished rows free (as in evaluate, which hands it all).
    bs = int(cfg.batch_size)
    outs: list[Any] = []
    s_texts: list[str] = []
    b_wall = b_cpu = s_wall = s_cpu = st_wall = 0.0
    s_tokens = st_tokens = st_same = 0
    for start in range(0, len(prompts), 4 * bs):
        chunk = prompts[start : start + 4 * bs]
        res, w, c = timed(partial(gen.generate, chunk, max_new_tokens=mnt, batch_size=bs, **kw))
        outs += res
        b_wall, b_cpu = b_wall + w, b_cpu + c
        if cfg.static:
            continuous, gen.continuous = gen.continuous, False
            try:
                st, w, _ = timed(partial(gen.generate, chunk, max_new_tokens=mnt, batch_size=bs, **kw))
            finally:
                gen.continuous = continuous
            st_tokens, st_wall = st_tokens + sum(o.new_tokens for o in st), st_wall + w
            st_same += sum(a.token_ids == b.token_ids for a, b in zip(res, st))
        (n, texts), w, c = timed(partial(_plain_generate, gen, chunk, mnt, rules, g))
        s_tokens, s_wall, s_cpu = s_tokens + n, s_wall + w, s_cpu + c
        s_texts += texts
        print(f"bench generate: {start + len(chunk)}/{len(prompts)} prompts "
              f"(batched {b_wall:.1f}s, one at a time {s_wall:.1f}s)", file=sys.stderr, flush=True)
    b_tokens = sum(o.new_tokens for o in outs)
    neg_ids = [gen.encode(n) for n in gen.negatives_for(prompts)]  # each negative encoded once, for both figures
    figures: dict[str, Any] = {
        "bench": "generate",
        "model": str(cfg.model),
        "run": str(cfg.run) if cfg.run is not None else None,
        "settings": cfg.settings,
        "decoding": {"repetition_penalty": rules[0], "no_repeat_ngram_size": rules[1], "penalty_scope": "output"},
        "guidance": g,
        "mean_prompt_tokens": round(sum(o.prompt_tokens for o in outs) / max(1, len(outs)), 1),
        "mean_negative_prompt_tokens": round(sum(len(n) for n in neg_ids) / max(1, len(prompts)), 1),
        "mean_negative_tail_tokens": round(sum(len(n) - shared_start(gen.encode(p), n)
                                               for p, n in zip(prompts, neg_ids)) / max(1, len(prompts)), 1),
        "prompts": len(prompts),
        "max_new_tokens": mnt,
        "batch_size": int(cfg.batch_size),
        "bf16_autocast": gen.bf16,
        # threads and load_avg_1m (before, after) are added by run(): with more runnable threads than
        # cores, multi-threaded matmuls stall at every barrier and the ratio says more about the load.
        "cpu_count": os.cpu_count(),
        "new_tokens": b_tokens,
        "sequential_new_tokens": s_tokens,
        "batched_tokens_per_s": round(b_tokens / b_wall, 2),
        "sequential_tokens_per_s": round(s_tokens / s_wall, 2),
        "speedup": round((b_tokens / b_wall) / (s_tokens / s_wall), 2) if s_tokens and b_tokens else None,
        "batched_wall_s": round(b_wall, 2),
        "sequential_wall_s": round(s_wall, 2),
        "speedup_cpu_time": round((b_tokens / b_cpu) / (s_tokens / s_cpu), 2) if s_tokens and b_tokens else None,
        "stopped_at_eos": sum(o.stopped == "eos" for o in outs),
        "continuous_batching": bool(gen.continuous and gen._can_join_rows()),
        "same_text_as_anchor": sum(o.text == t for o, t in zip(outs, s_texts)),
    }
    if cfg.static and st_wall:
        figures.update(static_batch_tokens_per_s=round(st_tokens / st_wall, 2), static_batch_wall_s=round(st_wall, 2),
                       speedup_over_static=round((b_tokens / b_wall) / (st_tokens / st_wall), 2) if st_tokens else None,
                       same_tokens_as_static=st_same)
    if cfg.same_precision_anchor:
        one, o_wall, _ = timed(lambda: gen.generate(prompts, max_new_tokens=mnt, batch_size=1, **kw))
        o_tokens = sum(o.new_tokens for o in one)
        figures["generator_bs1_tokens_per_s"] = round(o_tokens / o_wall, 2)
        figures["speedup_same_precision"] = round((b_tokens / b_wall) / (o_tokens / o_wall), 2) if o_tokens else None
    return figures


def memory_bandwidth_gb_s(mb: int = 256, trials: int = 5) -> float:
    """Copy bandwidth (GB/s, read + write counted) of a ``mb`` MB float32 tensor, median of ``trials``."""
    import statistics

    import torch

    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def roofline(gen: Any, batch: int, measured_tok_s: float, prompt_tokens: float = 0.0,
             new_tokens: float = 1.0, passes: int = 1) -> dict[str, Any]:
    """The roofline at ``batch`` rows for ``gen``'s model, and the measured share of it.

    The measured tokens/s include the prefill of each row's ``prompt_tokens`` (2 FLOPs per weight
    per prompt token, at the matmul ceiling) before its ``new_tokens`` decode steps, so the limit
    does too: ``batch * new_tokens / (prefill time + new_tokens * step time)``. The decode-only
    limit is given beside it. ``passes`` 2 (title guidance): each step computes two rows per
    output row and reads the weights once (``prompt_tokens`` then counts both prompts).
    """
    import torch

    from catalogtune.bench.ceiling import matmul_ceiling_tflops

    with gen._gen_net(True) as net:  # the module fine-tuned outputs come from (merged; bf16 linears under bf16)
        linear = [m.weight for m in net.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(w.numel() for w in linear)
    dtype = "bfloat16" if gen.bf16 else "float32"
    bytes_per_step = sum(w.numel() * w.element_size() for w in linear)  # as generation stores them
    bw = memory_bandwidth_gb_s()
    tflops = matmul_ceiling_tflops(n=1024, dtype=dtype)
    step_s = max(bytes_per_step / (bw * 1e9), 2.0 * weights * batch * passes / (tflops * 1e12))
    decode_limit = batch / step_s
    prefill_s = 2.0 * weights * batch * prompt_tokens / (tflops * 1e12)
    new_tokens = max(new_tokens, 1e-9)
    limit = batch * new_tokens / (prefill_s + new_tokens * step_s)
    return {"roofline_tokens_per_s": round(limit, 1), "share_of_roofline": round(measured_tok_s / limit, 4),
            "decode_only_roofline_tokens_per_s": round(decode_limit, 1),
            "prefill_share_of_limit_time": round(prefill_s / (prefill_s + new_tokens * step_s), 3),
            "roofline_prompt_tokens": round(prompt_tokens, 1), "roofline_new_tokens_per_row": round(new_tokens, 1),
            "roofline_passes": passes,
            "roofline_bound": "memory" if bytes_per_step / (bw * 1e9) >= 2.0 * weights * batch * passes / (tflops * 1e12) else "compute",
            "memory_bandwidth_gb_s": round(bw, 2), "matmul_ceiling_tflops": round(tflops, 3),
            "ceiling_dtype": dtype, "linear_weights": weights, "weight_bytes_per_step": bytes_per_step}


def main(argv: list[str]) -> int:
    """`catalogtune bench generate [--model NAME] [--prompts 32] [--max-new-tokens 64] [--batch-size 32]`."""
    from catalogtune.bench import emit

    cfg = config.parse(BenchGenerateConfig, argv, "catalogtune bench generate", __doc__.splitlines()[0])
    emit(run(cfg).figures)
    return 0
