"""`catalogtune serve --run RUN [--index IDX]`: an OpenAI-compatible HTTP API for the base and fine-tuned model.

Endpoints: ``GET /v1/models`` (``NAME-base``, ``NAME-finetuned``), ``POST /v1/completions`` (the
``prompt`` is the product title, or a list of up to 16 titles), ``POST /v1/chat/completions`` (the
last user message is the title), both with ``stream: true`` (server-sent events in OpenAI's chunk
format, ending ``data: [DONE]``), and ``GET /health`` (batching counters). The model name picks the
adapter (``-finetuned``) or the base with it switched off (``-base``); a ``+rag`` suffix or the
extra body field ``"rag": true`` puts the ``--index`` records in the prompt. With ``--index`` every
answer carries an extra field ``references``: ``[{"id", "title", "score"}]``. Requests that give no
decoding settings get the project's one setting, ``core.decoding.DECODING`` (what evaluate uses).

One worker thread owns the model (``infer/worker.py``): it takes the requests that arrive within
``--batch-window-ms`` (up to ``--max-batch``) and retrieves for all of them in one index query.
Greedy requests (the default) run as one continuous batch that later requests with the same rules
join between two decode steps (``Generator.generate_live``); each answer is sent the step its row
ends, not when the batch does. Sampling requests are grouped by settings, one
``Generator.generate`` call per group. A streamed answer of a live batch is sent as it is
generated (token-sized pieces, cut at the first stop string, the last characters held back
until they cannot start one); a grouped one arrives as word-sized chunks once it is done.

HTTP: the standard library's ``ThreadingHTTPServer`` (a thread per connection, only parsing
small JSON bodies and waiting). Starlette/uvicorn are installed with chromadb, but only with the
``rag`` extra; all the real work is one generation thread, so an async framework would add a
dependency and no throughput. Limits: 64 KB bodies, ``max_tokens`` capped, titles cleaned and cut
by ``clean_title``, a bounded queue (503 when full), a socket timeout; errors are JSON in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape, never a traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import re
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from catalogtune.core import config
from catalogtune.core.decoding import DECODING
from catalogtune.core.prompt import clean_title
from catalogtune.core.util import CatalogtuneError
from catalogtune.infer.worker import WAIT_S, ApiError, Batcher, Job, Settings

MAX_BODY_BYTES = 64 * 1024
MAX_PROMPTS = 16
MAX_MESSAGES = 64
MAX_STOPS = 4
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Options of `catalogtune serve`."""

    run: Path | None = None
    """Training run folder: serves NAME-base and NAME-finetuned."""
    model: str | None = None
    """Base model name or path (overrides the run's base; alone, serves NAME-base only)."""
    index: Path | None = None
    """RAG index folder: answers carry its top-k records as `references`."""
    host: str = "127.0.0.1"
    """Address to bind (loopback by default; the API has no authentication)."""
    port: int = 8000
    """TCP port (0 = any free port)."""
    name: str | None = None
    """Model name prefix in /v1/models (default: the base model's name)."""
    k: int = 5
    """Records retrieved per answer."""
    max_batch: int = 16
    """Most requests generated together."""
    batch_window_ms: float = 10.0
    """How long the worker waits for more requests before generating."""
    max_tokens_cap: int = 512
    """Requests asking for more max_tokens get this many."""
    join: bool = True
    """Greedy requests join the running batch between decode steps (off: each waits for the batch before it)."""
    threads: int | None = None
    """torch threads (default: one per core, or 1 when the machine is already busier than its cores)."""

    def __post_init__(self) -> None:
        if self.run is None and self.model is None:
            raise ValueError("give --run RUN_DIR (base + fine-tuned) or --model NAME (base only)")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError("port must be from 0 to 65535")
        if not 1 <= int(self.k) <= 20 or not 1 <= int(self.max_batch) <= 256:
            raise ValueError("k must be from 1 to 20 and max_batch from 1 to 256")
        if not 0 <= float(self.batch_window_ms) <= 1000 or not 1 <= int(self.max_tokens_cap) <= 1024:
            raise ValueError("batch_window_ms must be from 0 to 1000 and max_tokens_cap from 1 to 1024")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError("threads must be >= 1")


# --- request checks ------------------------------------------------------------------------


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo < v if lo_open else lo <= v) or v > hi:
        raise ApiError(400, f"{key} must be a number {'>' if lo_open else '>='} {lo} and <= {hi}", param=key)
    return float(v)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(400, f"{key} must be an integer from {lo} to {hi}", param=key)
    return v


def _flag(body: dict, key: str) -> bool:
    v = body.get(key)
    if v is not None and not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return bool(v)


def _title(text: Any, param: str) -> str:
    try:
        return clean_title(text)
    except CatalogtuneError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or len(items) > MAX_STOPS or not all(isinstance(s, str) and 0 < len(s) <= 100 for s in items):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOPS} non-empty strings", param="stop")
    return items


