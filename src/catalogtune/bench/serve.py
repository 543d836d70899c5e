"""`catalogtune bench serve`: a loopback load test of `catalogtune serve` at 1, 4 and 16 concurrent clients.

Each level runs ``clients`` threads; each sends ``requests_per_client`` chat completions one after
another (the next when the last has answered) over HTTP to the real server: one started in this
process on a free loopback port, or ``--url`` of a running one (loopback only: this is a load
generator). Per level: requests/s (answers / wall time), p50/p95 latency, and from ``/health`` the
mean number of requests per generation batch. The anchor is the 1-client level, what one user at a
time gets; ``speedup`` is each level's requests/s over it (the server's batching is what lifts it).
In-process, the largest level then runs with joining off (``without_join``: a request waits for
the batch before it) and with it on again (``with_join_again``); ``join_speedup`` = the mean
requests/s of the two joining runs over the one without (alternated, so load drift shows).
Bounded: at most ``MAX_REQUESTS`` per level, and no request starts after ``--max-seconds``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from catalogtune.core import config
from catalogtune.core.util import CatalogtuneError, shared_sample

MAX_CLIENTS = 64
MAX_REQUESTS = 1024
"""Most requests one level may send (clients x requests_per_client)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeBenchConfig:
    """Options of `catalogtune bench serve`."""

    url: str | None = None
    """Base URL of a running server (http://127.0.0.1:PORT/v1); default: start one in this process."""
    run: Path | None = None
    """Training run to serve in-process (the fine-tuned model is requested)."""
    model: str = "smollm2-135m"
    """Base model to serve in-process when no --run is given."""
    clients: list[int] = field(default_factory=lambda: [1, 4, 16])
    """Concurrency levels (threads sending at once)."""
    requests_per_client: int = 4
    """Sequential requests each client sends per level."""
    max_tokens: int = 32
    """max_tokens of each request."""
    max_seconds: float = 120.0
    """Per level: no request starts after this many seconds."""
    batch_window_ms: float = 10.0
    """The in-process server's batching window."""
    max_batch: int = 16
    """The in-process server's largest batch."""
    compare_join: bool = True
    """In-process: run the largest level again with joining off (the anchor for joining a running batch)."""
    threads: int | None = None
    """The in-process server's torch threads (default: serve's choice, 1 on a busy machine)."""

    def __post_init__(self) -> None:
        self.clients = [int(c) for c in self.clients]
        if not self.clients or not all(1 <= c <= MAX_CLIENTS for c in self.clients):
            raise ValueError(f"clients must be 1 to {MAX_CLIENTS} each")
        if int(self.requests_per_client) < 1 or max(self.clients) * int(self.requests_per_client) > MAX_REQUESTS:
            raise ValueError(f"requests_per_client must be >= 1, with clients x requests <= {MAX_REQUESTS}")
        if not 1 <= int(self.max_tokens) <= 256 or not 0 < float(self.max_seconds) <= 600:
            raise ValueError("max_tokens must be 1 to 256 and max_seconds in (0, 600]")
        if self.url is not None:
            check_loopback(self.url)


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash, or a one-line error unless it is http on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise CatalogtuneError(f"bench serve only loads loopback servers (http://127.0.0.1:PORT/v1), not {url!r}")
    return url.rstrip("/")


def titles(n: int) -> list[str]:
    """``n`` real titles from the shared sample (invented ones where it is missing or short)."""
    out: list[str] = []
    path = shared_sample()
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    t = json.loads(line).get("title")
                except (ValueError, AttributeError):
                    continue
                if isinstance(t, str) and t.strip():
                    out.append(t)
                if len(out) >= n:
                    break
    words = "red blue cotton steel kids gift set book album toy game kitchen".split()
    while len(out) < n:
        i = len(out)
        out.append(f"{words[i % 12]} {words[(i * 5) % 12]} {words[(i * 7) % 12]} {i}")
    return out


def _call(url: str, body: dict | None = None, timeout: float = 120.0) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only, checked
        return json.loads(resp.read().decode("utf-8"))


def _health(base: str) -> dict | None:
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    try:
        return _call(root + "/health", timeout=10)
    except (urllib.error.URLError, OSError, ValueError):
        return None  # another OpenAI-compatible server: no batch counters


def _pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)) * 1000.0, 1) if values else None


