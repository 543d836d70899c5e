"""`catalogtune describe`: selection and counted skips, part files, resume, settings check, lock, Ray."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from catalogtune import cli
from catalogtune.core.decoding import DECODING
from catalogtune.core.locks import folder_lock
from catalogtune.core.util import CatalogtuneError
from catalogtune.evaluate.metrics import unsupported_claims
from catalogtune.infer import describe as D
from helpers import make_run

WORDS = "red blue pink cotton steel kids girls gift set pack book novel music album toy game".split()
BAD_LINES = ['{"uid": "x1", "title": "cut', '[1, 2]', '{"uid": "x2", "content": "no title"}',
             '{"uid": "x3", "title": 7, "content": ""}', '{"uid": "x4", "title": "ok", "content": 5}',
             '{"uid": "x5", "title": "   ", "content": ""}']
BAD = {"invalid_json": 1, "not_object": 1, "missing_title": 1, "wrong_type": 2, "empty_title": 1}


def records(n: int) -> list[dict]:
    """Invented products; every third has a description, the others an empty or missing one."""
    out = []
    for i in range(n):
        rec = {"uid": f"P{i:03d}", "title": f"{WORDS[i % 16]} {WORDS[(i * 5) % 16]} {i} pack"}
        if i % 3 == 0:
            rec["content"] = f"A {WORDS[i % 16]} thing."
        elif i % 3 == 1:
            rec["content"] = "  "
        out.append(rec)
    return out


def write_catalogue(path: Path, n: int) -> Path:
    lines = [json.dumps(r) for r in records(n)]
    lines[3:3] = BAD_LINES
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n\n")
    return path


class FakeIndex:
    def __init__(self) -> None:
        self.queries = 0

    def query(self, texts: list[str], k: int) -> list[list[dict]]:
        self.queries += len(texts)
        return [[{"id": f"R{j}", "title": f"{t} deluxe", "content": "Made of steel, 12 inch.", "score": 0.9 - j / 10}
                 for j in range(k)] for t in texts]


class CountingEngine:
    """Wraps a real engine; counts titles and can fail after ``fail_after`` chunks (a kill)."""

    def __init__(self, inner, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.chunks, self.titles = inner, fail_after, 0, []

    def describe(self, titles, contexts, max_new_tokens, batch_size):
        if self.fail_after is not None and self.chunks >= self.fail_after:
            raise KeyboardInterrupt
        self.chunks += 1
        self.titles += titles
        return self.inner.describe(titles, contexts, max_new_tokens, batch_size)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("describe") / "run", tiny_model_dir)


@pytest.fixture(scope="module")
def engine(run_dir):
    return D.TorchEngine(run_dir, None, bf16=False)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("cat") / "trn.json.gz", 30)


def cfg_for(data: Path, run_dir: Path, out: Path, **kw) -> D.DescribeConfig:
    base = dict(data=data, run=run_dir, out=out, only_missing=True, chunk=4, batch_size=3, max_new_tokens=5,
                bf16=False, progress=False)
    base.update(kw)
    return D.DescribeConfig(**base)


def read_out(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted(out.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def test_describe_missing_products_with_references_and_claims(catalogue, run_dir, engine, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    idx = FakeIndex()
    monkeypatch.setattr("catalogtune.infer.ask.open_index", lambda _dir: idx)
    out = tmp_path / "desc.parquet"
    res = D.run(cfg_for(catalogue, run_dir, out, index=tmp_path, k=2), check=unsupported_claims, engine=engine)
    missing = [r for r in records(30) if not (r.get("content") or "").strip()]
    s = res.summary
    assert s["bad"] == BAD and s["read_ok"] == 30 and s["skipped_has_description"] == 10
    assert s["selected"] == s["rows_written"] == s["rows_in_output"] == len(missing) == 20
    assert s["complete"] and s["chunks_written"] == 5 and idx.queries == 20
    assert json.loads((out / D.SUMMARY).read_text())["rows_written"] == 20
    rows = read_out(out)
    assert [r["uid"] for r in rows] == [r["uid"] for r in missing]  # file order, ids kept
    assert [r["seq"] for r in rows] == list(range(20))
    assert all(r["ref_ids"] == ["R0", "R1"] and r["ref_scores"][0] == pytest.approx(0.9) for r in rows)
    for r in rows:
        support = [f"{r['title']} deluxe. Made of steel, 12 inch."] * 2
        assert (r["claims"], r["unsupported"]) == unsupported_claims(r["description"], r["title"], support)
        assert r["unsupported_flag"] == (r["unsupported"] > 0)
        assert 0 <= r["new_tokens"] <= 5 and r["stopped"] in ("eos", "length")
    # the decoding is DECODING's, as in ask/evaluate: the same texts as the Generator called directly
    gen = engine.gen
    direct = gen.generate([gen.prompt(r["title"]) for r in rows[:4]], **DECODING.kwargs(max_new_tokens=5))
    assert [g.text for g in direct] == [r["description"] for r in rows[:4]]
    meta = json.loads(pq.read_schema(D.part_path(out, 0)).metadata[b"catalogtune.describe"])
    assert meta["decoding"]["repetition_penalty"] == DECODING.repetition_penalty and meta["k"] == 2
    assert json.loads((out / D.MANIFEST).read_text())["settings"]["claims_check"].endswith("unsupported_claims")


def test_a_kill_loses_at_most_one_chunk_and_a_rerun_resumes(catalogue, run_dir, engine, tmp_path):
    full = tmp_path / "full"
    D.run(cfg_for(catalogue, run_dir, full), engine=engine)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        D.run(cfg_for(catalogue, run_dir, out), engine=CountingEngine(engine, fail_after=2))
    assert sorted(p.name for p in out.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]
    again = CountingEngine(engine)
    res = D.run(cfg_for(catalogue, run_dir, out), engine=again)
    assert again.chunks == 3 and res.summary["chunks_skipped"] == 2  # only the missing chunks ran
    assert read_out(out) == read_out(full)  # resumed output equals the uninterrupted one
    D.part_path(out, 3).unlink()
    D.part_path(out, 1).write_bytes(b"half a file")  # unreadable parts are redone, never trusted
    redo = CountingEngine(engine)
    D.run(cfg_for(catalogue, run_dir, out), engine=redo)
    assert redo.chunks == 2 and read_out(out) == read_out(full)
    none = CountingEngine(engine)
    assert D.run(cfg_for(catalogue, run_dir, out), engine=none).summary["rows_written"] == 0 and none.chunks == 0


def test_limit_stops_early_and_a_longer_limit_extends(catalogue, run_dir, engine, tmp_path):
    out = tmp_path / "lim"
    first = D.run(cfg_for(catalogue, run_dir, out, limit=6, only_missing=False), engine=engine).summary
    assert first["selected"] == 6
    # the plan: the first chunk's rate, projected onto the rest of the limit and the catalogue's missing ones
    plan = first["plan"]
    assert plan["first_chunk"] == 4 and plan["products_per_s"] > 0 and plan["peak_rss_mb"] > 0
    rate = plan["products_per_s"]
    assert plan["limit_left_s"] == pytest.approx(2 / rate, abs=0.1 + 2 / rate * 1e-3)
    assert plan["catalogue_missing_h"] == pytest.approx(D.MISSING_IN_CATALOGUE / rate / 3600, abs=0.1, rel=1e-3)
    assert [r["uid"] for r in read_out(out)] == [f"P{i:03d}" for i in range(6)]
    more = CountingEngine(engine)
    res = D.run(cfg_for(catalogue, run_dir, out, limit=10, only_missing=False), engine=more)
    # chunk 0 (4 rows) is kept; the short chunk 1 (2 of 4 rows) is redone with its full 4 rows
    assert res.summary["chunks_skipped"] == 1 and more.titles[0] == records(30)[4]["title"]
    assert [r["uid"] for r in read_out(out)] == [f"P{i:03d}" for i in range(10)]


def test_other_settings_are_refused_in_one_line(catalogue, run_dir, engine, tmp_path, capsys):
    out = tmp_path / "o"
    D.run(cfg_for(catalogue, run_dir, out, limit=4), engine=engine)
    with pytest.raises(CatalogtuneError, match=r"other settings \(chunk\).*another --out or delete"):
        D.run(cfg_for(catalogue, run_dir, out, chunk=8), engine=engine)
    argv = ["describe", "--data", str(catalogue), "--run", str(run_dir), "--out", str(out), "--only-missing",
            "--chunk", "4", "--max-new-tokens", "9"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decoding" in err and "--out" in err
    (tmp_path / "f.parquet").write_text("x")
    with pytest.raises(CatalogtuneError, match="is a file"):
        D.run(cfg_for(catalogue, run_dir, tmp_path / "f.parquet"), engine=engine)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(CatalogtuneError, match="not empty"):
        D.run(cfg_for(catalogue, run_dir, tmp_path / "other"), engine=engine)


def test_a_second_describe_on_the_same_output_is_refused(catalogue, run_dir, engine, tmp_path):
    out = tmp_path / "locked"
    with folder_lock(out / D.LOCK, "test holder"):
        with pytest.raises(CatalogtuneError, match="in use by another process"):
            D.run(cfg_for(catalogue, run_dir, out), engine=engine)
    assert not list(out.glob("part-*"))


def test_cli_writes_a_readable_dataset_and_bad_input_is_one_line(catalogue, run_dir, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "cli.parquet"
    argv = ["describe", "--data", str(catalogue), "--run", str(run_dir), "--out", str(out), "--only-missing",
            "--limit", "5", "--chunk", "4", "--max-new-tokens", "4", "--no-bf16", "--no-progress"]
    assert cli.main(argv) == 0
    assert "described 5 products" in capsys.readouterr().out
    table = pq.read_table(out)  # the folder reads as one dataset; _describe.json and .lock are ignored
    assert table.num_rows == 5 and "description" in table.column_names
    assert table.column("claims").null_count == 0  # the CLI checks claims as evaluate does
    for bad in (["--chunk", "0"], ["--backend", "tpu"], ["--k", "99"]):
        assert cli.main(["describe", "--data", str(catalogue), "--run", str(run_dir), "--out", str(out), *bad]) == 2
    assert cli.main(["describe", "--data", str(tmp_path / "nope.json"), "--run", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "nope.json" in err[-1]


def test_vllm_backend_without_vllm_names_the_install(catalogue, run_dir, tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    argv = ["describe", "--data", str(catalogue), "--run", str(run_dir), "--out", str(tmp_path / "v"),
            "--backend", "vllm"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install vllm" in err
    assert not (tmp_path / "v").exists()  # refused before anything was written


def test_parquet_input_and_rows_without_uid(run_dir, engine, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"title": ["pink tutu", None, "steel pan"], "content": ["", "", None]}), path)
    res = D.run(cfg_for(path, run_dir, tmp_path / "pq"), engine=engine)
    rows = read_out(tmp_path / "pq")
    assert res.summary["bad"] == {"missing_title": 1} and [r["title"] for r in rows] == ["pink tutu", "steel pan"]
    assert all(r["uid"].startswith("h") for r in rows)  # a stable id from the text, as prepare does


@pytest.mark.integration
def test_ray_data_pool_of_two_gives_the_torch_outputs(catalogue, run_dir, engine, tmp_path):
    pytest.importorskip("ray")
    torch_out, ray_out = tmp_path / "torch", tmp_path / "ray"
    D.run(cfg_for(catalogue, run_dir, torch_out, chunk=3), engine=engine)
    res = D.run(cfg_for(catalogue, run_dir, ray_out, chunk=3, ray_workers=2))
    assert res.summary["chunks_written"] == 7 and res.summary["complete"]
    assert read_out(ray_out) == read_out(torch_out)  # same greedy outputs, same order, same columns