def _unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "best_of is not supported", param="best_of")
    for key in ("logprobs", "echo", "tools", "functions", "suffix"):
        if body.get(key):
            raise ApiError(400, f"{key} is not supported", param=key)


def _message_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return " ".join(p["text"] for p in content)
    raise ApiError(400, f"messages[{i}].content must be text or a list of text parts", param="messages")


def last_user_text(messages: Any) -> str:
    """The content of the last user message (the product title)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"at most {MAX_MESSAGES} messages", param="messages")
    user = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a role", param="messages")
        if m["role"] == "user":
            user = _message_text(m.get("content"), i)
    if user is None:
        raise ApiError(400, "messages has no user message (it holds the product title)", param="messages")
    return user


# --- the API (no HTTP here) ------------------------------------------------------------------


class Service:
    """OpenAI-shaped answers from one Generator (and an optional index)."""

    def __init__(self, generator: Any, index: Any = None, name: str = "model", k: int = 5, max_batch: int = 16,
                 batch_window_ms: float = 10.0, max_tokens_cap: int = 512, join: bool = True) -> None:
        self.gen, self.index, self.name = generator, index, re.sub(r"\s+", "-", name) or "model"
        self.max_tokens_cap = max_tokens_cap
        self.created = int(time.time())
        self.batcher = Batcher(generator, index, k, max_batch, batch_window_ms / 1000.0, join=join)

    def model_ids(self) -> list[str]:
        ids = [f"{self.name}-base"]
        return ids + [f"{self.name}-finetuned"] if getattr(self.gen, "has_adapter", False) else ids

    def models(self, _body: Any = None) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": self.created, "owned_by": "catalogtune"} for m in self.model_ids()]
        return {"object": "list", "data": data}

    def health(self, _body: Any = None) -> dict[str, Any]:
        with self.batcher._lock:
            stats = dict(self.batcher.stats)
        return {"status": "ok", "models": self.model_ids(), "rag": self.index is not None,
                "queued": self.batcher.queue.qsize(), **stats}

    def _model(self, body: dict) -> tuple[str, bool, bool]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model must be given as a string", param="model")
        base = model[:-4] if model.endswith("+rag") else model
        if base not in self.model_ids():
            raise ApiError(404, f"model {model!r} not found (available: {', '.join(self.model_ids())})",
                           param="model", code="model_not_found")
        rag = model.endswith("+rag") or _flag(body, "rag")
        if rag and self.index is None:
            raise ApiError(400, "this server has no RAG index (start it with --index INDEX_DIR)", param="rag")
        return model, base.endswith("-finetuned"), rag

    def _decoding(self, body: dict, use_adapter: bool) -> Settings:
        _unsupported(body)
        cap = self.max_tokens_cap
        max_tokens = _integer(body, "max_tokens", None, 1, 10**9)
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1, 10**9) or DECODING.max_new_tokens
        temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
        return Settings(
            use_adapter=use_adapter, max_new_tokens=min(max_tokens, cap), do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 0.7,
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
            repetition_penalty=_number(body, "repetition_penalty", DECODING.repetition_penalty, 0.0, 10.0, lo_open=True),
            no_repeat_ngram_size=int(_integer(body, "no_repeat_ngram_size", DECODING.no_repeat_ngram_size, 0, 16)),
            seed=int(_integer(body, "seed", 0, -(2**63), 2**63 - 1)) % (2**31),
        )

    def _answers(self, titles: list[str], body: dict) -> tuple[str, list[Job], list[str]]:
        """Queue one job per title; a streamed request returns at once (its jobs carry a stream),
        any other once every answer is there."""
        model, use_adapter, rag = self._model(body)
        dec, stops = self._decoding(body, use_adapter), _stops(body)
        stream = _flag(body, "stream")
        jobs = [Job(t, rag, dec, stream=queue.Queue() if stream else None) for t in titles]
        if stream:
            self.batcher.enqueue(jobs)
        else:
            self.batcher.submit(jobs)
        return model, jobs, stops

    def _stream_pieces(self, job: Job, stops: list[str]) -> Iterator[str | ApiError]:
        """A streamed job's text as it grows, cut at the first stop string; the job is answered
        when this ends (an ApiError is yielded instead of raised: the response has begun).

        The pieces join to ``_choice_text``'s text: the last ``len(stop) - 1`` characters are held
        back until they cannot start a stop string. A job that was not generated live sends no
        pieces before it ends and then comes as word-sized ones.
        """
        hold = max((len(x) for x in stops), default=1) - 1
        text, sent, cut = "", "", False
        while True:
            try:
                piece = job.stream.get(timeout=WAIT_S)  # type: ignore[union-attr]
            except queue.Empty:
                yield ApiError(504, "generation timed out", code="timeout")
                return
            if piece is None:
                break
            if cut:
                continue
            text += piece
            hits = [text.find(x) for x in stops if x in text]
            if hits:
                cut, ready = True, text[: min(hits)].rstrip()
            else:
                ready = text[: len(text) - hold].rstrip() if hold else text
            if len(ready) > len(sent) and ready.startswith(sent):
                yield ready[len(sent):]
                sent = ready
        if job.error is not None:
            yield job.error
            return
        final, _ = self._choice_text(job, stops)
        rest = final[len(sent):] if final.startswith(sent) else ""
        yield from _word_pieces(rest) if not sent else ([rest] if rest else [])

    def _choice_text(self, job: Job, stops: list[str]) -> tuple[str, str]:
        text, reason = job.result.text, "stop" if job.result.stopped == "eos" else "length"
        cuts = [text.find(s) for s in stops if s in text]
        if cuts:
            text, reason = text[: min(cuts)].rstrip(), "stop"
        return text, reason

    def _refs(self, job: Job) -> list[dict]:
        return [{"id": str(r.get("id", "")), "title": str(r.get("title", "")), "score": float(r.get("score", 0.0))}
                for r in job.records]

    def _usage(self, jobs: list[Job]) -> dict[str, int]:
        p = sum(int(j.result.prompt_tokens) for j in jobs)
        c = sum(int(j.result.new_tokens) for j in jobs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def completions(self, body: dict) -> dict | Iterator[dict]:
        """``POST /v1/completions``: ``prompt`` is a title or a list of titles."""
        prompt = body.get("prompt")
        items = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_PROMPTS:
            raise ApiError(400, f"prompt must be a title or a list of 1 to {MAX_PROMPTS} titles", param="prompt")
        titles = [_title(t, "prompt") for t in items]
        model, jobs, stops = self._answers(titles, body)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model}
        if not _flag(body, "stream"):
            texts = [self._choice_text(j, stops) for j in jobs]
            refs = {"references": self._refs(jobs[0])} if self.index is not None else {}
            choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None,
                        **({"references": self._refs(j)} if self.index is not None else {})}
                       for i, (j, (t, r)) in enumerate(zip(jobs, texts))]
            return {**head, "choices": choices, "usage": self._usage(jobs), **refs}

        def chunks() -> Iterator[dict]:
            refs = [self.index is not None]  # sent once, with the first chunk: known once the first piece is

            def extra() -> dict:
                if not refs[0]:
                    return {}
                refs[0] = False
                return {"references": self._refs(jobs[0])}

            for i, job in enumerate(jobs):
                for piece in self._stream_pieces(job, stops):
                    if isinstance(piece, ApiError):
                        yield piece.payload()
                        return
                    yield {**head, "choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}],
                           **extra()}
                _, reason = self._choice_text(job, stops)
                yield {**head, "choices": [{"index": i, "text": "", "finish_reason": reason, "logprobs": None}],
                       **extra()}
            if _include_usage(body):
                yield {**head, "choices": [], "usage": self._usage(jobs)}
        return chunks()

    def chat(self, body: dict) -> dict | Iterator[dict]:
        """``POST /v1/chat/completions``: the last user message is the title."""
        title = _title(last_user_text(body.get("messages")), "messages")
        model, jobs, stops = self._answers([title], body)
        (job,) = jobs
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
        if not _flag(body, "stream"):
            text, reason = self._choice_text(job, stops)
            refs = {"references": self._refs(job)} if self.index is not None else {}
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                      "logprobs": None}
            return {**head, "object": "chat.completion", "choices": [choice], "usage": self._usage(jobs), **refs}
        head["object"] = "chat.completion.chunk"

        def chunks() -> Iterator[dict]:
            pieces = self._stream_pieces(job, stops)
            first = next(pieces, None)  # the first piece (or the end): the references are known by then
            if isinstance(first, ApiError):
                yield first.payload()
                return
            refs = {"references": self._refs(job)} if self.index is not None else {}
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}], **refs}
            for piece in itertools.chain([first] if first is not None else [], pieces):
                if isinstance(piece, ApiError):
                    yield piece.payload()
                    return
                yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            _, reason = self._choice_text(job, stops)
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
            if _include_usage(body):
                yield {**head, "choices": [], "usage": self._usage(jobs)}
        return chunks()

    def close(self) -> None:
        self.batcher.close()


def _word_pieces(text: str) -> list[str]:
    """Word-sized stream chunks that join back to ``text``."""
    return re.findall(r"\s*\S+|\s+$", text)


def _include_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# --- HTTP ----------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the server's ``Service``; every reply is JSON or an event stream."""

    protocol_version = "HTTP/1.1"
    server_version = "catalogtune"
    sys_version = ""
    timeout = 30  # seconds a read may stall: a slow client cannot hold a thread forever
    server: "ApiServer"

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _routes(self) -> dict[str, tuple[str, Any]]:
        s = self.server.service
        return {"/v1/models": ("GET", s.models), "/health": ("GET", s.health),
                "/v1/completions": ("POST", s.completions), "/v1/chat/completions": ("POST", s.chat)}

    def _dispatch(self, method: str) -> None:
        started = False
        try:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            routes = self._routes()
            if path.startswith("/v1/models/") and method == "GET":
                mid = path[len("/v1/models/"):]
                if mid not in self.server.service.model_ids():
                    raise ApiError(404, f"model {mid!r} not found", param="model", code="model_not_found")
                self._json(200, {"id": mid, "object": "model", "created": self.server.service.created,
                                 "owned_by": "catalogtune"})
                return
            if path not in routes:
                raise ApiError(404, f"no such endpoint: {method} {path}", code="not_found")
            want, fn = routes[path]
            if method != want:
                raise ApiError(405, f"{path} takes {want}", code="method_not_allowed")
            result = fn(self._body() if method == "POST" else None)
            if isinstance(result, dict):
                self._json(200, result)
                return
            started = True
            self._stream(result)
        except ApiError as exc:
            self._json(exc.status, exc.payload())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never a traceback to the client
            traceback.print_exc(file=sys.stderr)
            if started:
                self.close_connection = True
            else:
                self._json(500, ApiError(500, "internal server error").payload())

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked", code="length_required")
        raw_len = self.headers.get("Content-Length")
        try:
            length = int(raw_len) if raw_len is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ApiError(411 if raw_len is None else 400, "a valid Content-Length header is required")
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise ApiError(413, f"request body over {MAX_BODY_BYTES // 1024} KB", code="too_large")
        raw = self.rfile.read(length)
        if len(raw) != length:
            self.close_connection = True
            raise ApiError(400, "request body shorter than its Content-Length")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        return body

    def _json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _stream(self, chunks: Iterator[dict]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for obj in chunks:
            self._chunk(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, text: str) -> None:
        data = text.encode("utf-8")
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, unknown method...) get JSON too."""
        self.close_connection = True
        self._json(code, ApiError(code, message or "bad request").payload())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class ApiServer(ThreadingHTTPServer):
    """A threading HTTP server holding the ``Service`` its handlers use."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: the default 5 resets bursts of 16 new connections

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> None:
        self.service, self.quiet = service, quiet
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


