"""The RAG index through a real Chroma server (`chroma run`, client/server) on 127.0.0.1.

A small folder index is built with the hash embedder from invented records, served with
``chroma run --path FOLDER``, and opened by address: the neighbours must be the folder's; `ask`
works through the server; a dead, silent or wrong address is one line naming it, quickly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from catalogtune import cli
from catalogtune.core.util import CatalogtuneError
from catalogtune.rag import index as rag

CHROMA = Path(sys.executable).parent / "chroma"
START_DEADLINE_S = 60.0
WORDS = ("red blue green cotton steel kettle shirt guitar strings tutu lamp oak table wool socks brass bell "
         "linen pillow ceramic mug leather wallet bamboo brush copper pan glass vase maple chair silk scarf "
         "canvas bag rubber boots velvet cushion").split()
QUERIES = ["red cotton shirt", "steel kettle", "guitar strings light gauge", "pink ballet tutu"]


def _rows(n: int = 60) -> list[dict]:
    import random

    rows = []
    for i in range(n):
        words = random.Random(i).sample(WORDS, 4)
        rows.append({"id": f"x{i:03d}", "title": " ".join(words).title() + f" {i}",
                     "content": f"A {' '.join(words)} made for test number {i}."})
    return rows


def _write_split(folder: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in ("id", "title", "content")}),
                   folder / "train.parquet")
    return folder


def _build(tmp: Path, name: str = "idx") -> Path:
    data = _write_split(tmp / f"{name}-data", _rows())
    out = tmp / name
    rag.run(rag.IndexConfig(data=data, out=out, embedder="hash", progress=False))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heartbeat(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("chroma-folder"))


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory, request) -> str:
    """``chroma run --path FOLDER`` on a free 127.0.0.1 port; its address, once its heartbeat answers."""
    if not CHROMA.is_file():
        pytest.skip(f"chroma CLI not found at {CHROMA}")
    port = _free_port()
    log = tmp_path_factory.mktemp("chroma-log") / "server.log"
    fh = open(log, "w")
    proc = subprocess.Popen([str(CHROMA), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        fh.close()

    request.addfinalizer(stop)
    deadline = time.monotonic() + START_DEADLINE_S
    while not _heartbeat(port):
        if proc.poll() is not None:
            pytest.fail(f"chroma run exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"chroma run did not answer within {START_DEADLINE_S:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}"


def test_is_address_and_parse_address():
    assert rag.is_address("http://127.0.0.1:8001") and rag.is_address(Path("http://127.0.0.1:8001"))
    assert rag.is_address("https://chroma.example:443/catalog")
    assert not rag.is_address("index") and not rag.is_address(Path("demo-out/index")) and not rag.is_address(None)
    assert rag.parse_address("http://127.0.0.1:8001") == ("http://127.0.0.1:8001/catalog", "127.0.0.1", 8001,
                                                          False, "catalog")
    assert rag.parse_address(Path("http://localhost:9/other/"))[0] == "http://localhost:9/other"
    assert rag.parse_address("http://localhost")[2] == 8000
    for bad in ("http://", "http://host:99999", "http://host:80/a/b", "http://ho st:80"):
        with pytest.raises(CatalogtuneError, match="bad Chroma server address"):
            rag.parse_address(bad)


def test_build_stores_the_manifest_in_the_collection_metadata(folder):
    index = rag.Index.open(folder)
    assert rag.manifest_of(index.collection, str(folder)) == json.loads((folder / rag.MANIFEST).read_text())


def test_server_returns_the_folder_neighbours(folder, server):
    local = rag.Index.open(folder)
    served = rag.Index.open(server)
    assert served.path == f"{server}/catalog" and served.count() == local.count() == 60
    assert served.manifest == local.manifest and served.manifest["status"] == "complete"
    want, got = local.query(QUERIES, k=5), served.query(QUERIES, k=5)
    assert [len(q) for q in got] == [len(q) for q in want] == [5] * len(QUERIES)
    for a, b in zip(got, want):
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-5)
        # the same records in the same order (only an exact tie in score may swap two)
        for x, y in zip(a, b):
            assert x == {**y, "score": x["score"]} or abs(x["score"] - y["score"]) < 1e-6
        assert sum(x["id"] == y["id"] for x, y in zip(a, b)) >= 4
    # the named collection, and the collapsed form an address takes after a Path option
    for same in (f"{server}/catalog", Path(server)):
        assert [h["id"] for h in rag.Index.open(same).query(QUERIES[:1], k=3)[0]] == [h["id"] for h in want[0][:3]]


def test_every_index_check_accepts_an_address(folder, server, tmp_path):
    from catalogtune.evaluate import stage
    from catalogtune.infer.ask import open_index
    from catalogtune.train.retrieval import add_retrieval

    assert open_index(Path(server)).count() == 60
    stage.check_inputs(stage.EvalConfig(out=tmp_path / "eval", data=folder.parent / "idx-data", model="m",
                                        index=Path(server)))  # no "not found"

    class Cfg:
        rag_index, rag_k, rag_share, rag_noise, seed = Path(server), 2, 1.0, 0.0, 0

    rows = [{"id": "q1", "title": "Red Cotton Shirt", "content": "c"}]
    stats = add_retrieval(Cfg(), rows, [])
    assert stats["train"]["with_context"] == 1 and len(rows[0]["context"]) >= 1


def test_ask_through_the_server(folder, server, tmp_path_factory, tiny_model_dir, capsys):
    from helpers import make_run

    run_dir = make_run(tmp_path_factory.mktemp("ask-srv") / "run", tiny_model_dir)
    title = "Red Cotton Shirt"
    want = [h["id"] for h in rag.Index.open(folder).query([title], k=3)[0]]
    rc = cli.main(["ask", title, "--run", str(run_dir), "--index", server, "--rag", "--k", "3",
                   "--json", "--max-new-tokens", "4"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and [r["id"] for r in out["references"]] == want and out["system"] == "finetuned+rag"
    # a dead address through the CLI: exit 2, one line naming it
    dead = f"http://127.0.0.1:{_free_port()}"
    assert cli.main(["ask", title, "--run", str(run_dir), "--index", dead]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and dead in err and "does not answer" in err


def test_dead_silent_and_wrong_addresses_are_one_line_errors(server, monkeypatch):
    dead = f"http://127.0.0.1:{_free_port()}"
    t = time.monotonic()
    with pytest.raises(CatalogtuneError, match="does not answer") as exc:
        rag.Index.open(dead)
    assert dead in str(exc.value) and len(str(exc.value).splitlines()) == 1 and time.monotonic() - t < 5
    # a port that accepts connections but never answers: the short timeout, no hang
    monkeypatch.setattr(rag, "SERVER_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t = time.monotonic()
        with pytest.raises(CatalogtuneError, match="does not answer") as exc:
            rag.Index.open(addr)
        assert addr in str(exc.value) and time.monotonic() - t < 5
    with pytest.raises(CatalogtuneError, match=r"collection 'nothing' cannot be opened") as exc:
        rag.Index.open(f"{server}/nothing")
    assert f"{server}/nothing" in str(exc.value) and len(str(exc.value).splitlines()) == 1


def test_collection_without_a_manifest_is_refused(server):
    import chromadb

    host, port = server.rsplit("/", 1)[1].split(":")
    chromadb.HttpClient(host=host, port=int(port)).get_or_create_collection("legacy", metadata={"x": 1})
    with pytest.raises(CatalogtuneError, match="no catalogtune manifest") as exc:
        rag.Index.open(f"{server}/legacy")
    assert len(str(exc.value).splitlines()) == 1


def test_building_into_a_server_is_refused_with_the_folder_route(tmp_path):
    data = _write_split(tmp_path / "data", _rows(5))
    with pytest.raises(CatalogtuneError, match="chroma run --path INDEX_DIR"):
        rag.run(rag.IndexConfig(data=data, out=Path("http://127.0.0.1:8001"), embedder="hash", progress=False))


def test_rerun_adds_the_metadata_to_an_older_index(tmp_path):
    out = _build(tmp_path)
    col = rag.client(out).get_collection("catalog", embedding_function=None)
    col.modify(metadata={"catalogtune": "rag-index-v1"})  # as built before server support
    with pytest.raises(CatalogtuneError, match="no catalogtune manifest"):
        rag.manifest_of(rag.client(out).get_collection("catalog", embedding_function=None), str(out))
    res = rag.run(rag.IndexConfig(data=tmp_path / "idx-data", out=out, embedder="hash", progress=False))
    assert res.added == 0 and res.total == 60
    man = rag.manifest_of(rag.client(out).get_collection("catalog", embedding_function=None), str(out))
    assert man == json.loads((out / rag.MANIFEST).read_text()) and man["status"] == "complete"


class _FakeGen:
    @classmethod
    def from_run(cls, run_dir):
        return cls()

    def prompt(self, title, context=None):
        return f"{title}|{len(context or [])}"

    def generate(self, prompts, use_adapter=True, **decoding):
        import types

        return [types.SimpleNamespace(text=prompts[0], new_tokens=1, seconds=0.0, stopped_at_eos=True)]


def test_app_compare_takes_a_server_address(folder, server, tmp_path, monkeypatch):
    import types

    from catalogtune.app import jobs, page_compare

    fake = types.ModuleType("catalogtune.infer.generate")
    fake.Generator = _FakeGen
    monkeypatch.setitem(sys.modules, "catalogtune.infer.generate", fake)
    ws = jobs.Workspace(tmp_path / "ws")
    (ws.root / "run" / "adapter").mkdir(parents=True)
    res = page_compare.compare(ws, "Red Cotton Shirt", "run", True, 3, 8, index_text=f" {server} ")
    want = [h["id"] for h in rag.Index.open(folder).query(["Red Cotton Shirt"], k=3)[0]]
    assert [r["id"] for r in res["refs"]] == want and res["outputs"]["base"]["text"] == "Red Cotton Shirt|3"
    with pytest.raises(CatalogtuneError, match="does not answer"):
        page_compare.compare(ws, "Red Cotton Shirt", "run", True, 3, 8, index_text=f"http://127.0.0.1:{_free_port()}")
