"""kill -9 at seeded random moments, also inside writes; a re-run must equal an uninterrupted run.

Each stage is killed while it works (after a seeded random delay, or at the N-th call of one of
its write functions) and then run again; the outputs must equal those of a run never
interrupted, no temporary file may be left, and no process may outlive the kill (the
``no_orphans`` fixture: prepare's workers and its resource tracker die with their parent).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pyarrow.parquet as pq

from catalogtune.core.util import read_json
from faultlib import (both, eval_args, eval_reference, eval_report, fake_eval, fork_cli, kill_at, spawn,
                      temp_leftovers, train_args, wait_for)

SEED = 20240611
VOLATILE = {"wall_s", "records_per_s", "peak_rss_mb_main", "cpu_s_main", "cpu_s_workers", "seconds_last_run"}


def _prepare_outputs(out: Path) -> dict:
    """Every file of a prepare output: tables as rows, the report without timings, ``out`` named <out>."""
    files = {}
    for p in sorted(out.iterdir()):
        if p.suffix == ".parquet":
            files[p.name] = pq.read_table(p).to_pylist()
        elif p.name == "quality_report.json":
            files[p.name] = {k: v for k, v in read_json(p).items() if k not in VOLATILE}
        else:
            files[p.name] = p.read_text()
    return json.loads(json.dumps(files).replace(str(out), "<out>"))


def test_prepare_killed_anywhere_then_rerun_equals_uninterrupted(raw_big, tmp_path):
    from catalogtune.data.prepare import PrepareConfig, run

    run(PrepareConfig(inputs=[raw_big], out=tmp_path / "ref", chunk_mb=0.02))
    want = _prepare_outputs(tmp_path / "ref")
    args = ["prepare", str(raw_big), "--out", str(tmp_path / "out"), "--chunk-mb", "0.02"]
    workers = {"CT_FAULT_WORKERS": "1"}  # the two worker processes, also for this small input
    rng = random.Random(SEED)
    kills = [
        None,  # a random moment, workers busy
        "pyarrow.parquet:ParquetWriter.write_table:2",  # inside a write: one row group written
        "os:rename:1:before",  # the finished folder about to be renamed into place
        "",  # an uninterrupted run: now an old output exists
        "shutil:rmtree:1:before",  # swapped in (atomic exchange), the old output not yet deleted
    ]
    for spec in kills:
        child = spawn(args, tmp_path / "err.txt", {**workers, **({"CT_FAULT_KILL_AT": spec} if spec else {})})
        if spec is None:
            time.sleep(rng.uniform(0.7, 1.4))
            child.kill()
        rc = child.wait()
        assert rc == (0 if spec == "" else -9) or (spec is None and rc == 0), (spec, rc, child.stderr())
        if spec == "":
            assert _prepare_outputs(tmp_path / "out") == want
    done = spawn(args, tmp_path / "err.txt", workers)
    assert done.wait() == 0, done.stderr()
    assert _prepare_outputs(tmp_path / "out") == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err.txt", "out", "ref"]  # no temp folder, no lock


def test_index_killed_mid_build_then_rerun_equals_uninterrupted(prepared, tmp_path):
    from catalogtune.rag import index as rag

    rag.run(rag.IndexConfig(data=prepared, out=tmp_path / "ref", embedder="hash", chunk=16, progress=False))
    args = ["index", "--data", str(prepared), "--out", str(tmp_path / "idx"), "--embedder", "hash",
            "--chunk", "16", "--no-progress"]
    child = spawn(args, tmp_path / "err.txt")
    # at a seeded moment once the build has started (its manifest says "building")
    wait_for(lambda: (tmp_path / "idx" / "index.json").is_file(), child=child)
    time.sleep(random.Random(SEED).uniform(0.0, 0.6))
    child.kill()
    child.wait()
    assert read_json(tmp_path / "idx" / "index.json")["status"] in ("building", "complete")
    again = spawn(args, tmp_path / "err.txt")
    assert again.wait() == 0, again.stderr()

    def content(path: Path) -> tuple:
        idx = rag.Index.open(path)
        got = idx.collection.get(include=["embeddings", "metadatas"])
        rows = sorted(zip(got["ids"], [m["content"] for m in got["metadatas"]], [m["title"] for m in got["metadatas"]],
                          [tuple(round(float(x), 6) for x in e) for e in got["embeddings"]]))
        man = {k: v for k, v in idx.manifest.items() if k not in VOLATILE}
        return man, rows

    assert content(tmp_path / "idx") == content(tmp_path / "ref")
    assert temp_leftovers(tmp_path / "idx") == [] and not (tmp_path / "idx" / ".lock").exists()


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _same_adapter(a: Path, b: Path) -> None:
    import torch

    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # the tolerance of tests/train's resume test: one thread here, bit-equal in practice
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_train_killed_inside_a_checkpoint_or_at_a_random_step_resumes_exactly(prepared, warm_model, tmp_path):
    ref = fork_cli(train_args(prepared, tmp_path / "ref", warm_model), tmp_path / "ref.err")
    assert ref.wait() == 0, ref.stderr()
    rng = random.Random(SEED)
    # 1: SIGKILL inside the 2nd checkpoint save (trainable.safetensors written, the folder not
    # swapped in): the leftover temp folder of fault 5, which the resume must remove
    run_a = tmp_path / "a"
    child = fork_cli(train_args(prepared, run_a, warm_model), tmp_path / "a.err",
                     kill_at("safetensors.torch:save_file:3"))
    assert child.wait() == -9, child.stderr()
    assert temp_leftovers(run_a / "checkpoints"), "the kill should have hit the checkpoint write"
    # 2: SIGKILL at a random step between checkpoints
    run_b = tmp_path / "b"
    step = rng.randint(3, 5)
    child = fork_cli(train_args(prepared, run_b, warm_model), tmp_path / "b.err")
    wait_for(lambda: _step(run_b) >= step, child=child)
    child.kill()
    child.wait()
    for run_dir in (run_a, run_b):
        resumed = fork_cli(train_args(prepared, run_dir, warm_model, "--resume"), tmp_path / "r.err")
        assert resumed.wait() == 0, resumed.stderr()
        s = read_json(run_dir / "summary.json")
        assert s["steps"] == 6 and s["resumed_from"] is not None
        _same_adapter(tmp_path / "ref", run_dir)
        assert temp_leftovers(run_dir) == [] and not (run_dir / ".lock").exists()
        steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5, 6]


def _step(run_dir: Path) -> int:
    try:
        return int(read_json(run_dir / "progress.json").get("step") or 0)
    except (OSError, ValueError):
        return 0


def test_evaluate_killed_mid_run_or_inside_a_write_then_rerun_equals_uninterrupted(prepared, tmp_path, monkeypatch):
    (tmp_path / "run" / "adapter").mkdir(parents=True)  # the fake generator needs no weights
    want = eval_reference(prepared, tmp_path / "ref", tmp_path / "run", monkeypatch)
    out = tmp_path / "ev"
    # a random moment while generating (a slow fake: 50 ms a batch)
    child = fork_cli(eval_args(prepared, out, tmp_path / "run"), tmp_path / "e.err", fake_eval(0.05))
    time.sleep(random.Random(SEED).uniform(0.2, 0.6))
    child.kill()
    child.wait()
    # inside a write: report.json complete in its temporary file, not yet renamed
    child = fork_cli(eval_args(prepared, out, tmp_path / "run"), tmp_path / "e.err",
                     both(fake_eval(), kill_at("os:replace:1:before")))
    assert child.wait() == -9
    assert temp_leftovers(out), "the kill should have hit the report write"
    done = fork_cli(eval_args(prepared, out, tmp_path / "run"), tmp_path / "e.err", fake_eval())
    assert done.wait() == 0, done.stderr()
    assert eval_report(out) == want
    assert temp_leftovers(out) == []