@contextlib.contextmanager
def serving(service: Service, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> Iterator[ApiServer]:
    """Run ``service`` in a background thread (tests, benchmarks); shut down on exit."""
    server = ApiServer(service, host, port, quiet=quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def pick_threads(requested: int | None = None) -> int:
    """torch's thread count for the worker: ``requested``, else ``generate.auto_threads`` (1 on a busy machine)."""
    import os

    import torch

    from catalogtune.infer.generate import auto_threads

    if requested is not None:
        return int(requested)
    return auto_threads(os.getloadavg()[0], torch.get_num_threads())


def build_service(cfg: ServeConfig) -> Service:
    """Load the generator (and index) the options name."""
    from catalogtune.infer.ask import open_index
    from catalogtune.infer.generate import Generator, base_model_of

    index = open_index(cfg.index) if cfg.index is not None else None
    if cfg.run is not None:
        gen = Generator.from_run(cfg.run, model=cfg.model)
        base = cfg.model or base_model_of(Path(cfg.run))
    else:
        gen = Generator.from_model(cfg.model)  # type: ignore[arg-type]
        base = str(cfg.model)
    name = cfg.name or Path(str(base).rstrip("/")).name
    return Service(gen, index, name=name, k=int(cfg.k), max_batch=int(cfg.max_batch),
                   batch_window_ms=float(cfg.batch_window_ms), max_tokens_cap=int(cfg.max_tokens_cap),
                   join=bool(cfg.join))


def run(cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    if cfg.host not in LOOPBACK:
        print(f"catalogtune serve: warning: binding {cfg.host}: the API has no authentication", file=sys.stderr)
    import torch

    torch.set_num_threads(pick_threads(cfg.threads))
    service = build_service(cfg)
    try:
        server = ApiServer(service, cfg.host, int(cfg.port))
    except OSError as exc:
        service.close()
        raise CatalogtuneError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
    print(f"serving {', '.join(service.model_ids())} on {server.url} ({torch.get_num_threads()} torch threads)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        service.close()


def main(argv: list[str]) -> int:
    """`catalogtune serve --run RUN [--index IDX] [--port 8000] [--host 127.0.0.1]`."""
    cfg = config.parse(ServeConfig, argv, "catalogtune serve", __doc__.splitlines()[0])
    run(cfg)
    return 0
