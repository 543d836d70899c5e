"""The synthetic generator and the prepare benchmark (its anchor and its JSON line)."""

from __future__ import annotations

import gzip
import json

import pytest

from catalogtune.bench import prepare as bench
from catalogtune.data import synthetic
from catalogtune.data.prepare import PrepareConfig, run
from catalogtune.core.util import CatalogtuneError


def test_synthetic_file_has_the_real_format_and_dirt(tmp_path):
    path = synthetic.generate(tmp_path / "trn.json.gz", 3000, seed=1)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert len(lines) == 3000
    recs = [json.loads(x) for x in lines]
    assert all(set(r) == {"uid", "title", "content", "target_ind", "target_rel"} for r in recs)
    assert all(len(r["target_ind"]) == len(r["target_rel"]) > 0 for r in recs)
    empty = sum(r["content"] == "" for r in recs) / len(recs)
    assert 0.33 < empty < 0.43
    assert any("&#" in r["content"] or "&nbsp;" in r["content"] for r in recs)
    assert any("This text refers to" in r["content"] for r in recs)
    titles = [r["title"] for r in recs]
    assert 0.95 < len(set(titles)) / len(titles) < 1.0  # mostly unique, some duplicates
    again = synthetic.generate(tmp_path / "again.json.gz", 3000, seed=1)
    assert gzip.decompress(again.read_bytes()) == b"\n".join(lines) + b"\n"
    with pytest.raises(CatalogtuneError):
        synthetic.generate(tmp_path / "none.json.gz", 0)


def test_pandas_baseline_applies_the_same_rules(tmp_path):
    pytest.importorskip("pandas")
    path = synthetic.generate(tmp_path / "trn.json.gz", 2000, seed=2)
    kept = bench.baseline(path, 2000, tmp_path / "base")
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "ours"))
    assert kept == res.kept  # the anchor does the same work, so the comparison is fair
    assert 0.4 < res.kept / 2000 < 0.7
    assert kept > bench.baseline(path, 1000, tmp_path / "half") > 0  # nrows is honoured


@pytest.mark.integration
def test_bench_prints_json_last(tmp_path, capsys):
    assert bench.main(["--records", "4000", "--baseline-records", "2000", "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("records", "wall_s", "records_per_s", "peak_rss_mb", "baseline_records_per_s", "speedup"):
        assert result[key] > 0
    assert result["records"] == 4000 and result["baseline_records"] == 2000
    assert result["speedup"] == pytest.approx(result["records_per_s"] / result["baseline_records_per_s"], rel=0.01)
