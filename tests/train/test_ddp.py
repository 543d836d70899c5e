"""Scale-out: the unchanged `catalogtune train` command under torchrun (2 CPU processes, gloo).

Both ranks must end with identical LoRA weights (DDP averages the gradients, so the replicas
never drift) that moved away from their initial values, the run must know it had 2 processes,
and only rank 0 writes the run folder. No environment variable helps it: plain torchrun.
The rank dump comes from the engine's hook: with ``CATALOGTUNE_RANK_DUMP=DIR`` every rank
``torch.save``s its trainable LoRA state dict to ``DIR/rank{RANK}.pt`` at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_splits

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "accelerate").glob("*.yaml")))
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / name))
    assert cfg.num_processes >= 2 and str(cfg.distributed_type) != "DistributedType.NO"


@pytest.mark.integration  # two fresh Python processes with torch + peft: ~30-50 s on 2 busy cores
def test_two_cpu_ranks_end_with_identical_adapters(tmp_path, sample_path, tiny_model_dir):
    pytest.importorskip("catalogtune.train.stage")
    import torch

    data = write_splits(tmp_path / "data", sample_path, 32)
    dump, run_dir = tmp_path / "dump", tmp_path / "run"
    dump.mkdir()
    env = dict(os.environ, CATALOGTUNE_RANK_DUMP=str(dump), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "catalogtune", "train", "--data", str(data), "--out", str(run_dir),
           "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size", "4", "--max-length", "64"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-3000:])

    ranks = [torch.load(dump / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]
    assert ranks[0] and set(ranks[0]) == set(ranks[1])
    assert all("lora" in k for k in ranks[0])  # trainable parameters only: the adapters
    for key, value in ranks[0].items():
        torch.testing.assert_close(value, ranks[1][key], rtol=0, atol=1e-7, msg=f"ranks differ at {key}")
    # PEFT starts lora_B at zero: after 3 steps every B must have moved.
    lora_b = {k: v for k, v in ranks[0].items() if "lora_B" in k}
    assert lora_b and all(float(v.abs().sum()) > 0 for v in lora_b.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    # world_size 2 proves a real process group: two independent single-process runs with the
    # same seed would also end equal, so equality alone would prove nothing.
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert (run_dir / "adapter").is_dir()
