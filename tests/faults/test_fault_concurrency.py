"""Two starts of one stage on one folder: the second is refused in one line naming the first's pid,
evaluate included (its cache is append-only and its reports atomic, but two runs would do the work twice).
"""

from __future__ import annotations

import os
import signal

import pytest

from catalogtune.core.util import CatalogtuneError, read_json
from faultlib import (assert_one_line_error, eval_args, eval_reference, eval_report, fake_eval, fork_cli, spawn,
                      temp_leftovers, train_args, wait_for)


def test_second_prepare_on_one_folder_is_refused(raw_big, tmp_path):
    out = tmp_path / "out"
    args = ["prepare", str(raw_big), "--out", str(out), "--chunk-mb", "0.02"]
    # the first holds its lock 4 s longer: on a fast CPU the 3,000 records take well under a second
    first = spawn(args, tmp_path / "1.err", {"CT_FAULT_WORKERS": "1",
                                             "CT_FAULT_SLOW_AT": "catalogtune.data.prepare:_write:4"})
    wait_for(lambda: (tmp_path / ".out.lock").exists() and (tmp_path / ".out.lock").stat().st_size, child=first)
    second = spawn(args, tmp_path / "2.err")
    assert_one_line_error(second, "prepare", f"the output folder {out} is in use", f"(pid {first.pid})")
    assert first.wait() == 0, first.stderr()
    assert read_json(out / "quality_report.json")["records_read"] == 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.err", "2.err", "out"]


def test_second_index_on_one_folder_is_refused(prepared, tmp_path):
    out = tmp_path / "idx"
    args = ["index", "--data", str(prepared), "--out", str(out), "--embedder", "hash", "--chunk", "8", "--no-progress"]
    first = spawn(args, tmp_path / "1.err")
    wait_for(lambda: (out / ".lock").exists() and (out / ".lock").stat().st_size, child=first)
    second = spawn(args, tmp_path / "2.err")
    assert_one_line_error(second, "index", f"the index {out} is in use", f"(pid {first.pid})")
    assert first.wait() == 0, first.stderr()
    assert read_json(out / "index.json")["status"] == "complete" and not (out / ".lock").exists()


def test_second_train_resume_or_app_start_on_one_run_is_refused(prepared, warm_model, tmp_path):
    from catalogtune.app import jobs

    run_dir = tmp_path / "ws" / "run"
    long_run = train_args(prepared, run_dir, warm_model) + ["--max-steps", "400", "--save-every", "50"]
    first = fork_cli(long_run, tmp_path / "1.err")
    wait_for(lambda: (run_dir / "progress.json").is_file(), child=first)
    holder = f"(pid {first.pid})"
    for i, extra in enumerate(([], ["--resume"])):  # a plain second start, and a --resume
        second = fork_cli(train_args(prepared, run_dir, warm_model, *extra), tmp_path / f"{i}.err")
        assert_one_line_error(second, "train", f"the run folder {run_dir} is in use", holder)
    ws = jobs.Workspace(tmp_path / "ws")  # the app's job launcher sees the same lock
    with pytest.raises(CatalogtuneError, match=rf"already running for 'run' \(pid {first.pid}\)"):
        jobs.start(ws, run_dir, ["train", "--out", str(run_dir), "--resume"], tmp_path / "app.log", kind="training")
    assert jobs.status(ws, run_dir).alive
    assert first.alive(), first.stderr()
    os.kill(first.pid, signal.SIGTERM)  # the trainer checkpoints, then ends "cancelled"
    assert first.wait() == 130, first.stderr()
    assert read_json(run_dir / "summary.json")["stopped"] == "cancelled"
    assert not (run_dir / ".lock").exists() and temp_leftovers(run_dir) == []


def test_second_evaluation_on_one_folder_is_refused(prepared, tmp_path, monkeypatch):
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    want = eval_reference(prepared, tmp_path / "ref", tmp_path / "run", monkeypatch)
    out = tmp_path / "ev"
    first = fork_cli(eval_args(prepared, out, tmp_path / "run"), tmp_path / "1.err", fake_eval(0.2))
    wait_for(lambda: (out / ".lock").exists() and (out / ".lock").stat().st_size, child=first)
    second = fork_cli(eval_args(prepared, out, tmp_path / "run"), tmp_path / "2.err", fake_eval(0.02))
    assert_one_line_error(second, "evaluate", f"the evaluation in {out} is in use", f"(pid {first.pid})")
    assert first.wait() == 0, first.stderr()
    assert eval_report(out) == want
    assert temp_leftovers(out) == [] and not (out / ".lock").exists()
