"""Builders shared by several test modules (run folders, prepared splits)."""

from __future__ import annotations

import json
from pathlib import Path


def make_run(run_dir: Path, model_dir: Path, nonzero: bool = True, lora_alpha: int = 32) -> Path:
    """A run folder as the trainer leaves it: config.yaml naming the base model, and a LoRA adapter.

    ``nonzero``: B starts random instead of zero, so the adapter really changes the outputs.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from catalogtune.core import models

    model, _ = models.load(model_dir)
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj"],
                     init_lora_weights=not nonzero, task_type="CAUSAL_LM")
    get_peft_model(model, cfg).save_pretrained(str(run_dir / "adapter"))
    (run_dir / "config.yaml").write_text(f"model: {model_dir}\n", encoding="utf-8")
    return run_dir


def write_splits(out: Path, sample: Path, n: int) -> Path:
    """train/val/test.parquet holding the first ``n`` records of ``sample`` (the same rows in each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [json.loads(x) for x in sample.read_text(encoding="utf-8").splitlines()[:n]]
    rows = [{"id": str(i), "title": r["title"], "content": " ".join(r["content"].split())} for i, r in enumerate(recs)]
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        pq.write_table(pa.Table.from_pylist(rows), out / f"{split}.parquet")
    return out


TRAIN_WORDS = "red blue pink cotton steel kids girls gift set pack book novel music album toy game".split()


def train_records(n: int, offset: int = 0) -> list[dict]:
    """``n`` invented catalogue records with short, repetitive descriptions (the engine's tests)."""
    out = []
    for i in range(offset, offset + n):
        a, b, c = TRAIN_WORDS[i % 16], TRAIN_WORDS[(i * 3) % 16], TRAIN_WORDS[(i * 7) % 16]
        out.append({"id": str(i), "title": f"{a} {b} {c}", "content": f"a {a} {b} for {c} " * (1 + i % 3)})
    return out


def write_train_val(out: Path) -> Path:
    """train.parquet (16 records) and val.parquet (4 other records) in ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(train_records(16)), out / "train.parquet")
    pq.write_table(pa.Table.from_pylist(train_records(4, offset=100)), out / "val.parquet")
    return out


def small_train_cfg(data_dir: Path, model_dir: Path, run_dir: Path, **kw):
    """A TrainConfig for the tiny model: batch 4, 48 tokens, rank 4, 4 steps unless ``kw`` says otherwise."""
    from catalogtune.core import config
    from catalogtune.train.stage import TrainConfig

    base = dict(data=data_dir, out=run_dir, model=str(model_dir), batch_size=4, max_length=48, lr=1e-2, eval_every=2,
                save_every=2, patience=0, max_steps=4, lora_r=4, lora_alpha=8, seed=0)
    base.update(kw)
    return config.build(TrainConfig, base)


def wait_until(pred, timeout: float = 20.0) -> bool:
    """Poll ``pred`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
