"""`catalogtune export`: merged safetensors, GGUF (f16, q8_0) that transformers loads back, Ollama Modelfile."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from catalogtune import cli
from catalogtune.core import config
from catalogtune.core.decoding import DECODING
from catalogtune.core.prompt import build_prompt
from catalogtune.core.util import CatalogtuneError
from catalogtune.infer import export as E
from helpers import make_run

PROMPTS = ["Girls Ballet Tutu Pink", "Steel kitchen knife set, 3 pack 12 inch", "new music album cd"]



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("export") / "run", tiny_model_dir)


@pytest.fixture(scope="module")
def out_dir(run_dir) -> Path:
    out = run_dir.parent / "out"
    for fmt, quant in (("merged", "f16"), ("gguf", "f16"), ("gguf", "q8_0"), ("ollama", "f16")):
        E.run(config.build(E.ExportConfig, run=run_dir, format=fmt, quant=quant, out=out))
    return out


def _ids(tok, titles):
    """Prompt token ids the way the Generator encodes them (chat templates write their own BOS)."""
    return [tok(build_prompt(tok, t), add_special_tokens=not tok.chat_template)["input_ids"] for t in titles]


def _logits(model, ids_list):
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([ids])).logits[0].float() for ids in ids_list]


def _load(folder: Path, gguf: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": "model.gguf"} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(str(folder), **kw)


def test_merged_folder_equals_the_finetuned_model(out_dir, run_dir, tiny_model_dir):
    from catalogtune.core import models
    from catalogtune.infer.generate import Generator

    merged, tok = _load(out_dir / "merged")
    assert (out_dir / "merged" / "model.safetensors").is_file()
    gen = Generator.from_run(run_dir, bf16=False)
    base, _ = models.load(tiny_model_dir)
    ids = _ids(tok, PROMPTS)
    for m, a, b in zip(_logits(merged, ids), _logits(gen.model, ids), _logits(base, ids)):
        assert (m - a).abs().max() < 1e-4  # adapter merged = adapter applied
        assert (m - b).abs().max() > 0.05  # ...and it really changes the base
    manifest = json.loads((out_dir / "merged" / "export.json").read_text())
    assert manifest["format"] == "merged" and manifest["base"] == str(tiny_model_dir)


@pytest.mark.parametrize("quant,tol", [("f16", 5e-3), ("q8_0", 5e-2)])
def test_gguf_loads_back_with_transformers_and_matches(out_dir, quant, tol):
    merged, tok = _load(out_dir / "merged")
    model, gtok = _load(out_dir / f"gguf-{quant}", gguf=True)
    ids = _ids(tok, PROMPTS)
    assert _ids(gtok, PROMPTS) == ids  # the tokenizer travels in the GGUF metadata
    assert gtok.eos_token == tok.eos_token and gtok.pad_token == tok.pad_token
    diffs = [float((a - b).abs().max()) for a, b in zip(_logits(merged, ids), _logits(model, ids))]
    assert max(diffs) < tol, diffs
    assert max(diffs) > 0 or quant == "f16"  # q8_0 is really quantised
    manifest = json.loads((out_dir / f"gguf-{quant}" / "export.json").read_text())
    assert set(manifest["tensors"]) == ({"F16", "F32"} if quant == "f16" else {"Q8_0", "F32"})


def test_gguf_metadata_follows_llama_cpp(out_dir):
    import gguf

    reader = gguf.GGUFReader(str(out_dir / "gguf-f16" / "model.gguf"))
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("tokenizer.ggml.tok")}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
    assert f["llama.attention.head_count_kv"] == 2 and f["llama.rope.dimension_count"] == 16
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.add_bos_token"] is False
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.0.ffn_down.weight", "output_norm.weight"} <= names
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd


def test_ollama_modelfile_has_template_stops_and_decoding(out_dir, tiny_model_dir):
    from transformers import AutoTokenizer

    folder = out_dir / "ollama-f16"
    assert (folder / "model.gguf").is_file()
    text = (folder / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text.splitlines()
    assert 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER temperature 0" in text
    assert f"PARAMETER repeat_penalty {DECODING.repetition_penalty}" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert template.replace("{{ .Prompt }}", "Pink tutu") == build_prompt(tok, "Pink tutu")


def test_modelfile_from_a_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}{{ '{{' }} <|im_start|>assistant\n{% endif %}")
    text = E.modelfile(tok)
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.startswith("<|im_start|>user\nWrite the product description")
    assert "Title: {{ .Prompt }}<|im_end|>\n" in template
    assert template.endswith('{{ "{{" }} <|im_start|>assistant\n')  # a literal {{ is escaped for Go


def test_bad_input_is_a_one_line_error(tmp_path, run_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogtuneError, match="no adapter"):
        E.run(config.build(E.ExportConfig, run=empty, format="gguf"))
    with pytest.raises(CatalogtuneError, match="run folder not found"):
        E.run(config.build(E.ExportConfig, run=tmp_path / "nope"))
    with pytest.raises(CatalogtuneError, match="Llama .* Gemma 3 .* 'gpt2'"):
        E.arch_of(SimpleNamespace(model_type="gpt2"))
    for argv, msg in ((["--format", "onnx"], "unknown format 'onnx'"), (["--quant", "q4"], "unknown quant 'q4'")):
        assert cli.main(["export", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert cli.main(["export", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no adapter" in err and len(err.splitlines()) == 1


def test_export_replaces_atomically_and_a_failure_keeps_the_old_one(tmp_path, run_dir, monkeypatch, capsys):
    out = tmp_path / "o"
    assert cli.main(["export", str(run_dir), "--format", "gguf", "--quant", "q8_0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("gguf-q8_0/model.gguf")
    first = (out / "gguf-q8_0" / "model.gguf").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(E, "write_gguf", broken)
    with pytest.raises(RuntimeError):
        E.run(config.build(E.ExportConfig, run=run_dir, format="gguf", quant="q8_0", out=out))
    assert (out / "gguf-q8_0" / "model.gguf").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["gguf-q8_0"]  # no temp folder left behind


@pytest.mark.integration
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_packaged_models_export_to_gguf(tmp_path, name):
    """The real bases: SmolLM2 (Llama) and Gemma 3 round-trip through GGUF q8_0.

    A gentle adapter (scale 1): the random, scale-8 one of the other tests makes these deep models
    so sensitive that rounding the weights to fp16 alone flips next-token choices.
    """
    run = make_run(tmp_path / "run", name, lora_alpha=4)
    res = E.run(config.build(E.ExportConfig, run=run, format="ollama", quant="q8_0", out=tmp_path / "o"))
    merged, tok, _ = E.load_merged(run)
    model, gtok = _load(res.path, gguf=True)
    ids = _ids(tok, PROMPTS)
    assert _ids(gtok, PROMPTS) == ids
    want, got = merged.state_dict(), model.state_dict()
    assert set(want) == set(got)
    for key, w in want.items():  # every weight back, within q8_0's block rounding
        assert float((w - got[key]).abs().max()) <= 1e-2 * float(w.abs().max()) + 1e-6, key
    for a, b in zip(_logits(merged, ids), _logits(model, ids)):
        assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) >= 0.9
    assert "PARAMETER stop" in (res.path / "Modelfile").read_text()
