"""The training loop: accelerate (single process, DDP, FSDP), checkpoints, resume, signals.

Determinism: the batch plan is a function of (seed, epoch), and the dropout RNG is re-seeded
from (seed, step, rank) before every step, so a run killed and resumed from a checkpoint
redoes exactly the steps an uninterrupted run would have done. SIGINT and SIGTERM set a flag;
the loop then finishes the current step, saves a checkpoint and ends "cancelled".
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from catalogtune.core import config
from catalogtune.train.checkpoints import LoopState, MetricsLog, TensorBoard, checkpoints, load_checkpoint, save_checkpoint
from catalogtune.train.batches import Example, collate, eval_batches, make_schedule, no_loss, tokenize
from catalogtune.train.cpu_kernels import keep_freed_memory, weights_updated
from catalogtune.train.model import LossModel, bf16_supported, load_for_training, load_trainable, trainable_state
from catalogtune.core.util import CatalogtuneError, atomic_dir, atomic_write_json, auto_threads, budget_seconds, peak_rss_mb


def make_optimizer(params: list, lr: float, weight_decay: float, device: torch.device,
                   sharded: bool = False) -> torch.optim.Optimizer:
    """AdamW; on CPUs its fused kernel where every parameter is a plain float tensor.

    torch's default on CPUs is a Python loop of small ops per parameter (a LoRA model has
    hundreds): about 20 ms per step for SmolLM2, against a few for the fused kernel. The
    state (``exp_avg``, ``exp_avg_sq``, ``step``) is the same, so checkpoints load either way.
    GPUs keep torch's default (already multi-tensor there), and so do sharded runs (FSDP).
    """
    fused = (device.type == "cpu" and not sharded and bool(params)
             and all(type(p) is torch.nn.Parameter and p.dtype in (torch.float32, torch.bfloat16) for p in params))
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def lr_at(step: int, total: int, lr: float, warmup_ratio: float) -> float:
    """Linear warmup, then cosine decay to a tenth of ``lr`` at the last step."""
    warm = math.ceil(warmup_ratio * total)
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class _StopFlag:
    """SIGINT/SIGTERM -> ``flag`` (a second SIGINT interrupts at once, the usual way)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():  # signals work only there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Loop:
    """One training run (built by ``train``); holds the model, optimizer and counters."""

    def __init__(self, cfg: Any, train_rows: list[dict], val_rows: list[dict]):
        from accelerate import Accelerator

        self.cfg, self.run_dir = cfg, Path(cfg.out)
        self.wall0 = time.perf_counter()
        # cpu=True is what makes accelerate see a torchrun/accelerate-launch job on CPUs (gloo).
        self.acc = acc = Accelerator(cpu=not torch.cuda.is_available())
        self.main = acc.is_main_process
        if acc.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # 1 thread on an oversubscribed machine: 2 threads there ran a smollm2 step in 200 s, not 15
            share = max(1, len(os.sched_getaffinity(0)) // max(1, acc.num_processes))
            torch.set_num_threads(auto_threads(os.getloadavg()[0], share))
        if acc.device.type == "cpu" and cfg.fast_kernels:
            keep_freed_memory()
        self.bf16 = cfg.bf16 == "true" or (cfg.bf16 == "auto" and bf16_supported())
        torch.manual_seed(cfg.seed)  # LoRA initialisation
        self.model, self.tok = load_for_training(cfg, acc.device)
        self.fast = self._speed_ups()
        self.n_params = sum(p.numel() for p in self.model.parameters())  # frozen base + LoRA
        train_tok = tokenize(train_rows, self.tok, cfg.max_length, mask_unsupported=cfg.mask_unsupported,
                             mask_scope=cfg.mask_scope, kind_prompts=cfg.kind_prompts)
        if cfg.kind_prompts and self.main:
            print("train: kind prompts: " + ", ".join(f"{n:,} {k}" for k, n in sorted(train_tok.kinds.items())),
                  flush=True)
        self.examples: list[Example] = train_tok.examples
        self.records = [train_rows[i] for i in train_tok.sources]  # the record of each example
        if not self.examples:
            raise CatalogtuneError(f"no usable training records in {cfg.data} (skipped: {train_tok.skipped})")
        self.val: list[Example] = tokenize(val_rows, self.tok, cfg.max_length).examples
        if cfg.eval_every and not self.val:
            raise CatalogtuneError(f"no usable validation records in {cfg.data}")
        too_long = train_tok.skipped.get("prompt_too_long", 0)
        if too_long and self.main:
            print(f"train: {too_long} of {len(train_rows)} training prompts leave no room for a description in "
                  f"max_length {cfg.max_length} tokens and are skipped"
                  + (" (retrieval-aware prompts hold references: raise --max-length, the demo uses 448)"
                     if cfg.rag_index is not None else ""), file=sys.stderr, flush=True)
        self.data_info = {"n_train": len(self.examples), "n_val": len(self.val),
                          "skipped": train_tok.skipped, "truncated": train_tok.truncated}
        if cfg.kind_prompts:
            self.data_info["prompt_kinds"] = train_tok.kinds
        if cfg.mask_unsupported:
            masked = sum(len(no_loss(ex)) for ex in self.examples)
            total = sum(len(ex[0]) - ex[1] for ex in self.examples)
            self.data_info["masked_tokens"] = masked
            if self.main:
                print(f"mask_unsupported: {masked} of {total} description tokens ({masked / max(total, 1):.1%}) "
                      "are unsupported names or numbers and carry no loss", flush=True)
        self.sched = make_schedule(len(self.examples), cfg.batch_size, cfg.grad_accum, cfg.seed,
                                   acc.num_processes, acc.process_index)
        self.total = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.sched.steps_per_epoch))
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.sharded = acc.distributed_type.name in ("FSDP", "DEEPSPEED", "MEGATRON_LM")
        self.opt = make_optimizer(params, cfg.lr, cfg.weight_decay, acc.device, sharded=self.sharded)
        self.opt.register_step_post_hook(weights_updated)  # the fused LoRA groups' bf16 copies
        self.state, self.best, self.resumed_from = LoopState(), None, None
        self._restore_or_clean()
        self.planned_total = self.total
        if self.state.sample_n is not None:  # a budget's stratified sample: the same records again
            self.use_sample(self.state.sample_n)
        if self.state.total_steps is not None:  # fixed by a budget before the checkpoint: same schedule
            self.total = self.state.total_steps
        self.wall_before = self.state.wall_s
        self.loss_model, self.opt = acc.prepare(LossModel(self.model), self.opt)
        self.params = params
        self.saved_step = self.state.step if self.resumed_from is not None else -1
        self.segment_steps, self.segment_s = 0, 0.0
        self.plan: dict[str, Any] | None = None  # set from the memory probe (make_plan)

    # -- setup ---------------------------------------------------------------------------
    def _restore_or_clean(self) -> None:
        ckpts = checkpoints(self.run_dir) if self.cfg.resume else []
        if ckpts:
            step, path = ckpts[-1]
            self.state, trainable, opt_state, self.best = load_checkpoint(path)
            load_trainable(self.model, trainable)
            self.opt.load_state_dict(opt_state)
            self.resumed_from = step
        elif self.main and not self.cfg.resume:
            for name in ("checkpoints", "tb", "adapter", "merged"):
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
            for name in ("metrics.jsonl", "summary.json", "progress.json"):
                (self.run_dir / name).unlink(missing_ok=True)
        self.acc.wait_for_everyone()

    def _speed_ups(self) -> dict[str, Any]:
        """Apply `train_fast`'s speed-ups that fit this run; returns what was applied."""
        cfg, dev = self.cfg, self.acc.device
        from catalogtune.train import cpu_attention as train_attention
        from catalogtune.train import cpu_kernels as train_fast

        done: dict[str, Any] = {}
        if not (cfg.fast_kernels and self.bf16 and cfg.backend == "torch" and not cfg.load_in_4bit):
            return done
        done["bf16_frozen"] = train_fast.freeze_in_bf16(self.model)
        if dev.type == "cpu":
            done["cpu_attention"] = train_attention.use_cpu_attention(self.model)
            done["fast_dropout"] = train_fast.fast_lora_dropout(self.model)
            done["rms_norms"] = train_fast.fast_rms_norms(self.model)
            if cfg.lora_dropout == 0 and not cfg.gradient_checkpointing and not cfg.use_dora:
                done["fused_lora_groups"] = train_fast.fuse_lora_groups(self.model)
                if done.get("cpu_attention"):
                    done["rope_attention"] = train_attention.fast_llama_attention(self.model)
            else:
                done["lora_forward"] = train_fast.fast_lora_forward(self.model)
        return done

    def autocast(self) -> Any:
        """bf16 autocast on this device when enabled, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.acc.device.type, dtype=torch.bfloat16)

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns global counts and loss."""
        cfg, acc, dev = self.cfg, self.acc, self.acc.device
        t0 = time.perf_counter()
        torch.manual_seed((cfg.seed * 1_000_003 + self.state.step) * 131 + acc.process_index)
        micro = [collate(self.examples, b, self.pad_id) for b in self.sched.step_batches(self.examples, self.state.step)]
        n_useful = max(1, sum(c["n_useful"] for c in micro))
        lr = lr_at(self.state.step, self.total, cfg.lr, cfg.warmup_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float32, device=dev)
        for i, c in enumerate(micro):
            sync = i == len(micro) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.loss_model):
                with self.autocast():
                    s = self.loss_model(c["input_ids"].to(dev), c["loss_rows"].to(dev), c["loss_targets"].to(dev))
                acc.backward(s / n_useful)
            loss_sum += s.detach()
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        n_tok = sum(c["n_tokens"] for c in micro)
        stats = torch.tensor([loss_sum.item(), n_useful, n_tok, float(self.stop.signum is not None)], dtype=torch.float64)
        if acc.num_processes > 1:
            stats = acc.reduce(stats.to(dev), reduction="sum").cpu()
        dt = time.perf_counter() - t0
        self.segment_steps += 1
        self.segment_s += dt
        return {"loss": stats[0].item() / stats[1].item(), "useful": int(stats[1]), "tokens": int(stats[2]),
                "stop": bool(stats[3] > 0), "lr": lr, "dt": dt}

    def probe_memory(self) -> None:
        """Forward + backward of this rank's longest possible micro-batch; the gradients are dropped.

        Before the first step (and after a resume): a batch that does not fit in memory fails
        here, in seconds, not hours into the run. On CPUs the heap also reaches its peak size
        here, once (`train_fast.keep_freed_memory` keeps it), so steps do not page-fault on
        fresh memory: 3-4 % of the first SmolLM2 steps on 2 cores. Nothing is updated, and the
        steps' random streams are unchanged (each step reseeds them).
        """
        if self.sharded:  # sharded engines run collectives inside forward/backward: leave them be
            return
        cfg, dev = self.cfg, self.acc.device
        longest = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i][0]))[-cfg.batch_size:]
        c = collate(self.examples, longest, self.pad_id)
        with self.acc.no_sync(self.loss_model):  # DDP: no gradient all-reduce for this one
            with self.autocast():
                s = self.loss_model(c["input_ids"].to(dev), c["loss_rows"].to(dev), c["loss_targets"].to(dev))
            self.acc.backward(s)
        self.opt.zero_grad(set_to_none=True)

    def make_plan(self, probe_s: float) -> dict[str, Any] | None:
        """Projected wall time of the steps left, from the memory probe's timing.

        The probe is forward + backward of the longest micro-batch; a step costs about the same
        per token, so a step is projected at ``probe_s * mean tokens per step / probe tokens`` and
        each validation pass at a third of that per token (forward only). The probe pays first-call
        costs, so the projection leans high.
        """
        if self.sharded or probe_s <= 0:
            return None
        cfg = self.cfg
        lengths = sorted(len(ex[0]) for ex in self.examples)
        probe_tokens = sum(lengths[-cfg.batch_size:])
        per_token = probe_s / max(1, probe_tokens)
        step_tokens = sum(lengths) / max(1, self.sched.steps_per_epoch)
        left = self.total - self.state.step
        evals = left // cfg.eval_every if cfg.eval_every else 0
        val_tokens = sum(len(ex[0]) for ex in self.val)
        seconds = left * step_tokens * per_token + evals * val_tokens * per_token / 3
        return {"records": len(self.examples), "tokens_per_epoch": sum(lengths), "steps_left": left,
                "probe_s": round(probe_s, 3), "probe_tokens": probe_tokens, "projected_s": round(seconds, 1)}

    def apply_budget(self) -> None:
        """Keep only the steps that fit ``cfg.budget`` (once, before the first step; kept on resume)."""
        cfg, st = self.cfg, self.state
        if cfg.budget is None or self.plan is None or st.total_steps is not None:
            return
        budget = budget_seconds(cfg.budget)
        left, projected = self.plan["steps_left"], self.plan["projected_s"]
        keep = left if projected <= budget else max(1, int(left * budget / projected))
        if self.acc.num_processes > 1:  # every rank must stop at the same step: the smallest
            keep = int(self.acc.gather(torch.tensor([keep], device=self.acc.device)).min())
        self.plan.update(budget_s=budget, planned_steps=self.total, kept_steps=st.step + keep)
        per_step = cfg.batch_size * cfg.grad_accum * self.acc.num_processes
        if st.step == 0 and keep < self.sched.steps_per_epoch and keep * per_step < len(self.examples):
            # Less than one epoch fits: one pass over a stratified sample, not a random prefix.
            of = len(self.examples)
            st.sample_n = keep * per_step
            self.use_sample(st.sample_n)
            keep = min(keep, self.sched.steps_per_epoch)
            self.plan.update(sample_records=st.sample_n, sample_of=of)
            if self.main:
                print(f"train plan: budget {cfg.budget}: {keep:,} of {left:,} steps kept: one epoch over a seeded "
                      f"sample of {st.sample_n:,} of {of:,} records, stratified by title length and inferred "
                      "category", file=sys.stderr, flush=True)
        elif keep < left and self.main:
            share = keep / max(1, self.sched.steps_per_epoch)
            print(f"train plan: budget {cfg.budget}: {keep:,} of {left:,} steps kept ({share:.2f} epochs)",
                  file=sys.stderr, flush=True)
        self.total = st.total_steps = st.step + keep

    def use_sample(self, n: int) -> None:
        """Train on ``stratified_sample(records, n)`` (seeded by the run's seed) instead of every record."""
        from catalogtune.data.categories import STRATA, stratified_sample

        idx = stratified_sample(self.records, n, self.cfg.seed)
        self.examples = [self.examples[i] for i in idx]
        self.records = [self.records[i] for i in idx]
        self.sched = make_schedule(len(self.examples), self.cfg.batch_size, self.cfg.grad_accum, self.cfg.seed,
                                   self.acc.num_processes, self.acc.process_index)
        self.data_info["sample"] = {"records": len(idx), "of": self.data_info["n_train"],
                                    "strata": STRATA, "seed": self.cfg.seed}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss per description token (every rank computes it on the whole set)."""
        # The unwrapped module: no DDP collectives, so ranks cannot wait on each other here.
        module = self.acc.unwrap_model(self.loss_model)
        module.eval()
        total, count = 0.0, 0
        for idxs in eval_batches(self.val, self.cfg.batch_size * 2):
            c = collate(self.val, idxs, self.pad_id)
            with self.autocast():
                s = module(c["input_ids"].to(self.acc.device), c["loss_rows"].to(self.acc.device),
                           c["loss_targets"].to(self.acc.device))
            total, count = total + s.item(), count + c["n_useful"]
        module.train()
        return total / max(1, count)

    def record_eval(self, val: float) -> None:
        """Update best loss / patience with a new validation loss."""
        st = self.state
        st.last_val_loss = val
        st.val_history.append([st.step, val])
        if st.best_val_loss is None or val < st.best_val_loss:
            st.best_val_loss, st.best_step, st.bad_evals = val, st.step, 0
            self.best = trainable_state(self.acc.unwrap_model(self.loss_model).lm)
        else:
            st.bad_evals += 1

    # -- files ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Save checkpoints/step-N (main process) unless this step is already saved."""
        if self.main and self.saved_step != self.state.step:
            self.state.wall_s = self.wall_so_far()
            lm = self.acc.unwrap_model(self.loss_model).lm
            save_checkpoint(self.run_dir, self.state, trainable_state(lm), self.opt.state_dict(), self.best)
        self.saved_step = self.state.step

    def wall_so_far(self) -> float:
        """Wall time of this run including earlier (resumed) segments."""
        return self.wall_before + time.perf_counter() - self.wall0

    def progress(self, state: str) -> None:
        """Write progress.json (the app polls it)."""
        if not self.main:
            return
        rate = self.segment_s / self.segment_steps if self.segment_steps else None
        eta = None if rate is None else round(rate * max(0, self.total - self.state.step), 1)
        atomic_write_json(self.run_dir / "progress.json", {
            "state": state, "step": self.state.step, "total_steps": self.total, "eta_s": eta,
            "loss": self.state.last_loss, "val_loss": self.state.last_val_loss, "pid": os.getpid(),
        })

    def write_adapter(self) -> None:
        """RUN_DIR/adapter: the LoRA weights of the best validation loss (else the last ones)."""
        if not self.main:
            return
        lm = self.acc.unwrap_model(self.loss_model).lm
        weights = self.best if self.best is not None else trainable_state(lm)
        with atomic_dir(self.run_dir / "adapter") as tmp:
            lm.save_pretrained(str(tmp), state_dict=weights)
            self.tok.save_pretrained(str(tmp))

    def summary(self, stopped: str) -> dict[str, Any]:
        """The summary.json content."""
        st = self.state
        train_s = max(st.train_s, 1e-9)
        return {
            "steps": st.step, "total_steps": self.total, "tokens": st.tokens, "useful_tokens": st.useful_tokens,
            "wall_s": round(self.wall_so_far(), 2), "train_s": round(st.train_s, 2),
            "tokens_per_s": st.tokens / train_s, "useful_tokens_per_s": st.useful_tokens / train_s,
            "peak_rss_mb": round(peak_rss_mb(), 1), "best_val_loss": st.best_val_loss, "best_step": st.best_step,
            "initial_val_loss": st.initial_val_loss, "final_val_loss": st.last_val_loss, "final_loss": st.last_loss,
            "stopped": stopped, "epochs_done": round(st.step / self.sched.steps_per_epoch, 3),
            "model": self.cfg.model, "model_params": self.n_params, "bf16": self.bf16, "world_size": self.acc.num_processes,
            "resumed_from": self.resumed_from, "speed_ups": self.fast, **self.data_info,
            "backend": self.cfg.backend, "device": self.acc.device.type, **self._gpu_figures(),
            "plan": self.plan,
        }

    def _gpu_figures(self) -> dict[str, Any]:
        """GPU name and peak GPU memory (this process) when training on CUDA, else nothing."""
        if self.acc.device.type != "cuda":
            return {}
        return {"gpu": torch.cuda.get_device_name(self.acc.device),
                "peak_gpu_mb": round(torch.cuda.max_memory_allocated(self.acc.device) / 2**20, 1)}

    # -- the loop ------------------------------------------------------------------------
    def run(self, callback: Callable[[int, "Loop"], None] | None = None) -> dict[str, Any]:
        """Train to the end (max steps, epochs, early stopping or a signal); returns the summary."""
        cfg, st = self.cfg, self.state
        if self.main:
            config.save(cfg, self.run_dir / "config.yaml")
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.resumed_from) if self.main else None
        tb = TensorBoard(self.run_dir / "tb") if self.main else None
        stopped = "max_steps" if cfg.max_steps else "finished"
        with _StopFlag() as self.stop:
            try:
                self.progress("running")
                if cfg.eval_every and st.initial_val_loss is None:
                    known = cfg.initial_val_loss
                    st.initial_val_loss = self.evaluate() if known is None else float(known)
                    self.record_eval(st.initial_val_loss)
                    tb and tb.scalars(0, {"val/loss": st.initial_val_loss})
                if cfg.memory_probe and st.step < self.total:
                    t_probe = time.perf_counter()
                    self.probe_memory()
                    self.plan = self.make_plan(time.perf_counter() - t_probe)
                    if self.main and self.plan:
                        print(plan_line(self.plan), file=sys.stderr, flush=True)
                    self.apply_budget()
                bar = _bar(self.total, st.step, self.main)
                while st.step < self.total:
                    out = self.train_step()
                    st.step += 1
                    st.tokens += out["tokens"]
                    st.useful_tokens += out["useful"]
                    st.train_s += out["dt"]
                    st.last_loss = out["loss"]
                    rec = {"step": st.step, "loss": out["loss"], "lr": out["lr"],
                           "tokens_per_s": out["tokens"] / out["dt"], "useful_tokens_per_s": out["useful"] / out["dt"],
                           "time": time.time()}
                    if cfg.eval_every and (st.step % cfg.eval_every == 0 or st.step == self.total):
                        rec["val_loss"] = self.evaluate()
                        self.record_eval(rec["val_loss"])
                    metrics and metrics.write(rec)
                    tb and tb.scalars(st.step, {"train/loss": rec["loss"], "train/lr": rec["lr"],
                                                "val/loss": rec.get("val_loss"),
                                                "train/useful_tokens_per_s": rec["useful_tokens_per_s"]})
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}", refresh=False)
                    bar.update(1)
                    if st.step % cfg.save_every == 0:
                        self.checkpoint()
                    self.progress("running")
                    if callback is not None:
                        callback(st.step, self)
                    if out["stop"] or self.stop.signum is not None:
                        stopped = "cancelled"
                        break
                    if cfg.patience and st.bad_evals >= cfg.patience:
                        stopped = "early_stopping"
                        break
                bar.close()
                if stopped in ("finished", "max_steps") and self.total < self.planned_total:
                    stopped = "budget"
                self.checkpoint()
                self.write_adapter()
                summary = self.summary(stopped)
                if self.main:
                    atomic_write_json(self.run_dir / "summary.json", summary)
                if cfg.merge and stopped != "cancelled" and self.main:
                    merge(self.run_dir, cfg.model)
                self.progress("cancelled" if stopped == "cancelled" else "finished")
            except BaseException:
                # on a full disk this write fails too: the error worth reporting is the first one
                with contextlib.suppress(Exception):
                    self.progress("failed")
                raise
            finally:
                metrics and metrics.close()
                tb and tb.close()
        dump = os.environ.get("CATALOGTUNE_RANK_DUMP")
        if dump:  # the multi-process check compares every rank's final LoRA weights
            Path(dump).mkdir(parents=True, exist_ok=True)
            lm = self.acc.unwrap_model(self.loss_model).lm
            torch.save(trainable_state(lm), Path(dump) / f"rank{self.acc.process_index}.pt")
        return summary


