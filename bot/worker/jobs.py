"""What the host hands the worker (a job) and what it gets back (a stream of text and stats).

A GenerationStream lives on the asyncio loop; the worker's threads feed it only through
``loop.call_soon_threadsafe``, so frontends never touch a lock or a torch tensor.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

_job_ids = itertools.count(1)


class GenerationFailed(Exception):
    """A job that ended with an error; str() is the message for the user."""


class WorkerBusy(GenerationFailed):
    """Refused at submission: too many jobs waiting (for this user or in total)."""


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
    id: int = field(default_factory=lambda: next(_job_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)

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
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    # -- called from worker threads -------------------------------------------------------------
    def emit(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def report_position(self, position: int) -> None:
        self._loop.call_soon_threadsafe(self._set_position, position)

    def report_progress(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def finish(self, stats: GenerationStats | None = None, error: str | None = None) -> None:
        if error is not None:
            self.emit(GenerationFailed(error))
        elif stats is not None:
            self.emit(stats)
        self.emit(self._DONE)

    # -- loop side ------------------------------------------------------------------------------
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
        while True:
            item = await self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, GenerationStats):
                self.stats = item
                continue
            if isinstance(item, BaseException):
                raise item
            yield item
