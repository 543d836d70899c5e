"""Every YAML preset in configs/ loads into TrainConfig; the default preset is the defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from catalogtune.core import config
from catalogtune.train.stage import DEFAULT_PRESET, TrainConfig, check_environment
from catalogtune.core.util import CatalogtuneError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_presets_exist():
    names = {p.name for p in CONFIGS}
    assert {"cpu-smollm2.yaml", "cpu-gemma3.yaml", "gpu-qlora-2b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads_into_train_config(path, tmp_path):
    cfg = config.build(TrainConfig, path, data=tmp_path, out=tmp_path / "run")
    assert set(config.load_yaml(path)) <= {f.name for f in dataclasses.fields(TrainConfig)}
    # a preset round-trips through the run's config.yaml
    config.save(cfg, tmp_path / "c.yaml")
    assert config.build(TrainConfig, tmp_path / "c.yaml") == cfg


def test_default_preset_equals_the_dataclass_defaults(tmp_path):
    from_preset = config.build(TrainConfig, DEFAULT_PRESET, data=tmp_path, out=tmp_path)
    assert from_preset == TrainConfig(data=tmp_path, out=tmp_path)


def test_gpu_preset_is_refused_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = config.build(TrainConfig, DEFAULT_PRESET.parent / "gpu-qlora-2b.yaml", data=tmp_path, out=tmp_path)
    with pytest.raises(CatalogtuneError, match="CUDA"):
        check_environment(cfg)


def test_bad_values_are_refused(tmp_path):
    for bad in ({"bf16": "maybe"}, {"batch_size": 0}, {"backend": "jax"}, {"warmup_ratio": 1.5}):
        with pytest.raises(CatalogtuneError):
            config.build(TrainConfig, bad, data=tmp_path, out=tmp_path)
