"""The prepare stage: outputs, bad input, determinism, split integrity, atomicity."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalogtune import cli
from catalogtune.data import clean, collect, prepare
from catalogtune.data.io import prefetch, read_split
from catalogtune.data.prepare import PrepareConfig, clean_file, run
from catalogtune.core.util import CatalogtuneError

GOOD = "A sturdy little board book with bright, simple pictures and easy text for toddlers."


def _write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    lines = [r if isinstance(r, (str, bytes)) else json.dumps(r) for r in records]
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"uid": f"U{i:07d}", "title": f"Product {i} {rng.choice(['alpha', 'beta', 'gamma'])} item",
             "content": f"{GOOD} Variant number {i}."} for i in range(n)]


def _table(path: Path) -> pa.Table:
    return pq.read_table(path)


def _all_rows(out: Path) -> dict[str, list[dict]]:
    return {s: _table(out / f"{s}.parquet").to_pylist() for s in ("train", "val", "test")}


def test_sample_outputs_and_report(sample_path, trn_head_path, tmp_path):
    res = run(PrepareConfig(inputs=[sample_path, trn_head_path], out=tmp_path / "p"))
    out = tmp_path / "p"
    rep = json.loads((out / "quality_report.json").read_text())
    assert rep["records_read"] == 403 == res.records_read
    assert rep["records_read"] == rep["kept"] + rep["dropped_total"] + rep["malformed_total"]
    assert rep["dropped"]["duplicate_exact"] >= 3  # the trn head repeats the sample's first lines
    assert rep["dropped"]["placeholder"] > 0 and rep["dropped"]["title_echo"] > 0
    for split in ("train", "val", "test"):
        t = _table(out / f"{split}.parquet")
        assert t.schema.names == ["id", "title", "content"]
        assert all(pa.types.is_string(f.type) for f in t.schema)
        assert t.num_rows == rep["splits"][split] > 0
    assert sum(rep["splits"].values()) == res.kept
    raw = _table(out / "raw_lengths.parquet")
    assert raw.schema.field("title_chars").type == pa.int32()
    assert raw.schema.field("content_chars").type == pa.int32()
    assert raw.num_rows == rep["records_read"] - rep["malformed_total"]
    reasons = raw.column("drop_reason").to_pylist()
    assert reasons.count(None) == res.kept
    assert max(raw.column("content_chars").to_pylist()) > max(len(r["content"]) for r in _all_rows(out)["train"]) - 1
    cfg = (out / "config.yaml").read_text()
    assert "val_fraction: 0.1" in cfg and str(sample_path) in cfg
    train = read_split(out, "train")
    assert train[0].keys() == {"id", "title", "content"}
    assert "&#" not in " ".join(r["content"] for r in train)
    assert len(read_split(out, "val", limit=3)) == 3


def test_read_split_errors_name_the_file(tmp_path):
    with pytest.raises(CatalogtuneError, match="train.parquet"):
        read_split(tmp_path, "train")
    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("content", pa.string())])
    pq.write_table(schema.empty_table(), tmp_path / "val.parquet")
    with pytest.raises(CatalogtuneError, match="empty.*val.parquet"):
        read_split(tmp_path, "val")
    with pytest.raises(CatalogtuneError, match="unknown split"):
        read_split(tmp_path, "dev")


def test_bad_lines_are_counted_with_line_numbers(tmp_path):
    lines = [
        json.dumps({"uid": "A1", "title": "Good one", "content": GOOD}),
        '{"title": "broken", "content": ',                       # 2: invalid JSON
        "",                                                       # 3: blank
        json.dumps(["a", "list"]),                                # 4: not an object
        json.dumps({"title": "No content"}),                      # 5: missing field
        json.dumps({"title": 42, "content": GOOD}),               # 6: wrong type
        json.dumps({"title": "Null", "content": None}),           # 7: null = missing
        b'{"uid": "A8", "title": "Caf\xe9 latin-1", "content": "' + GOOD.encode() + b'"}',  # 8: bad UTF-8
        json.dumps({"uid": "A9", "title": "Good two", "content": GOOD + " Two."}),
        # labels before a field: the fast path that skips them must not lose the field
        json.dumps({"uid": "A10", "title": "Good three", "target_ind": [1], "content": GOOD, "target_rel": [1.0]}),
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "o"))
    rep = res.report
    assert rep["malformed"] == {"invalid_json": 1, "not_object": 1, "missing_field": 2, "wrong_type": 1}
    assert [(e["line"], e["kind"]) for e in rep["malformed_examples"]] == [
        (2, "invalid_json"), (4, "not_object"), (5, "missing_field"), (6, "wrong_type"), (7, "missing_field")]
    assert rep["invalid_utf8_lines"] == 1 and rep["invalid_utf8_examples"][0]["line"] == 8
    assert rep["blank_lines"] == 1
    assert rep["records_read"] == 9 and res.kept == 4  # the bad-UTF-8 line is repaired and kept
    titles = {r["title"] for rows in _all_rows(tmp_path / "o").values() for r in rows}
    assert "Caf latin-1" in titles  # the undecodable byte is dropped, the record is not


def test_truncated_and_corrupt_gzip_keep_what_was_read(tmp_path):
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in _records(3000)).encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    res = run(PrepareConfig(inputs=[cut], out=tmp_path / "o1"))
    info = res.report["inputs"][0]
    assert info["truncated"] and "truncated" in info["error"]
    assert 100 < res.records_read < 3000
    assert res.kept >= res.records_read - 1  # at most the cut last line is malformed
    corrupt = tmp_path / "corrupt.json.gz"
    corrupt.write_bytes(data[:2000] + b"\x00garbage" * 50 + data[2400:])
    res2 = run(PrepareConfig(inputs=[corrupt], out=tmp_path / "o2"))
    assert res2.report["inputs"][0]["truncated"] and res2.report["inputs"][0]["error"]


def test_unreadable_input_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CatalogtuneError, match="not found"):
        run(PrepareConfig(inputs=[missing], out=tmp_path / "o"))
    assert cli.main(["prepare", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert cli.main(["prepare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "folder" in err[1]
    assert not (tmp_path / "o").exists()
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    with pytest.raises(CatalogtuneError, match="no usable records"):
        run(PrepareConfig(inputs=[garbage], out=tmp_path / "g"))
    assert json.loads((tmp_path / "g" / "quality_report.json").read_text())["malformed_total"] > 0


def test_cli_writes_config_and_refuses_foreign_folder(sample_path, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["prepare", str(sample_path), "--out", str(out), "--seed", "3", "--min-content-chars", "50"]) == 0
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert "prepared" in capsys.readouterr().out
    assert cli.main(["prepare", str(sample_path), "--out", str(out)]) == 0  # a previous output: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli.main(["prepare", str(sample_path), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_same_seed_same_splits_any_workers_or_chunking(sample_path, tmp_path, monkeypatch):
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "a", seed=7))
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "b", seed=7, chunk_mb=0.01))
    monkeypatch.setattr(prepare, "SMALL_INPUT_BYTES", 0)  # force the process pool on a small file
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "c", seed=7, workers=2, chunk_mb=0.02))
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "d", seed=8, workers=0))
    a, b, c, d = (_all_rows(tmp_path / x) for x in "abcd")
    assert a == b == c
    assert a != d and sum(map(len, a.values())) == sum(map(len, d.values()))
    ra, rc = (_table(tmp_path / x / "raw_lengths.parquet") for x in "ac")
    assert ra.equals(rc)


def test_split_depends_on_title_group_not_position(sample_path, tmp_path):
    rows = [json.loads(line) for line in sample_path.open(encoding="utf-8")]
    random.Random(1).shuffle(rows)
    _write_jsonl(tmp_path / "shuffled.jsonl", rows)
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "a"))
    run(PrepareConfig(inputs=[tmp_path / "shuffled.jsonl"], out=tmp_path / "b"))
    where_a = {r["title"]: s for s, rs in _all_rows(tmp_path / "a").items() for r in rs}
    where_b = {r["title"]: s for s, rs in _all_rows(tmp_path / "b").items() for r in rs}
    assert where_a == where_b


def test_duplicates_and_variants_never_straddle_splits(tmp_path):
    records = []
    for i in range(300):
        base = f"Widget {''.join(chr(97 + int(d)) for d in str(i))} deluxe"  # numbers are variants
        for colour in ("Pink", "Blue", "Black"):
            records.append({"uid": f"{i}-{colour}", "title": f"Girls Tutu {base} {colour}",
                            "content": f"{GOOD} Colour {colour}, model {i}."})
        records.append({"uid": f"{i}-dup", "title": f"girls tutu {base.upper()} pink!",
                        "content": f"Another text about it. {GOOD}"})
        records.append({"uid": f"{i}-exact", "title": f"Girls Tutu {base} Pink",
                        "content": f"{GOOD} Colour Pink, model {i}."})
    path = _write_jsonl(tmp_path / "v.jsonl", records)
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "o", val_fraction=0.3, test_fraction=0.3))
    assert res.dropped["duplicate_exact"] == 300 and res.dropped["duplicate_title"] == 300
    rows = _all_rows(tmp_path / "o")
    kept_ids = {r["id"] for rs in rows.values() for r in rs}
    assert "0-Pink" in kept_ids and "0-dup" not in kept_ids and "0-exact" not in kept_ids
    groups = {s: {clean.group_key(r["title"]) for r in rs} for s, rs in rows.items()}
    assert all(groups[s] for s in groups)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    keys = [clean.norm_key(r["title"]) for rs in rows.values() for r in rs]
    assert len(keys) == len(set(keys)) == 900


def test_failure_mid_write_leaves_previous_output(sample_path, tmp_path, monkeypatch):
    out = tmp_path / "o"
    run(PrepareConfig(inputs=[sample_path], out=out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real_add = collect.Collector.add

    def failing_add(self, res):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-write")
        real_add(self, res)

    monkeypatch.setattr(collect.Collector, "add", failing_add)
    with pytest.raises(RuntimeError, match="mid-write"):
        run(PrepareConfig(inputs=[sample_path], out=out, chunk_mb=0.01))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary folder left
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        run(PrepareConfig(inputs=[sample_path], out=tmp_path / "fresh", chunk_mb=0.01))
    assert not (tmp_path / "fresh").exists()


def test_max_records_parquet_csv_and_english_filter(tmp_path):
    recs = _records(50)
    path = _write_jsonl(tmp_path / "r.jsonl", recs)
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "m", max_records=20))
    assert res.records_read == 20 and res.report["stopped_at_max_records"]
    table = pa.table({"title": [r["title"] for r in recs], "content": [r["content"] for r in recs]})
    pq.write_table(table, tmp_path / "r.parquet")
    res_pq = run(PrepareConfig(inputs=[tmp_path / "r.parquet"], out=tmp_path / "pq"))
    assert res_pq.kept == 50
    ids = [r["id"] for rs in _all_rows(tmp_path / "pq").values() for r in rs]
    assert all(i.startswith("h") and len(i) == 17 for i in ids)  # derived from the text
    run(PrepareConfig(inputs=[tmp_path / "r.parquet"], out=tmp_path / "pq2"))
    assert ids == [r["id"] for rs in _all_rows(tmp_path / "pq2").values() for r in rs]
    csv = tmp_path / "r.csv"
    csv.write_text('uid,title,content\nC1,"Quoted, title","' + GOOD + '"\nC2,broken\nC3,Other,"' + GOOD + ' 3"\n')
    res_csv = run(PrepareConfig(inputs=[csv], out=tmp_path / "csv"))
    assert res_csv.kept == 2 and res_csv.report["malformed"]["bad_csv_row"] == 1
    (tmp_path / "nocontent.csv").write_text("title,text\na,b\n")
    with pytest.raises(CatalogtuneError, match="no content column"):
        run(PrepareConfig(inputs=[tmp_path / "nocontent.csv"], out=tmp_path / "x"))
    german = {"uid": "G", "title": "Buch", "content": "Dieses Buch erzählt die Geschichte einer Familie über drei Generationen"}
    _write_jsonl(tmp_path / "de.jsonl", [german, *recs[:5]])
    assert run(PrepareConfig(inputs=[tmp_path / "de.jsonl"], out=tmp_path / "de")).kept == 6
    res_en = run(PrepareConfig(inputs=[tmp_path / "de.jsonl"], out=tmp_path / "en", english_only=True))
    assert res_en.kept == 5 and res_en.dropped["not_english"] == 1


def test_config_checks():
    with pytest.raises(ValueError):
        PrepareConfig(inputs=[], out=Path("o"))
    with pytest.raises(ValueError):
        PrepareConfig(inputs=["a"], out=Path("o"), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError):
        PrepareConfig(inputs=["a"], out=Path("o"), max_records=0)


def test_clean_file_applies_the_same_rules(sample_path, tmp_path):
    recs = clean_file(sample_path)
    res = run(PrepareConfig(inputs=[sample_path], out=tmp_path / "o"))
    assert len(recs) == res.kept
    assert {r["title"] for r in recs} == {r["title"] for rs in _all_rows(tmp_path / "o").values() for r in rs}
    with pytest.raises(CatalogtuneError):
        clean_file(tmp_path / "missing.jsonl")
    empty = _write_jsonl(tmp_path / "e.jsonl", [{"title": "t", "content": ""}])
    with pytest.raises(CatalogtuneError, match="no usable records"):
        clean_file(empty)


def test_overlong_line_is_skipped_and_counted(tmp_path, monkeypatch):
    from catalogtune.data import io

    monkeypatch.setattr(io, "MAX_LINE_BYTES", 1_000_000)  # files are read in 1 MiB blocks
    recs = [json.dumps(r) for r in _records(200)]
    long_line = json.dumps({"title": "Huge", "content": "x" * 3_000_000})
    path = _write_jsonl(tmp_path / "long.jsonl", recs[:100] + [long_line] + recs[100:] + ['{"bad'])
    res = run(PrepareConfig(inputs=[path], out=tmp_path / "o", chunk_mb=0.01))
    assert res.report["malformed"]["line_too_long"] == 1
    assert res.kept == 200 and res.records_read == 202
    lines = {e["kind"]: e["line"] for e in res.report["malformed_examples"]}
    assert lines == {"line_too_long": 101, "invalid_json": 202}  # numbering survives the skip


def test_kill_leftovers_are_removed(sample_path, tmp_path):
    stale = tmp_path / ".o.abc123.tmp"
    stale.mkdir()
    (stale / "train.parquet").write_bytes(b"half a file")
    (stale / ".prepare.pid").write_text("999999999")  # no such process
    live = tmp_path / ".o.live.tmp"
    live.mkdir()
    (live / ".prepare.pid").write_text(str(__import__("os").getpid()))
    run(PrepareConfig(inputs=[sample_path], out=tmp_path / "o"))
    assert not stale.exists() and live.exists()
    assert ".prepare.pid" not in {p.name for p in (tmp_path / "o").iterdir()}


def test_reader_thread_passes_errors_and_stops_when_closed():
    import threading

    def failing():
        yield 1
        yield 2
        raise CatalogtuneError("broken input")

    it = prefetch(failing(), 1)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(CatalogtuneError, match="broken input"):
        next(it)
    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    threads = threading.active_count()
    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed == [True] and threading.active_count() == threads


def test_vectorised_dedup_matches_one_by_one(tmp_path):
    from array import array

    from catalogtune.data.records import CANDIDATE, REASON_CODE, SCHEMA, ChunkResult

    rng = random.Random(3)
    got: list[tuple[int, str]] = []
    col = collect.Collector(lambda split, table: got.extend((split, i) for i in table.column("id").to_pylist()))
    seen: dict[int, int] = {}
    want_rows: list[tuple[int, str]] = []
    want_status: list[int] = []
    for chunk in range(6):
        n = 300
        res = ChunkResult(0, status=bytearray(), title_chars=array("i", [5] * n), content_chars=array("i", [9] * n))
        ids = []
        for item in range(n):
            if rng.random() < 0.3:  # some items were dropped by row rules
                res.status.append(REASON_CODE[clean.TOO_SHORT])
                want_status.append(REASON_CODE[clean.TOO_SHORT])
                continue
            res.status.append(CANDIDATE)
            ht, hc, split = rng.randrange(-400, 400), rng.randrange(3), rng.randrange(3)
            res.cand_item.append(item)
            res.h_title.append(ht)
            res.h_content.append(hc)
            res.split.append(split)
            ids.append(f"{chunk}-{item}")
            if ht not in seen:  # the reference: candidates checked one by one, in order
                seen[ht] = hc
                want_rows.append((split, ids[-1]))
                want_status.append(CANDIDATE)
            else:
                want_status.append(REASON_CODE[clean.DUPLICATE_EXACT if seen[ht] == hc else clean.DUPLICATE_TITLE])
        res.table = pa.Table.from_arrays([pa.array(ids), pa.array(ids), pa.array(ids)], schema=SCHEMA)
        col.add(res)
    assert sorted(got) == sorted(want_rows) and [i for s, i in got if s == 0] == [i for s, i in want_rows if s == 0]
    assert col.kept == len(want_rows) and col.items == len(want_status)
    assert col.dropped()[clean.DUPLICATE_EXACT] == want_status.count(REASON_CODE[clean.DUPLICATE_EXACT]) > 0
    assert col.dropped()[clean.DUPLICATE_TITLE] == want_status.count(REASON_CODE[clean.DUPLICATE_TITLE]) > 0
    col.check()
