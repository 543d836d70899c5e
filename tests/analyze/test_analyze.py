"""The analysis stage on small prepared folders built here with pyarrow."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from catalogtune.core import config as cfgmod
from catalogtune.analyze.stage import AnalyzeConfig, run
from catalogtune.analyze.plots import flatten
from catalogtune.core.util import CatalogtuneError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)
WORDS = ["garden", "cookbook", "history", "kettle", "lamp", "river", "novel", "guide", "steel", "quilt"]


def _records(n):
    """Deterministic records with known duplicates: every 10th description repeats record 0's."""
    rows = []
    for i in range(n):
        title = f"{WORDS[i % 10].title()} {WORDS[(i * 3) % 10]} volume {i}"
        content = (f"The {WORDS[i % 10]} and the {WORDS[(i + 1) % 10]} of item {i}. " * (1 + i % 4)).strip()
        rows.append({"id": f"B{i:09d}", "title": title, "content": content})
    for i in range(10, n, 10):
        rows[i]["content"] = rows[0]["content"]
    return rows


def make_prepared(path, n=120, raw=True, report=True, drop_column=True):
    """A folder shaped like `catalogtune prepare` output (contract in docs/ARCHITECTURE.md)."""
    path.mkdir(parents=True, exist_ok=True)
    rows = _records(n)
    rows[1]["content"] = rows[2]["content"] = "<script>alert('x')</script> lamp"  # repeated: in the report
    cut1, cut2 = int(n * 0.8), int(n * 0.9)
    for name, part in (("train", rows[:cut1]), ("val", rows[cut1:cut2]), ("test", rows[cut2:])):
        pq.write_table(pa.Table.from_pylist(part), path / f"{name}.parquet")
    if raw:
        cols = {"title_chars": pa.array([len(r["title"]) + 2 for r in rows] + [0, 7, 9], pa.int32()),
                "content_chars": pa.array([len(r["content"]) for r in rows] + [50, 0, 0], pa.int32())}
        if drop_column:
            cols["drop_reason"] = pa.array([None] * n + ["empty_title", "empty_content", "empty_content"], pa.string())
        pq.write_table(pa.table(cols), path / "raw_lengths.parquet")
    if report:
        (path / "quality_report.json").write_text(json.dumps({
            "records_read": n + 3, "kept": n, "malformed_lines": 1,
            "drop_counts": {"empty_content": 2, "empty_title": 1}, "inputs": ["a.jsonl", "b.jsonl"]}))
    return rows


