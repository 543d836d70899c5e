"""`catalogtune bench serve` with the tiny model: a bounded loopback load test and its JSON line."""

from __future__ import annotations

import json

import pytest

from catalogtune import cli
from catalogtune.bench import serve as BS
from catalogtune.core.util import CatalogtuneError


def test_bench_serve_json_line(tiny_model_dir, capsys):
    argv = ["bench", "serve", "--model", str(tiny_model_dir), "--clients", "1,4", "--requests-per-client", "2",
            "--max-tokens", "4", "--batch-window-ms", "50"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "serve" and res["model"] == "tiny-random-base" and res["server"]["in_process"]
    one, four = res["levels"]
    assert [one["clients"], four["clients"]] == [1, 4]
    assert one["requests"] == 2 and four["requests"] == 8 and one["errors"] == four["errors"] == 0
    for lv in res["levels"]:
        assert lv["requests_per_s"] > 0 and 0 < lv["p50_ms"] <= lv["p95_ms"] and lv["mean_batch"] >= 1
    assert one["speedup"] == 1.0 and four["mean_batch"] > 1  # concurrent clients share batches
    # the 4-client level again with joining off, on the same loaded model
    grouped = res["without_join"]
    assert grouped["clients"] == 4 and grouped["requests"] == 8 and grouped["errors"] == 0
    assert grouped["joined_running_batch"] == 0 and res["join_speedup"] > 0
    again = res["with_join_again"]
    assert again["clients"] == 4 and again["requests"] == 8 and again["errors"] == 0
    mean = (four["requests_per_s"] + again["requests_per_s"]) / 2
    assert res["join_speedup"] == pytest.approx(mean / grouped["requests_per_s"], abs=0.01)


def test_load_test_is_loopback_only_and_bounded():
    with pytest.raises(CatalogtuneError, match="loopback"):
        BS.load_test("http://example.com:8000/v1")
    with pytest.raises(CatalogtuneError, match="loopback"):
        BS.check_loopback("https://127.0.0.1:8000/v1")
    with pytest.raises(CatalogtuneError, match="at most"):
        BS.load_test("http://127.0.0.1:9/v1", clients=(64,), requests_per_client=100)


@pytest.mark.parametrize("opt", [["--clients", "0"], ["--clients", "65"], ["--requests-per-client", "1000"],
                                 ["--max-tokens", "0"], ["--url", "http://10.0.0.1/v1"]])
def test_bad_options(opt, capsys):
    assert cli.main(["bench", "serve", *opt]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_titles_fill_up_to_n():
    got = BS.titles(3)
    assert len(got) == 3 and all(isinstance(t, str) and t for t in got)
