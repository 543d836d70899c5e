"""``train --resume`` refuses a changed recipe (one line naming the fields) and cleans a killed save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalogtune import cli
from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError
from catalogtune.train import checkpoints as ckpt
from catalogtune.train.stage import TrainConfig, check_resume, run


def _started_run(run_dir: Path, prepared: Path, model: Path) -> TrainConfig:
    """A run folder as a run killed after its step-2 checkpoint leaves it (no model needed)."""
    cfg = config.build(TrainConfig, dict(data=prepared, out=run_dir, model=str(model), lr=1e-3, lora_r=4,
                                         lora_alpha=8, max_steps=10, batch_size=4, max_length=48))
    run_dir.mkdir(parents=True)
    config.save(cfg, run_dir / "config.yaml")
    (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-2" / "state.json").write_text(json.dumps({"step": 2}))
    return cfg


def test_resume_with_another_recipe_is_refused_in_one_line(prepared, tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = _started_run(run_dir, prepared, tiny_model_dir)
    changed = config.build(TrainConfig, {**config.to_dict(cfg), "lr": 0.005, "resume": True})
    with pytest.raises(CatalogtuneError, match=r"changed recipe \(lr 0\.001 -> 0\.005\)"):
        run(changed)  # refused before the model loads
    assert cli.main(["train", "--out", str(run_dir), "--resume", "--lora-r", "8", "--seed", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "lora_r 4 -> 8; seed 0 -> 3" in err[0], err
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()  # the saved recipe is untouched
    assert not (run_dir / ".lock").exists()


def test_resume_may_change_when_to_stop_validate_and_save(prepared, tiny_model_dir, tmp_path):
    cfg = _started_run(tmp_path / "run", prepared, tiny_model_dir)
    more = {**config.to_dict(cfg), "max_steps": 40, "patience": 5, "eval_every": 3, "save_every": 7,
            "merge": True, "resume": True, "memory_probe": False}
    check_resume(config.build(TrainConfig, more))  # no error
    saved = config.load_yaml(cfg.out / "config.yaml")
    saved.pop("rag_index", None)  # a run saved before a field existed: its default is assumed
    assert ckpt.recipe_changes(saved, config.to_dict(cfg), {"rag_index": None}) == []


def test_leftovers_of_a_killed_save_are_removed_on_start(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-2" / "state.json").write_text("{}")
    (run_dir / "checkpoints" / ".step-50.4242.k3j2h1g0.tmp").mkdir()
    (run_dir / "checkpoints" / ".step-50.4242.k3j2h1g0.tmp" / "trainable.safetensors").write_bytes(b"half")
    (run_dir / ".progress.json.4242.a1b2c3d4.tmp").write_text("{")
    (run_dir / ".adapter.old").mkdir()
    removed = ckpt.remove_stale_temps(run_dir)
    assert sorted(removed) == [".adapter.old", ".progress.json.4242.a1b2c3d4.tmp", ".step-50.4242.k3j2h1g0.tmp"]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
