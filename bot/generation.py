"""What the host hands an engine (a job) and what it gets back (a stream of text and stats).

Every engine (the in-process worker, a remote server's client) speaks in these types.
A GenerationStream lives on the asyncio loop; an engine's threads feed it only through
``loop.call_soon_threadsafe``, so frontends never touch a lock or a torch tensor.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from bot.errors import UserFacingError
from bot.handoff import hand_off

_job_ids = itertools.count(1)


class GenerationFailed(UserFacingError):
    """A job that ended with an error; str() is the message for the user."""


class WorkerBusy(GenerationFailed):
    """Refused at submission: too many jobs waiting (for this user or in total)."""


class OutOfMemory(GenerationFailed):
    """The device ran out of memory for this job or model."""


class GenerationTimedOut(GenerationFailed):
    """No new token for too long (an overloaded device, an unresponsive server)."""


class InvalidScores(GenerationFailed):
    """The model produced NaN or infinite scores."""


class EngineUnavailable(GenerationFailed):
    """A remote engine could not be reached or refused the request."""


class AnswerCut(GenerationFailed):
    """The answer stopped midway (a server went away after the first token): the text so
    far stands, this message follows it."""


@dataclass
class GenerationStats:
    model: str
    prompt_tokens: int
    new_tokens: int = 0
    queue_seconds: float = 0.0  # submission -> generation started (includes a model load)
    first_token_seconds: float | None = None  # generation started -> first new token
    generation_seconds: float = 0.0  # generation started -> last token
    stopped_by: str = "eos"  # eos | length | cancelled
    footprint_bytes: int = 0
    batched: bool = False  # ran (at least partly) through continuous batching

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    @property
    def time_to_first_token(self) -> float | None:
        """What a user waits for: from submission to the first token."""
        if self.first_token_seconds is None:
            return None
        return self.queue_seconds + self.first_token_seconds


@dataclass
class GenerationJob:
    model: str
    input_ids: list[int]
    stop_token_ids: list[int]  # empty: ignore EOS (benchmarks)
    settings: dict[str, Any]
    user: str = ""
    channel: str = ""
    #: the same conversation as messages after the family's rules, for engines that send
    #: messages (a chat API) instead of token ids
    messages: list[dict] | None = None
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: part of a command that already holds a place in its user's cap (/compare: FairQueue.reserve)
    reserved: bool = False

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one continuous batch (max_new_tokens is per request)."""
        return (self.model, tuple(sorted((k, repr(v)) for k, v in self.settings.items() if k != "max_new_tokens")))


class GenerationStream:
    """Async iterator of text deltas; `stats` is set once iteration ends normally.

    ``position`` is the job's place in the queue (1 = next), 0 once it is generating;
    ``on_position`` (called on the loop) lets a frontend show "queued: 3rd".
    """

    _DONE = object()

    def __init__(self, job: GenerationJob, progress: Callable[[str], None] | None = None,
                 on_position: Callable[[int], None] | None = None):
        self.job = job
        self.stats: GenerationStats | None = None
        self.position: int | None = None
        self.positions: list[int] = []  # every position reported, in order (observability, tests)
        self.progress = progress  # called from worker threads; must be thread-safe
        self.on_position = on_position
        self.submitted = 0.0
        self.wake: Callable[[], None] = lambda: None  # set by the worker: a cancel must wake it
        self._items: deque[Any] = deque()  # text deltas, then stats or an error, then _DONE
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    # -- called from worker threads -------------------------------------------------------------
    def emit(self, item: Any) -> None:
        hand_off(self._loop, self._put, item)

    def report_position(self, position: int) -> None:
        hand_off(self._loop, self._set_position, position)

    def report_progress(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def finish(self, stats: GenerationStats | None = None, error: str | GenerationFailed | None = None) -> None:
        if error is not None:
            self.emit(error if isinstance(error, GenerationFailed) else GenerationFailed(error))
        elif stats is not None:
            self.emit(stats)
        self.emit(self._DONE)

    def end_unstarted(self, error: str | GenerationFailed | None = None) -> None:
        """End a job that never started (cancelled while queued, its model or server failed,
        shutdown): with `error`, else as cancelled after its time in the queue."""
        if error is not None:
            self.finish(error=error)
            return
        self.finish(GenerationStats(model=self.job.model, prompt_tokens=len(self.job.input_ids),
                                    stopped_by="cancelled", queue_seconds=time.monotonic() - self.submitted))

    # -- loop side ------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        self._items.append(item)
        self._arrived.set()

    def _set_position(self, position: int) -> None:
        if position == self.position:
            return
        self.position = position
        self.positions.append(position)
        if self.on_position is not None:
            self.on_position(position)

    def cancel(self) -> None:
        self.job.cancelled.set()
        self.wake()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        items = self._items
        while True:
            while not items:
                self._arrived.clear()
                await self._arrived.wait()
            item = items.popleft()
            if item is self._DONE:
                return
            if isinstance(item, GenerationStats):
                self.stats = item
                continue
            if isinstance(item, BaseException):
                raise item
            if items and isinstance(items[0], str):
                # the reader fell behind the engine: what arrived meanwhile goes on as one delta
                parts = [item]
                while items and isinstance(items[0], str):
                    parts.append(items.popleft())
                item = "".join(parts)
            yield item


def open_stream(job: GenerationJob, max_new_tokens: int, progress: Callable[[str], None] | None = None,
                on_position: Callable[[int], None] | None = None) -> GenerationStream:
    """A submitted job's stream, its reply capped at the engine's `max_new_tokens`: what every
    engine's submit starts with."""
    job.settings = dict(job.settings, max_new_tokens=min(job.settings.get("max_new_tokens", max_new_tokens),
                                                         max_new_tokens))
    stream = GenerationStream(job, progress, on_position)
    stream.submitted = time.monotonic()
    return stream

class RecentAnswers:
    """The last answers' stats, for /stats: how many in the last ten minutes, their speed and
    time to first token. Appended from any thread (deque appends are atomic)."""

    WINDOW_SECONDS = 600

    def __init__(self, keep: int = 200):
        self._entries: deque[tuple[float, GenerationStats]] = deque(maxlen=keep)

    def add(self, stats: GenerationStats) -> None:
        self._entries.append((time.time(), stats))

    def summary(self) -> dict[str, Any]:
        now = time.time()
        recent = [stats for at, stats in list(self._entries) if now - at < self.WINDOW_SECONDS]
        speeds = [s.tokens_per_second for s in recent if s.new_tokens > 1]
        first = sorted(s.time_to_first_token for s in recent if s.time_to_first_token is not None)
        return {
            "recent_jobs": len(recent),
            "recent_tokens_per_second": statistics.fmean(speeds) if speeds else None,
            "recent_first_token_p50": _percentile(first, 0.5),
            "recent_first_token_p95": _percentile(first, 0.95),
        }


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]