def _cfg(data, out, **kw):
    kw.setdefault("wordclouds", False)
    return AnalyzeConfig(data=data, out=out, **kw)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One complete run (word clouds included) shared by the tests that only read its output."""
    base = tmp_path_factory.mktemp("an")
    rows = make_prepared(base / "prep")
    res = run(AnalyzeConfig(data=base / "prep", out=base / "report", top_k=8, wordclouds=True))
    return rows, res


def test_stats_match_the_data(full_run):
    rows, res = full_run
    s = json.loads(res.stats_path.read_text())
    assert {k: v["records"] for k, v in s["splits"].items()} == {"train": 96, "val": 12, "test": 12}
    assert s["total_records"] == len(rows)
    title_chars = [len(r["title"]) for r in rows]
    content_words = [len(r["content"].split()) for r in rows]
    t = s["lengths"]["cleaned"]["title"]["chars"]
    assert t["median"] == statistics.median(title_chars) and t["max"] == max(title_chars)
    assert t["mean"] == pytest.approx(statistics.mean(title_chars), abs=0.01)
    c = s["lengths"]["cleaned"]["content"]["words"]
    assert c["median"] == statistics.median(content_words) and c["min"] == min(content_words)
    assert c["p5"] <= c["median"] <= c["p95"] <= c["max"]
    # raw lengths: n kept rows + 3 dropped rows, of which one has an empty title
    assert s["lengths"]["raw"]["title"]["chars"]["count"] == len(rows) + 3
    assert s["lengths"]["raw_empty"] == {"title": 1, "content": 2}


def test_duplicates_and_drops(full_run):
    rows, res = full_run
    s = res.stats
    contents = [r["content"] for r in rows]
    assert s["duplicates"]["content"]["duplicate_records"] == len(contents) - len(set(contents))
    assert s["duplicates"]["title"]["duplicate_records"] == 0
    assert s["duplicates"]["val_titles_in_train"] == 0
    assert s["drops"]["source"] == "raw_lengths.parquet"
    assert s["drops"]["reasons"] == {"empty_content": 2, "empty_title": 1}
    assert s["drops"]["kept"] == len(rows) and s["drops"]["dropped"] == 3


def test_top_words_drop_stop_words_and_vocab_counts(full_run):
    _, res = full_run
    s = res.stats
    top = [w for w, _ in s["top_words"]["content"]]
    assert len(top) == 8 and "the" not in top and "and" not in top and "of" not in top
    assert "item" in top
    counts = [c for _, c in s["top_words"]["content"]]
    assert counts == sorted(counts, reverse=True)
    assert s["vocabulary"]["title"] >= 10 + 1  # ten product words plus "volume"
    assert s["text_sample"] == {"records": 120, "of": 120, "sampled": False, "seed": 0}


def test_report_is_self_contained_escaped_and_shows_every_plot(full_run):
    _, res = full_run
    html = res.report_path.read_text()
    assert EXTERNAL.search(html) is None
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; lamp" in html  # most repeated, as text
    assert set(res.plots) >= {"lengths_chars", "lengths_words", "top_words", "top_bigrams", "quality",
                              "wordcloud_title", "wordcloud_content"}
    for p in res.plots.values():
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == len(res.plots)
    for heading in ("Overview", "Lengths", "Top words and bigrams", "Word clouds", "quality_report.json"):
        assert heading in html
    assert "drop_counts.empty_content" in html  # whatever keys the quality report holds are shown


def test_bigrams_stay_within_a_record_and_skip_stop_words():
    pl = pytest.importorskip("polars")
    from catalogtune.analyze.plots import text_counts

    frame = pl.DataFrame({"title": ["Red apple pie", "red APPLE", "apple the pie"],
                          "content": ["", "", ""]})
    out = text_counts(frame, 10)
    bigrams = dict(map(tuple, out["title"]["bigrams"]))
    assert bigrams == {"red apple": 2, "apple pie": 1}  # no "pie red" across records, none via "the"
    assert dict(map(tuple, out["title"]["words"])) == {"apple": 3, "pie": 2, "red": 2}
    assert out["title"]["vocabulary"] == 4 and out["title"]["tokens"] == 8
    assert out["content"]["words"] == [] and out["content"]["vocabulary"] == 0


def test_sample_is_bounded_and_deterministic(tmp_path):
    make_prepared(tmp_path / "prep", n=400)
    a = run(_cfg(tmp_path / "prep", tmp_path / "a", sample=60, seed=3)).stats
    b = run(_cfg(tmp_path / "prep", tmp_path / "b", sample=60, seed=3)).stats
    assert a["text_sample"]["sampled"] and 0 < a["text_sample"]["records"] <= 60
    assert a["top_words"] == b["top_words"] and a["text_sample"] == b["text_sample"]
    assert a["lengths"] == b["lengths"] and a["lengths"]["cleaned"]["title"]["chars"]["count"] == 400


def test_missing_raw_lengths_and_report_are_skipped_with_notes(tmp_path):
    make_prepared(tmp_path / "prep", n=40, raw=False, report=False)
    (tmp_path / "prep" / "val.parquet").unlink()
    test = pq.read_table(tmp_path / "prep" / "test.parquet").to_pylist()
    test[0]["content"] = None  # a null must count as an empty text, not vanish
    pq.write_table(pa.Table.from_pylist(test), tmp_path / "prep" / "test.parquet")
    res = run(_cfg(tmp_path / "prep", tmp_path / "out"))
    assert res.stats["empty_after_cleaning"] == {"title": 0, "content": 1}
    assert res.stats["lengths"]["cleaned"]["content"]["chars"]["count"] == 36
    notes = " ".join(res.stats["notes"])
    assert "raw_lengths.parquet not found" in notes and "quality_report.json not found" in notes
    assert "val.parquet not found" in notes
    assert "raw" not in res.stats["lengths"] and res.stats["drops"]["reasons"] == {}
    assert set(res.stats["splits"]) == {"train", "test"}
    html = res.report_path.read_text()
    assert "raw_lengths.parquet not found" in html


def test_drop_reasons_fall_back_to_quality_report(tmp_path):
    make_prepared(tmp_path / "prep", n=30, drop_column=False)
    res = run(_cfg(tmp_path / "prep", tmp_path / "out"))
    assert res.stats["drops"]["source"] == "quality_report.json"
    assert res.stats["drops"]["reasons"] == {"empty_content": 2, "empty_title": 1}


def test_rerun_replaces_report_but_refuses_foreign_folders(tmp_path):
    make_prepared(tmp_path / "prep", n=30)
    out = tmp_path / "out"
    run(_cfg(tmp_path / "prep", out))
    (out / "stale.txt").write_text("old")
    run(_cfg(tmp_path / "prep", out))
    assert not (out / "stale.txt").exists() and (out / "stats.json").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(CatalogtuneError, match="refusing"):
        run(_cfg(tmp_path / "prep", foreign))
    assert (foreign / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("case", ["no_dir", "no_splits", "corrupt", "no_column"])
def test_bad_input_is_one_line_error(tmp_path, case):
    data = tmp_path / "prep"
    if case != "no_dir":
        data.mkdir()
    if case == "corrupt":
        (data / "train.parquet").write_bytes(b"not parquet at all")
    if case == "no_column":
        pq.write_table(pa.table({"id": ["1"], "title": ["x"]}), data / "train.parquet")
    with pytest.raises(CatalogtuneError) as err:
        run(_cfg(data, tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_config_checks():
    with pytest.raises(CatalogtuneError, match="sample"):
        cfgmod.build(AnalyzeConfig, data="x", sample=-1)
    with pytest.raises(CatalogtuneError, match="top_k"):
        cfgmod.build(AnalyzeConfig, data="x", top_k=0)
    with pytest.raises(CatalogtuneError, match="replace the data folder"):
        cfgmod.build(AnalyzeConfig, data="x/y", out="x")
    assert cfgmod.build(AnalyzeConfig, data="x").out.as_posix() == "x/analysis"


def test_cli(tmp_path, capsys):
    from catalogtune import cli

    make_prepared(tmp_path / "prep", n=30)
    out = tmp_path / "rep"
    rc = cli.main(["analyze", str(tmp_path / "prep"), "--out", str(out), "--top-k", "5", "--no-wordclouds"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["records"] == 30 and (out / "report.html").is_file()
    assert len(json.loads((out / "stats.json").read_text())["top_words"]["title"]) == 5
    assert cli.main(["analyze"]) == 2
    assert "give the prepared folder" in capsys.readouterr().err


@pytest.mark.parametrize("large", [False, True])
def test_word_counts_match_the_regex(large):
    pc = pytest.importorskip("pyarrow.compute")
    from catalogtune.analyze.stage import word_counts

    texts = ["", " a ", "a  b\tc\n", None, "\u00fcn\u00ef c\u00f8d\u00e9  x", "  ", "x", "", "end word"]
    arr = pc.fill_null(pa.array(texts, pa.large_string() if large else pa.string()), "")
    for part in (arr, arr.slice(2, 5), arr.slice(7), arr.slice(0, 0)):
        expected = pc.count_substring_regex(part, r"\S+").to_numpy(zero_copy_only=False)
        assert word_counts(part).tolist() == expected.tolist()


def test_flatten_keeps_any_shape():
    rows = dict(flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": list(range(20)), "f": [{"p": 1}, {"p": 2}]}))
    assert rows == {"a.b": 1, "a.c": "1, 2", "d": "x", "e": "[20 items]", "f[0].p": 1, "f[1].p": 2}


def test_on_prepare_output(request, tmp_path):
    pytest.importorskip("catalogtune.data.prepare")
    prepared_dir = request.getfixturevalue("prepared_dir")
    res = run(_cfg(prepared_dir, tmp_path / "out"))
    assert res.stats["total_records"] > 0 and res.report_path.is_file()
    assert sum(v["records"] for v in res.stats["splits"].values()) == res.stats["total_records"]
