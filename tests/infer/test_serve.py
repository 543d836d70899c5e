"""`catalogtune serve`: the real HTTP server on loopback, driven by the official openai client."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from catalogtune import cli
from catalogtune.core import config
from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError
from catalogtune.infer import serve as S
from helpers import make_run

openai = pytest.importorskip("openai")



class FakeIndex:
    """Deterministic stand-in for rag.index.Index; records its queries."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def query(self, texts, k=5):
        self.calls.append(list(texts))
        return [[{"id": f"R{i}", "title": f"Ref {i} for {t[:20]}", "content": f"MARKER{i} fine cotton", "score": 0.9 - i / 10}
                 for i in range(k)] for t in texts]


class Spy:
    """Wraps a Generator and records each generate call's prompts and settings."""

    def __init__(self, gen) -> None:
        self.gen, self.calls = gen, []
        self.has_adapter = gen.has_adapter

    def prompt(self, title, context=None):
        return self.gen.prompt(title, context=context)

    def generate(self, prompts, **kw):
        self.calls.append((list(prompts), kw))
        return self.gen.generate(prompts, **kw)


class LiveSpy(Spy):
    """A Spy that serves greedy requests live; ``during`` runs once, at the ``at``-th time the batch asks for more."""

    def __init__(self, gen, at: int = 2) -> None:
        super().__init__(gen)
        self.at, self.feeds, self.during, self.live_calls = at, 0, None, 0

    def can_join(self, **kw):
        return self.gen.can_join(**kw)

    def generate_live(self, feed, on_done, **kw):
        self.live_calls += 1

        def asked(free):
            self.feeds += 1
            if self.feeds == self.at and self.during is not None:
                self.during, during = None, self.during
                during()
            return feed(free)
        return self.gen.generate_live(asked, on_done, **kw)


@pytest.fixture(scope="module")
def generator(tmp_path_factory, tiny_model_dir):
    from catalogtune.infer.generate import Generator

    run = make_run(tmp_path_factory.mktemp("serve") / "run", tiny_model_dir)
    return Generator.from_run(run, bf16=False)


@pytest.fixture(scope="module")
def server(generator):
    spy, index = Spy(generator), FakeIndex()
    service = S.Service(spy, index, name="tiny", k=3, max_batch=16, batch_window_ms=150, max_tokens_cap=24)
    with S.serving(service) as srv:
        srv.spy, srv.index = spy, index
        yield srv
    service.close()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["tiny-base", "tiny-finetuned"]
    assert client.models.retrieve("tiny-base").id == "tiny-base"


def test_completion_and_chat_use_the_adapter_and_evaluate_decoding(client, server):
    resp = client.completions.create(model="tiny-finetuned", prompt="Girls Ballet Tutu", max_tokens=8)
    (choice,) = resp.choices
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert 0 < resp.usage.completion_tokens <= 8 and resp.usage.prompt_tokens > 0
    prompts, kw = server.spy.calls[-1]
    assert "Girls Ballet Tutu" in prompts[0] and kw["use_adapter"] is True and kw["do_sample"] is False
    assert kw["repetition_penalty"] == DECODING.repetition_penalty
    assert kw["no_repeat_ngram_size"] == DECODING.no_repeat_ngram_size
    chat = client.chat.completions.create(
        model="tiny-base", max_tokens=500,  # capped at the server's 24
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "first"},
                  {"role": "assistant", "content": "x"}, {"role": "user", "content": "Pink cotton kids set"}])
    assert chat.choices[0].message.role == "assistant" and chat.object == "chat.completion"
    prompts, kw = server.spy.calls[-1]
    assert "Pink cotton kids set" in prompts[0] and "first" not in prompts[0]
    assert kw["use_adapter"] is False and kw["max_new_tokens"] == 24


def test_references_and_rag_prompt(client, server):
    resp = client.chat.completions.create(model="tiny-finetuned", max_tokens=4,
                                          messages=[{"role": "user", "content": "steel knife"}])
    refs = resp.model_extra["references"]
    assert [r["id"] for r in refs] == ["R0", "R1", "R2"] and set(refs[0]) == {"id", "title", "score"}
    assert "MARKER0" not in server.spy.calls[-1][0][0]  # references shown, not prompted
    client.chat.completions.create(model="tiny-finetuned", max_tokens=4, extra_body={"rag": True},
                                   messages=[{"role": "user", "content": "steel knife"}])
    assert "MARKER0" in server.spy.calls[-1][0][0]
    comp = client.completions.create(model="tiny-finetuned+rag", prompt="steel knife", max_tokens=4)
    assert "MARKER2" in server.spy.calls[-1][0][0] and comp.model_extra["references"][0]["id"] == "R0"
    assert comp.model == "tiny-finetuned+rag"


