"""The generation worker of `catalogtune serve`: one thread owns the model and answers queued jobs.

Jobs that arrive within a short window are retrieved for in one index query. Greedy jobs (the
default decoding) on a model whose cache rows can be joined run as one continuous batch that
later jobs with the same rules join between two decode steps (``Generator.generate_live``); each
job is answered the step its row ends. Jobs with other rules wait in ``deferred``; the running
batch stops admitting once the oldest of them has waited ``max_defer_s``. Sampling jobs are
grouped by settings, one ``Generator.generate`` call per group.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

from catalogtune.core.decoding import DECODING
from catalogtune.core.util import CatalogtuneError

MAX_QUEUE = 256
"""Jobs waiting at most (a full queue answers 503)."""
WAIT_S = 600.0
"""A job not answered within this many seconds gets a 504."""


class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Settings:
    """The ``Generator.generate`` settings of a request (requests with equal ones share a call)."""

    use_adapter: bool
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    repetition_penalty: float = DECODING.repetition_penalty
    no_repeat_ngram_size: int = DECODING.no_repeat_ngram_size
    seed: int = 0
    guidance: float = DECODING.guidance


@dataclass
class Job:
    """One title waiting for its answer."""

    title: str
    rag: bool
    decoding: Settings
    records: list[dict] = field(default_factory=list)
    result: Any = None
    error: ApiError | None = None
    done: threading.Event = field(default_factory=threading.Event)
    stream: queue.Queue | None = None
    """For a streamed answer: text pieces as they are generated (live batches only), then None."""

    def finish(self) -> None:
        """Mark the job answered (result or error set) and close its stream."""
        if self.done.is_set():
            return
        self.done.set()
        if self.stream is not None:
            self.stream.put(None)


class Batcher:
    """The generation worker: collects jobs for a short window, generates them in groups.

    Greedy requests (the default decoding) on a model whose cache rows can be joined
    (``Generator.can_join``) run in one continuous batch: requests with the same decoding rules
    that arrive while it runs join it between two decode steps (``Generator.generate_live``),
    and each answer is sent the step it ends. Requests with other rules wait in ``deferred``; the
    running batch stops admitting once the oldest of them has waited ``max_defer_s``, drains,
    and they go next. Sampling requests keep one ``Generator.generate`` call per group.
    """

    def __init__(self, generator: Any, index: Any = None, k: int = 5, max_batch: int = 16,
                 window_s: float = 0.01, max_defer_s: float = 2.0, join: bool = True) -> None:
        self.gen, self.index, self.k, self.join = generator, index, k, join
        self.max_batch, self.window_s, self.max_defer_s = max_batch, window_s, max_defer_s
        self.queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUE)
        self.deferred: list[tuple[float, Job]] = []  # (queued at, job): other rules than the running batch
        self.stats = {"requests": 0, "batches": 0, "generate_calls": 0, "largest_batch": 0, "joined": 0}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="catalogtune-generate", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (503 when the queue is full) and wait for all of them."""
        self.enqueue(jobs)
        for job in jobs:
            self.wait(job)

    def enqueue(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` without waiting (503 when the queue is full)."""
        for job in jobs:
            try:
                self.queue.put_nowait(job)
            except queue.Full:
                raise ApiError(503, "server busy: too many queued requests, retry later", code="busy") from None

    @staticmethod
    def wait(job: Job) -> None:
        """Wait for ``job``'s answer (504 after ``WAIT_S``); its error is raised."""
        if not job.done.wait(WAIT_S):
            raise ApiError(504, "generation timed out", code="timeout")
        if job.error is not None:
            raise job.error

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self.queue.put(None)
        self._thread.join(timeout=30)

    def _take(self, timeout: float | None) -> Job | None:
        """The next job: a deferred one first, then the queue (None: nothing within ``timeout``, or stop)."""
        if self.deferred:
            return self.deferred.pop(0)[1]
        return None if self._stop else self._take_queued(timeout)

    def _loop(self) -> None:
        while True:
            first = self._take(None) if not self._stop else self._take(0)
            if first is None:
                if self._stop:
                    return
                continue
            jobs = [first]
            deadline = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:  # requests that queued while the last batch ran are taken at once
                job = self._take(max(0.0, deadline - time.monotonic()))
                if job is None:
                    break
                jobs.append(job)
            self._run(jobs)

    def _live_key(self, dec: Settings) -> Settings | None:
        """The rules a continuous batch shares (token limits may differ), or None for the grouped path."""
        can = getattr(self.gen, "can_join", None)
        if not self.join or dec.do_sample or can is None or not can():
            return None
        return replace(dec, max_new_tokens=0, seed=0, temperature=0.0, top_p=1.0)

    def _prompt(self, job: Job) -> str:
        return self.gen.prompt(job.title, context=job.records if job.rag else None)

    def _retrieve(self, jobs: list[Job]) -> None:
        if self.index is not None and jobs:
            for job, recs in zip(jobs, self.index.query([j.title for j in jobs], self.k)):
                job.records = list(recs)

    def _count(self, jobs: list[Job]) -> None:
        with self._lock:
            self.stats["requests"] += len(jobs)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))

    def _run(self, jobs: list[Job]) -> None:
        self._count(jobs)
        try:
            self._retrieve(jobs)
            groups: dict[Settings, list[Job]] = {}
            live: dict[Settings, list[Job]] = {}
            for job in jobs:
                key = self._live_key(job.decoding)
                (live.setdefault(key, []) if key is not None else groups.setdefault(job.decoding, [])).append(job)
            for dec, group in groups.items():
                self._generate(dec, group)
            for key, group in live.items():
                self._generate_live(key, group)
        except Exception:  # noqa: BLE001 - the worker must survive; the client gets a 500
            traceback.print_exc(file=sys.stderr)
            for job in jobs:
                if job.result is None and job.error is None:
                    job.error = ApiError(500, "internal error while retrieving references")
        finally:
            for job in jobs:
                job.finish()

    def _generate(self, dec: Settings, group: list[Job]) -> None:
        try:
            prompts = [self._prompt(j) for j in group]
            kw = {k: v for k, v in vars(dec).items()}
            outs = self.gen.generate(prompts, batch_size=len(prompts), **kw)
            for job, out in zip(group, outs):
                job.result = out
        except CatalogtuneError as exc:
            for job in group:
                job.error = ApiError(400, str(exc))
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            for job in group:
                job.error = ApiError(500, "internal error while generating")
        with self._lock:
            self.stats["generate_calls"] += 1

    def _generate_live(self, key: Settings, group: list[Job]) -> None:
        """One continuous batch: ``group`` first, then queued jobs with the same rules as slots free up."""
        start = list(group)
        running: list[Job] = []

        def admit(free: int) -> list[tuple[Job, str, int]]:
            fresh = start[:free]
            del start[: len(fresh)]
            joined: list[Job] = []
            while len(fresh) + len(joined) < free and not self._stop:
                if self.deferred and time.monotonic() - self.deferred[0][0] > self.max_defer_s:
                    break  # others have waited long enough: let this batch drain
                job = self._take_queued()
                if job is None:
                    break
                if self._live_key(job.decoding) == key:
                    joined.append(job)
                else:
                    self.deferred.append((time.monotonic(), job))
            running.extend(fresh + joined)  # before retrieval: a failure there must still answer them
            if joined:
                with self._lock:
                    self.stats["requests"] += len(joined)
                    self.stats["joined"] += len(joined)
                self._retrieve(joined)
            return [(j, self._prompt(j), j.decoding.max_new_tokens) for j in fresh + joined]

        def finished(job: Job, out: Any) -> None:
            job.result = out
            job.finish()

        def piece(job: Job, text: str) -> None:
            if job.stream is not None:
                job.stream.put(text)

        try:
            self.gen.generate_live(admit, finished, batch_size=self.max_batch, use_adapter=key.use_adapter,
                                   repetition_penalty=key.repetition_penalty,
                                   no_repeat_ngram_size=key.no_repeat_ngram_size, on_text=piece,
                                   guidance=key.guidance)
        except Exception as exc:  # noqa: BLE001 - the worker must survive
            if not isinstance(exc, CatalogtuneError):
                traceback.print_exc(file=sys.stderr)
            err = ApiError(400, str(exc)) if isinstance(exc, CatalogtuneError) else \
                ApiError(500, "internal error while generating")
            for job in running + start:
                if job.result is None:
                    job.error = err
                    job.finish()
        with self._lock:
            self.stats["generate_calls"] += 1

    def _take_queued(self, timeout: float | None = 0.0) -> Job | None:
        """A job from the queue within ``timeout`` (None: wait; <= 0: not at all); None when there is
        none, or for the stop mark, which is remembered."""
        try:
            job = self.queue.get(timeout=timeout) if timeout is None or timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        if job is None:
            self._stop = True
        return job
