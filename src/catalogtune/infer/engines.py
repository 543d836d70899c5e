"""The engines of `catalogtune describe`: the project's torch ``Generator``, vLLM on CUDA, and
the torch engine in a pool of Ray Data actors. Each turns a chunk of titles (and their
references) into generated rows; ``describe.run`` does the reading, writing and resuming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError, read_json

# ``cfg`` below is a ``describe.DescribeConfig`` (not imported: describe imports this module).
DescribeConfig = Any

RAY_CHUNKS_PER_WORKER = 4
"""Chunks per Ray Data window and worker: each window starts its own actor pool (one model load
per actor), so a window must hold many chunks to hide that cost; the window is what a kill loses."""


class TorchEngine:
    """The project's ``Generator`` (adapter merged) as a describe engine."""

    def __init__(self, run: str | Path | None, model: str | None, bf16: bool | None = None) -> None:
        """Load the run's base + adapter, or the base model alone."""
        from catalogtune.infer.generate import Generator

        self.gen = Generator.from_run(run, model=model, bf16=bf16) if run else Generator.from_model(model, bf16=bf16)

    def describe(self, titles: list[str], contexts: list[list[dict]], max_new_tokens: int,
                 batch_size: int) -> list[dict]:
        """One ``{"text", "new_tokens", "stopped"}`` per title, decoded with ``DECODING``."""
        prompts = [self.gen.prompt(t, c or None) for t, c in zip(titles, contexts)]
        outs = self.gen.generate(prompts, batch_size=batch_size, use_adapter=self.gen.has_adapter,
                                 **DECODING.kwargs(max_new_tokens=max_new_tokens))
        return [{"text": g.text, "new_tokens": g.new_tokens, "stopped": g.stopped} for g in outs]


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise CatalogtuneError("--backend vllm needs vLLM (a CUDA machine): pip install vllm") from None
    return vllm


