"""The unsloth backend: one-line errors without CUDA/the package, and the calls it makes to Unsloth."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from catalogtune.train import unsloth as ub
from catalogtune.core.util import CatalogtuneError


def _cfg(**kw):
    base = dict(model="tiny-random", max_length=128, load_in_4bit=False, bf16="auto", lora_r=8,
                lora_alpha=16, lora_dropout=0.0, target_modules=["all-linear"], use_dora=False, seed=7)
    base.update(kw)
    return SimpleNamespace(**base)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_no_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(ub, "_cuda_available", lambda: False)
    with pytest.raises(CatalogtuneError) as info:
        ub.load_unsloth(_cfg())
    msg = _one_line(info.value)
    assert "CUDA" in msg and "catalogtune[unsloth]" in msg and "--backend torch" in msg


def test_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(ub, "_cuda_available", lambda: True)
    monkeypatch.setattr(ub, "_package_available", lambda: False)
    with pytest.raises(CatalogtuneError) as info:
        ub.check_available()
    msg = _one_line(info.value)
    assert "pip install 'catalogtune[unsloth]'" in msg and "CUDA GPU" not in msg


def test_this_machine_matches_reality():
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("unsloth"):
        ub.check_available()  # a CUDA machine with the extra: no error
    else:
        with pytest.raises(CatalogtuneError):
            ub.check_available()


class _FakeFLM:
    calls: dict = {}

    @staticmethod
    def from_pretrained(**kw):
        _FakeFLM.calls["from_pretrained"] = kw
        return SimpleNamespace(name="base"), SimpleNamespace(pad_token=None, eos_token="</s>")

    @staticmethod
    def get_peft_model(model, **kw):
        _FakeFLM.calls["get_peft_model"] = kw
        return SimpleNamespace(name="peft", base=model)


@pytest.fixture
def fake_unsloth(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(ub, "_cuda_available", lambda: True)
    monkeypatch.setattr(ub, "_package_available", lambda: True)
    mod = types.ModuleType("unsloth")
    mod.FastLanguageModel = _FakeFLM
    monkeypatch.setitem(sys.modules, "unsloth", mod)
    _FakeFLM.calls = {}
    return _FakeFLM


def test_calls_fastlanguagemodel_with_the_run_settings(fake_unsloth, tiny_model_dir):
    import torch

    model, tok = ub.load_unsloth(_cfg(load_in_4bit=True, bf16="true", lora_dropout=0.05))
    assert model.name == "peft" and model.base.name == "base"
    assert tok.pad_token == "</s>"  # a tokenizer without pad token gets EOS
    fp = fake_unsloth.calls["from_pretrained"]
    assert fp["model_name"] == str(tiny_model_dir) and fp["max_seq_length"] == 128
    assert fp["load_in_4bit"] is True and fp["dtype"] is torch.bfloat16
    gp = fake_unsloth.calls["get_peft_model"]
    assert gp["r"] == 8 and gp["lora_alpha"] == 16 and gp["lora_dropout"] == 0.05
    assert gp["use_gradient_checkpointing"] == "unsloth" and gp["random_state"] == 7
    assert set(gp["target_modules"]) == set(ub.DEFAULT_TARGETS)  # "all-linear" expanded


def test_explicit_targets_and_auto_dtype(fake_unsloth):
    ub.load_unsloth(_cfg(target_modules=["q_proj", "v_proj"], bf16="auto"))
    assert fake_unsloth.calls["get_peft_model"]["target_modules"] == ["q_proj", "v_proj"]
    assert fake_unsloth.calls["from_pretrained"]["dtype"] is None


def test_dora_is_refused_before_loading(fake_unsloth):
    with pytest.raises(CatalogtuneError, match="DoRA"):
        ub.load_unsloth(_cfg(use_dora=True))
    assert fake_unsloth.calls == {}


def test_unsloth_import_failure_is_one_line(monkeypatch):
    monkeypatch.setattr(ub, "_cuda_available", lambda: True)
    monkeypatch.setattr(ub, "_package_available", lambda: True)
    monkeypatch.setitem(sys.modules, "unsloth", None)  # import raises ImportError
    with pytest.raises(CatalogtuneError) as info:
        ub.load_unsloth(_cfg())
    assert "catalogtune[unsloth]" in _one_line(info.value)


def test_train_cli_refuses_unsloth_without_cuda(tmp_path, capsys):
    import torch

    pytest.importorskip("catalogtune.train.stage")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from catalogtune import cli

    rc = cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                   "--model", "tiny-random", "--backend", "unsloth", "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unsloth" in err
    assert not (tmp_path / "run" / "adapter").exists()