def plan_line(plan: dict[str, Any]) -> str:
    """One stderr line: what the run will do and how long it should take, before it commits."""
    h, rem = divmod(int(plan["projected_s"]), 3600)
    took = f"{h} h {rem // 60} min" if h else f"{rem // 60} min {rem % 60} s"
    line = (f"train plan: {plan['records']:,} records, {plan['tokens_per_epoch']:,} tokens per epoch, "
            f"{plan['steps_left']:,} steps to go; the longest batch took {plan['probe_s']:.1f} s -> about {took}")
    if plan["projected_s"] > 24 * 3600:
        line += " (more than a day: --max-steps, --max-samples or a GPU preset would cut it)"
    return line


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # in a log file (not a terminal) one line every 30 s, not one per step
    quiet = not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True,
                mininterval=30.0 if quiet else 0.1)


def merge(run_dir: Path, model_name: str) -> Path:
    """Write RUN_DIR/merged/: the base model (float32) with RUN_DIR/adapter merged in."""
    from peft import PeftModel

    from catalogtune.core import models

    base, tok = models.load(model_name, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(run_dir / "adapter")).merge_and_unload()
    with atomic_dir(run_dir / "merged") as tmp:
        merged.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return run_dir / "merged"


def train(cfg: Any, train_rows: list[dict], val_rows: list[dict],
          callback: Callable[[int, Loop], None] | None = None, pool: dict | None = None) -> dict[str, Any]:
    """Build the loop for ``cfg`` and run it; returns the summary dict.

    ``pool`` describes the stratified sample ``train_rows`` is when a budget read only part of a
    large split (``{"records", "of", "seed"}``); the summary keeps it.
    """
    loop = Loop(cfg, train_rows, val_rows)
    if pool:
        from catalogtune.data.categories import STRATA

        loop.data_info["pool"] = dict(pool, strata=STRATA)
    return loop.run(callback)
