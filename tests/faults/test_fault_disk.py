"""A full disk and a read-only folder under every stage that writes: one line, rc 2, no partial output.

The full disk is a 64 KB tmpfs holding a filler file (16 KB left), so each stage gets going and
fails inside its own writes; the read-only folder is a read-only tmpfs (root ignores file modes).
Both need root and ``mount``; without them the tests skip and say why.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from catalogtune.core.util import CatalogtuneError, atomic_dir, read_json, write_failure
from faultlib import (assert_one_line_error, eval_args, fake_eval, fork_cli, full_disk, read_only_dir, spawn,
                      temp_leftovers, train_args)

STAGES = ("prepare", "analyze", "index", "train", "evaluate")


def _start(stage: str, out: Path, prepared: Path, raw: Path, model: Path, tmp: Path):
    err = tmp / f"{stage}.err"
    if stage == "prepare":
        return spawn(["prepare", str(raw), "--out", str(out)], err)
    if stage == "analyze":
        return spawn(["analyze", "--data", str(prepared), "--out", str(out), "--no-wordclouds"], err)
    if stage == "index":
        return spawn(["index", "--data", str(prepared), "--out", str(out), "--embedder", "hash", "--no-progress"], err)
    if stage == "train":
        return fork_cli(train_args(prepared, out, model), err)
    (tmp / "run" / "adapter").mkdir(parents=True, exist_ok=True)
    return fork_cli(eval_args(prepared, out, tmp / "run"), err, fake_eval(plot=True))


def _no_partial_output(stage: str, mnt: Path, out: Path) -> None:
    assert temp_leftovers(mnt) == [], temp_leftovers(mnt)
    assert not list(mnt.glob(".*.lock")) and not (out / ".lock").exists()
    if stage in ("prepare", "analyze"):  # all or nothing: the folder is swapped in when complete
        assert not out.exists()
    elif stage == "index":  # what was stored stays, marked unfinished: a re-run completes it
        assert not (out / "index.json").exists() or read_json(out / "index.json")["status"] == "building"
    elif stage == "train":  # complete checkpoints only, no adapter
        assert not (out / "adapter").exists() and not (out / "summary.json").exists()
        assert all((p / "state.json").is_file() for p in (out / "checkpoints").glob("step-*"))
    else:
        assert not (out / "report.json").exists() and not (out / "report.html").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_full_disk_is_one_line_naming_the_path_and_free_space(stage, prepared, raw_small, warm_model, tmp_path):
    with full_disk(tmp_path / "full") as mnt:
        out = mnt / "out"
        child = _start(stage, out, prepared, raw_small, warm_model, tmp_path)
        line = assert_one_line_error(child, stage, "no space left on device writing ", str(mnt), "(free: ")
        assert "Traceback" not in line
        _no_partial_output(stage, mnt, out)


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_folder_is_one_line_naming_the_path(stage, prepared, raw_small, warm_model, tmp_path):
    with read_only_dir(tmp_path / "ro") as mnt:
        out = mnt / "out"
        child = _start(stage, out, prepared, raw_small, warm_model, tmp_path)
        reason = "read-only file system" if mnt.stat().st_dev != tmp_path.stat().st_dev else "permission denied"
        assert_one_line_error(child, stage, f"{reason} writing {out}")
        assert not out.exists()


def test_library_write_errors_become_one_line(tmp_path):
    """torch.save, safetensors and pyarrow on a full disk: each hides the errno its own way."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save_file

    big = {"w": torch.zeros(64 * 1024)}  # 256 KB: more than the disk holds
    with full_disk(tmp_path / "full", free_kb=16) as mnt:
        writers = {
            "torch": lambda p: torch.save(big, p),  # RuntimeError: [enforce fail at inline_container.cc] ...
            "safetensors": lambda p: save_file(big, str(p)),
            "pyarrow": lambda p: pq.write_table(pa.table({"a": [b"x" * 4096] * 64}), p),
        }
        for name, write in writers.items():
            with pytest.raises(Exception) as info:
                write(mnt / f"{name}.bin")
            assert not isinstance(info.value, CatalogtuneError)
            msg = str(write_failure(info.value, mnt / f"{name}.bin"))
            assert msg.startswith(f"no space left on device writing {mnt}/{name}.bin (free: "), (name, msg)
            (mnt / f"{name}.bin").unlink(missing_ok=True)
        with pytest.raises(CatalogtuneError, match=rf"^no space left on device writing {mnt}/ckpt \(free: "):
            with atomic_dir(mnt / "ckpt") as tmp:  # as a checkpoint is written: the final name, not the temp
                torch.save(big, tmp / "optimizer.pt")
        assert sorted(p.name for p in mnt.iterdir()) == [".filler"]
    assert write_failure(RuntimeError("shape mismatch")) is None
    assert write_failure(OSError(errno.ENOENT, "No such file or directory")) is None