def test_streaming_matches_the_plain_answer(client):
    messages = [{"role": "user", "content": "blue toy game for kids"}]
    plain = client.chat.completions.create(model="tiny-finetuned", max_tokens=12, messages=messages)
    chunks = list(client.chat.completions.create(model="tiny-finetuned", max_tokens=12, messages=messages,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].model_extra["references"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    comp = list(client.completions.create(model="tiny-base", prompt="red book", max_tokens=6, stream=True))
    assert comp[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].text for c in comp) == client.completions.create(
        model="tiny-base", prompt="red book", max_tokens=6).choices[0].text


def test_concurrent_requests_are_batched(client, server):
    before = dict(server.service.batcher.stats)
    calls_before = len(server.spy.calls)
    titles = [f"gift set {i}" for i in range(8)]
    barrier = threading.Barrier(len(titles))

    def ask(title):
        barrier.wait()
        return client.chat.completions.create(model="tiny-finetuned", max_tokens=6,
                                              messages=[{"role": "user", "content": title}])

    with ThreadPoolExecutor(len(titles)) as pool:
        answers = list(pool.map(ask, titles))
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    stats = server.service.batcher.stats
    assert stats["requests"] - before["requests"] == len(titles)
    assert stats["generate_calls"] - before["generate_calls"] < len(titles)
    assert max(len(p) for p, _ in server.spy.calls[calls_before:]) > 1
    health = json.loads(_raw(server, "GET", "/health")[1])
    assert health["status"] == "ok" and health["largest_batch"] > 1


def test_openai_errors_for_bad_requests(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["code"] == "model_not_found" and "tiny-base" in exc.value.body["message"]
    bad = [
        dict(model="tiny-base", messages=[]),
        dict(model="tiny-base", messages=[{"role": "assistant", "content": "no user"}]),
        dict(model="tiny-base", messages=[{"role": "user", "content": 42}]),
        dict(model="tiny-base", messages=[{"role": "user", "content": "   "}]),
        dict(model="tiny-base", messages=[{"role": "user", "content": "x"}], max_tokens="many"),
        dict(model="tiny-base", messages=[{"role": "user", "content": "x"}], temperature=5),
        dict(model="tiny-base", messages=[{"role": "user", "content": "x"}], n=2),
    ]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(**kw)
        assert exc.value.body["type"] == "invalid_request_error" and exc.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-base", prompt=["a"] * 17)


def _raw(server, method, path, body=None, headers=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, data


@pytest.mark.parametrize("method,path,body,status", [
    ("POST", "/v1/chat/completions", b"{not json", 400),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400),
    ("POST", "/v1/chat/completions", b"[" * 30000 + b"]" * 30000, 400),
    ("POST", "/v1/completions", b'{"model": "tiny-base"}', 400),
    ("POST", "/v1/completions", b'{"model": "tiny-base", "prompt": "x", "stream": "yes"}', 400),
    ("POST", "/v1/completions", b"x" * (64 * 1024 + 1), 413),
    ("GET", "/v1/chat/completions", None, 405),
    ("GET", "/admin", None, 404),
    ("DELETE", "/v1/models", None, 501),
])
def test_raw_http_errors_are_json_without_tracebacks(server, method, path, body, status):
    got, data = _raw(server, method, path, body, {"Content-Type": "application/json"})
    assert got == status
    err = json.loads(data)["error"]
    assert err["message"] and "Traceback" not in data and "File \"" not in data


def test_config_checks_and_cli_errors(tmp_path, capsys):
    with pytest.raises(CatalogtuneError, match="--run RUN_DIR"):
        config.build(S.ServeConfig)
    assert cli.main(["serve", "--run", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "run folder not found" in err and len(err.splitlines()) == 1
    assert cli.main(["serve", "--model", "tiny-random", "--index", str(tmp_path / "noidx")]) == 2
    assert "RAG index not found" in capsys.readouterr().err


def test_base_only_server_from_a_model(tiny_model_dir):
    cfg = config.build(S.ServeConfig, model=str(tiny_model_dir), port=0)
    service = S.build_service(cfg)
    try:
        with S.serving(service) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60)
            assert [m.id for m in c.models.list().data] == ["tiny-random-base"]
            with pytest.raises(openai.NotFoundError):
                c.completions.create(model="tiny-random-finetuned", prompt="x", max_tokens=2)
            with pytest.raises(openai.BadRequestError, match="no RAG index"):
                c.completions.create(model="tiny-random-base+rag", prompt="x", max_tokens=2)
            assert "references" not in (c.completions.create(model="tiny-random-base", prompt="x", max_tokens=2)
                                        .model_extra or {})
    finally:
        service.close()


def test_requests_join_a_running_batch_and_other_rules_wait_their_turn(generator):
    spy = LiveSpy(generator)
    service = S.Service(spy, FakeIndex(), name="tiny", k=3, max_batch=4, batch_window_ms=1, max_tokens_cap=64)
    done_at: dict[str, float] = {}
    try:
        with S.serving(service) as srv, ThreadPoolExecutor(3) as pool:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)

            def ask(key, **kw):
                out = c.completions.create(model="tiny-finetuned", **kw)
                done_at[key] = time.monotonic()
                return out

            def arrive():  # runs in the generation thread, between two decode steps of the long answer
                futures.append(pool.submit(ask, "short", prompt="owl mug", max_tokens=3))
                futures.append(pool.submit(ask, "sampled", prompt="owl mug", max_tokens=3, temperature=0.8, seed=1))
                deadline = time.monotonic() + 60
                while service.batcher.queue.qsize() < 2 and time.monotonic() < deadline:
                    time.sleep(0.005)

            futures: list = []
            spy.during = arrive
            long = ask("long", prompt="stainless steel insulated water bottle", max_tokens=48)
            short, sampled = (f.result(timeout=120) for f in futures)
            stats = dict(service.batcher.stats)
            # the greedy request joined the running batch; the sampling one waited and ran on its own
            assert stats["joined"] == 1 and spy.live_calls == 1
            assert [kw["do_sample"] for _, kw in spy.calls] == [True]
            assert sampled.choices[0].text and not service.batcher.deferred
            # joining changes nothing in the answer
            alone = c.completions.create(model="tiny-finetuned", prompt="owl mug", max_tokens=3)
            assert short.choices[0].text == alone.choices[0].text
            assert short.usage.completion_tokens == alone.usage.completion_tokens <= 3
            if long.choices[0].finish_reason == "length":  # the 3-token answer did not wait for the 48-token one
                assert done_at["short"] < done_at["long"]
            assert [r["id"] for r in short.model_extra["references"]] == ["R0", "R1", "R2"]
    finally:
        service.close()


def test_live_streaming_sends_text_while_the_answer_is_generated(generator):
    spy = LiveSpy(generator, at=12)
    service = S.Service(spy, FakeIndex(), name="tiny", k=3, max_batch=4, batch_window_ms=1, max_tokens_cap=64)
    try:
        with S.serving(service) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            messages = [{"role": "user", "content": "stainless steel insulated water bottle"}]
            plain = c.chat.completions.create(model="tiny-finetuned", max_tokens=40, messages=messages)
            got, seen = [], []

            def during():  # in the generation thread, 12 steps in: has the client had text yet?
                deadline = time.monotonic() + 20
                while not any(ch.choices and ch.choices[0].delta.content for ch in got) and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen.append(any(ch.choices and ch.choices[0].delta.content for ch in got))

            spy.during, spy.at = during, spy.feeds + 12
            for ch in c.chat.completions.create(model="tiny-finetuned", max_tokens=40, messages=messages, stream=True,
                                                stream_options={"include_usage": True}):
                got.append(ch)
            text = "".join(ch.choices[0].delta.content or "" for ch in got if ch.choices)
            assert text == plain.choices[0].message.content
            if plain.usage.completion_tokens >= 14:  # still generating at step 12
                assert seen == [True]
            assert got[0].model_extra["references"] and got[-1].usage.completion_tokens == plain.usage.completion_tokens
            # a stop string cuts the stream where the plain answer is cut
            words = plain.choices[0].message.content.split()
            if len(words) >= 4:
                stop = words[len(words) // 2]
                cut = c.completions.create(model="tiny-finetuned", prompt=messages[0]["content"], max_tokens=40, stop=[stop])
                streamed = list(c.completions.create(model="tiny-finetuned", prompt=messages[0]["content"],
                                                     max_tokens=40, stop=[stop], stream=True))
                assert "".join(ch.choices[0].text for ch in streamed) == cut.choices[0].text
                assert streamed[-1].choices[0].finish_reason == cut.choices[0].finish_reason == "stop"
    finally:
        service.close()