class VllmEngine:
    """vLLM on CUDA: ``vllm.LLM(enable_lora=True)``, the run's adapter as a ``LoRARequest``, greedy.

    Same prompts as the torch engine (token ids, the same left cap), ``temperature=0``, the same
    ``max_tokens``, repetition penalty and stop tokens. Differences that vLLM's ``SamplingParams``
    imposes: its repetition penalty counts the prompt's tokens too (DECODING's ``penalty_scope``
    "output" cannot be expressed), and it has no no-repeat n-gram rule and no title guidance, so outputs differ from
    the torch engine's.
    """

    def __init__(self, run: str | Path | None, model: str | None, max_new_tokens: int) -> None:
        """Start vLLM on the run's base model (needs CUDA)."""
        vllm = _import_vllm()
        import torch
        from transformers import AutoTokenizer
        from vllm.lora.request import LoRARequest

        from catalogtune.core import models
        from catalogtune.core.prompt import stop_token_ids
        from catalogtune.infer.generate import MAX_PROMPT_TOKENS, base_model_of

        if not torch.cuda.is_available():
            raise CatalogtuneError("--backend vllm needs a CUDA GPU; use --backend torch on this machine")
        base = models.resolve(model or base_model_of(Path(run)))  # type: ignore[arg-type]
        self.tok = AutoTokenizer.from_pretrained(str(base))
        self.stops = set(stop_token_ids(self.tok))
        max_pos = int(read_json(base / "config.json").get("max_position_embeddings") or 2048)
        max_len = min(MAX_PROMPT_TOKENS + max_new_tokens, max_pos)
        self.cap = max(1, max_len - max_new_tokens)
        kw: dict[str, Any] = {}
        self.lora = None
        if run is not None:
            adapter = Path(run) / "adapter"
            rank = int(read_json(adapter / "adapter_config.json").get("r", 16))
            kw = dict(enable_lora=True, max_loras=1,
                      max_lora_rank=next((r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank), 512))
            self.lora = LoRARequest("catalogtune-run", 1, str(adapter))
        self.llm = vllm.LLM(model=str(base), tokenizer=str(base), seed=0, max_model_len=max_len, **kw)
        self.params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=0,
                                          repetition_penalty=DECODING.repetition_penalty,
                                          stop_token_ids=sorted(self.stops), skip_special_tokens=True)

    def _ids(self, title: str, context: list[dict]) -> list[int]:
        from catalogtune.core.prompt import build_prompt

        add = not bool(getattr(self.tok, "chat_template", None))
        ctx = list(context)
        while True:  # as Generator.prompt: drop references from the end until the prompt fits
            ids = list(self.tok(build_prompt(self.tok, title, context=ctx or None), add_special_tokens=add)["input_ids"])
            if not ctx or len(ids) <= self.cap:
                return ids[-self.cap:]
            ctx.pop()

    def describe(self, titles: list[str], contexts: list[list[dict]], max_new_tokens: int,
                 batch_size: int) -> list[dict]:
        """One ``{"text", "new_tokens", "stopped"}`` per title (vLLM schedules its own batches)."""
        import re

        prompts = [{"prompt_token_ids": self._ids(t, c)} for t, c in zip(titles, contexts)]
        outs = self.llm.generate(prompts, self.params, lora_request=self.lora, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            ids = [t for t in c.token_ids]
            if ids and ids[-1] in self.stops:
                ids = ids[:-1]
            text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", " ", self.tok.decode(ids, skip_special_tokens=True))
            res.append({"text": text.strip(), "new_tokens": len(ids),
                        "stopped": "eos" if c.finish_reason == "stop" else "length"})
        return res


def open_engine(cfg: DescribeConfig) -> Any:
    """The engine ``cfg.backend`` names, loaded."""
    if cfg.backend == "vllm":
        return VllmEngine(cfg.run, cfg.model, cfg.max_new_tokens)
    return TorchEngine(cfg.run, cfg.model, bf16=cfg.bf16)


# --- Ray Data ------------------------------------------------------------------------------------


class RayDescriber:
    """A Ray Data actor: one torch engine (1 thread), one whole chunk per call."""

    def __init__(self, run: str | None, model: str | None, bf16: bool | None, max_new_tokens: int,
                 batch_size: int) -> None:
        """Load the model once per actor."""
        import torch

        torch.set_num_threads(1)  # one actor per core: threads would only fight over the cores
        self.engine = TorchEngine(run, model, bf16=bf16)
        self.mnt, self.bs = max_new_tokens, batch_size

    def __call__(self, batch: dict) -> dict:
        """``{"chunk", "payload"}`` (JSON titles + contexts) -> ``{"chunk", "result"}`` (JSON generations)."""
        import numpy as np

        out = []
        for payload in batch["payload"]:
            job = json.loads(payload)
            out.append(json.dumps(self.engine.describe(job["titles"], job["contexts"], self.mnt, self.bs)))
        return {"chunk": np.asarray(batch["chunk"]), "result": np.asarray(out, dtype=object)}


def describe_ray(cfg: DescribeConfig, jobs: Iterator[tuple[int, list[dict], list[list[dict]]]]
                 ) -> Iterator[tuple[int, list[dict]]]:
    """``(chunk index, generations)`` of each job from ``map_batches`` over ``ray_workers`` actors.

    Jobs go in windows of ``RAY_CHUNKS_PER_WORKER`` chunks per worker (``ray.data.from_items``
    needs a list; a window bounds memory), one chunk per block, so the pool shares them out.
    """
    from catalogtune.core.util import require

    ray = require("ray", extra="scale")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cfg.ray_workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    args = dict(run=str(cfg.run) if cfg.run else None, model=cfg.model, bf16=cfg.bf16,
                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    try:
        window: list[tuple[int, list[dict], list[list[dict]]]] = []
        for job in jobs:
            window.append(job)
            if len(window) >= cfg.ray_workers * RAY_CHUNKS_PER_WORKER:
                yield from _ray_window(ray, cfg.ray_workers, window, args)
                window = []
        if window:
            yield from _ray_window(ray, cfg.ray_workers, window, args)
    finally:
        if started:
            ray.shutdown()


def _ray_window(ray: Any, workers: int, window: list, args: dict) -> Iterator[tuple[int, list[dict]]]:
    items = [{"chunk": i, "payload": json.dumps({"titles": [p["title"] for p in prods], "contexts": ctx})}
             for i, prods, ctx in window]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        RayDescriber, batch_size=1, batch_format="numpy", num_cpus=1, fn_constructor_kwargs=args,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(items))))
    for row in ds.iter_rows():
        yield int(row["chunk"]), json.loads(row["result"])
