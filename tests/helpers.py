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

    from catalogtune import models

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