def _level(base: str, model: str, clients: int, per_client: int, max_tokens: int, max_seconds: float,
           pool: list[str]) -> dict[str, Any]:
    """One concurrency level: latencies, errors and tokens of every request."""
    lat: list[float] = []
    errors: list[str] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)
    deadline = [0.0]

    def client(c: int) -> None:
        start.wait()
        for r in range(per_client):
            if time.monotonic() > deadline[0]:
                return
            body = {"model": model, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": pool[(c * per_client + r) % len(pool)]}]}
            t = time.perf_counter()
            try:
                resp = _call(base + "/chat/completions", body, timeout=max(60.0, max_seconds))
                took = time.perf_counter() - t
                with lock:
                    lat.append(took)
                    tokens[0] += int(resp.get("usage", {}).get("completion_tokens", 0))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                with lock:
                    errors.append(str(exc)[:200])

    before = _health(base)
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    deadline[0] = time.monotonic() + max_seconds
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    after = _health(base)
    fig: dict[str, Any] = {
        "clients": clients, "requests": len(lat), "errors": len(errors), "wall_s": round(wall, 3),
        "requests_per_s": round(len(lat) / wall, 2) if wall > 0 else None,
        "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
        "completion_tokens": tokens[0], "tokens_per_s": round(tokens[0] / wall, 1) if wall > 0 else None,
    }
    if before and after and after.get("batches", 0) > before.get("batches", 0):
        fig["mean_batch"] = round((after["requests"] - before["requests"]) / (after["batches"] - before["batches"]), 2)
        fig["joined_running_batch"] = int(after.get("joined", 0)) - int(before.get("joined", 0))
    if errors:
        fig["first_error"] = errors[0]
    return fig


def load_test(url: str, clients: Sequence[int] = (1, 4, 16), requests_per_client: int = 4,
              model: str | None = None, max_tokens: int = 32, max_seconds: float = 120.0) -> dict[str, Any]:
    """Load ``url`` (a loopback ``.../v1``) at each concurrency; returns the figures (also printed)."""
    base = check_loopback(url)
    if max(clients) * requests_per_client > MAX_REQUESTS:
        raise CatalogtuneError(f"at most {MAX_REQUESTS} requests per level")
    ids = [m["id"] for m in _call(base + "/models", timeout=30).get("data", [])]
    if model is None:
        model = next((m for m in ids if m.endswith("-finetuned")), ids[0] if ids else None)
    if not model:
        raise CatalogtuneError(f"{base}/models lists no model")
    pool = titles(max(clients) * requests_per_client)
    _call(base + "/chat/completions", {"model": model, "max_tokens": max_tokens,  # warm-up, not timed
                                       "messages": [{"role": "user", "content": pool[0]}]}, timeout=300)
    levels = []
    for c in clients:
        fig = _level(base, model, int(c), int(requests_per_client), int(max_tokens), float(max_seconds), pool)
        levels.append(fig)
        print(f"bench serve: {json.dumps(fig)}", file=sys.stderr, flush=True)
    anchor = next((lv["requests_per_s"] for lv in levels if lv["clients"] == 1), None) or levels[0]["requests_per_s"]
    for lv in levels:
        lv["speedup"] = round(lv["requests_per_s"] / anchor, 2) if anchor and lv["requests_per_s"] else None
    return {"bench": "serve", "url": base, "model": model, "max_tokens": int(max_tokens),
            "requests_per_client": int(requests_per_client), "levels": levels,
            "anchor": "the 1-client level (one request at a time); speedup = requests/s over it"}


def run(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Load test ``cfg.url``, or a server started here for ``cfg.run`` / ``cfg.model``."""
    kw = dict(clients=cfg.clients, requests_per_client=int(cfg.requests_per_client),
              max_tokens=int(cfg.max_tokens), max_seconds=float(cfg.max_seconds))
    if cfg.url is not None:
        return load_test(cfg.url, **kw)
    import os

    import torch

    from catalogtune.infer import serve

    scfg = config.build(serve.ServeConfig, run=cfg.run, model=None if cfg.run else cfg.model, port=0,
                        max_batch=int(cfg.max_batch), batch_window_ms=float(cfg.batch_window_ms))
    old_threads, load = torch.get_num_threads(), os.getloadavg()[0]
    torch.set_num_threads(serve.pick_threads(cfg.threads))
    try:  # the thread count is process-wide: give it back (tests call this in-process)
        service = serve.build_service(scfg)
        try:
            with serve.serving(service) as srv:
                figures = load_test(srv.url, **kw)
                if cfg.compare_join and service.batcher.join:
                    # the same loaded model, requests not joining (each waits for the batch before it),
                    # then joining again: alternated, so a change of load shows as a gap between the two
                    top = max(cfg.clients)
                    service.batcher.join = False
                    grouped = load_test(srv.url, **{**kw, "clients": [top]})["levels"][0]
                    service.batcher.join = True
                    again = load_test(srv.url, **{**kw, "clients": [top]})["levels"][0]
                    joined = next(lv for lv in figures["levels"] if lv["clients"] == top)
                    figures["without_join"], figures["with_join_again"] = grouped, again
                    rates = [lv["requests_per_s"] for lv in (joined, again)]
                    figures["join_speedup"] = round(sum(rates) / 2 / grouped["requests_per_s"], 2) \
                        if all(rates) and grouped["requests_per_s"] else None
        finally:
            service.close()
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    figures.update(server={"in_process": True, "max_batch": int(cfg.max_batch), "threads": threads,
                           "batch_window_ms": float(cfg.batch_window_ms), "bf16": bool(getattr(service.gen, "bf16", False)),
                           "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()})
    return figures


def main(argv: list[str]) -> int:
    """`catalogtune bench serve [--url URL | --run RUN | --model NAME] [--clients 1,4,16] [--requests-per-client 4]`."""
    from catalogtune.bench import emit

    cfg = config.parse(ServeBenchConfig, argv, "catalogtune bench serve", __doc__.splitlines()[0])
    emit(run(cfg))
    return 0
