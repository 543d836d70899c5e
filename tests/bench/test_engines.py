"""`catalogtune bench engines` with the tiny model: CTranslate2 reproduces the project's greedy outputs."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli
from catalogtune.bench import engines as BE


def test_bench_engines_greedy_agreement_and_fields(tiny_model_dir, sample_path, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    import torch

    threads = torch.get_num_threads()
    out = tmp_path / "engines.json"
    argv = ["bench", "engines", "--model", str(tiny_model_dir), "--prompts", "6", "--max-new-tokens", "6",
            "--batch-size", "3", "--sample", str(sample_path), "--cache", str(tmp_path / "cache"),
            "--out", str(out)]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text(encoding="utf-8")) == res  # --out holds the printed result
    assert torch.get_num_threads() == threads  # the bench gives the process-wide setting back
    assert res["prompts"] == 6 and res["threads"] == 1 and res["mean_prompt_tokens"] > 60  # RAG-length prompts
    rows = {(e["engine"], e.get("compute_type"), e.get("decoding")): e for e in res["engines"]}
    from catalogtune.infer.generate import bf16_supported

    ours = "bfloat16-autocast" if bf16_supported() else "float32"  # the project engine as it runs here
    for key in [("catalogtune", ours, "project"), ("catalogtune", ours, "greedy"),
                ("ctranslate2", "float32", "project"), ("ctranslate2", "float32", "greedy"),
                ("ctranslate2", "int8", "project"), ("ctranslate2", "int8", "greedy"),
                ("ctranslate2", "float32", "exact-scope")]:
        e = rows[key]
        assert e["measured"] is True and e["tokens_per_s"] > 0 and e["seconds"] > 0
        assert 0 < e["mean_new_tokens"] <= 6 and e["new_tokens"] == pytest.approx(6 * e["mean_new_tokens"], abs=0.3)
        if key[0] == "ctranslate2":
            assert 0 <= e["same_text_as_project"] <= 1 and e["conversion_s"] is not None
    # pure greedy in float32 on both engines: the conversion is right when the texts agree
    greedy = rows[("ctranslate2", "float32", "greedy")]
    assert greedy["compared_with"] == f"catalogtune/{ours}/greedy"
    assert res["greedy_float32_same_text"] == greedy["same_text_as_project"]
    if ours == "float32":  # bf16 rounding may turn a greedy choice on a bf16 CPU
        assert greedy["same_text_rows"] >= 5
    # one prompt per call, CT2's penalty window is the output only: the project's rule, the same texts
    assert rows[("ctranslate2", "float32", "exact-scope")]["same_text_rows"] >= 5
    llama = next(e for e in res["engines"] if e["engine"] == "llama.cpp")
    assert "measured" in llama and ("reason" in llama or llama["measured"])
    # a second run reuses the conversions (cached, the recorded seconds)
    cfg = BE.BenchEnginesConfig(model=str(tiny_model_dir), prompts=2, max_new_tokens=2, batch_size=2,
                                sample=sample_path, cache=tmp_path / "cache", compute_types=["float32"],
                                exact_scope=False)
    again = BE.run(cfg).figures
    ct = next(e for e in again["engines"] if e["engine"] == "ctranslate2")
    assert ct["conversion_cached"] is True


def test_without_ctranslate2_one_line_and_nonzero(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed: import raises ImportError
    assert cli.main(["bench", "engines", "--prompts", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ctranslate2" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("opt", [["--prompts", "0"], ["--max-new-tokens", "5000"], ["--threads", "0"]])
def test_bad_options(opt):
    assert cli.main(["bench", "engines", *opt]) == 2
