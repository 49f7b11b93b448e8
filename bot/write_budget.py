"""Write budgets: how many messages a bot may post or edit on a platform, and in what order.

Chat platforms limit writes per channel or per workspace (Discord: 5 message writes per 5 s
in a channel; Slack: chat.update about 50 a minute in a workspace). Every growing answer
writes through the same budget, so that sixty answers at once stay inside the limit instead
of running into 429s. When writes have to wait, they go out by priority: final edits first
(an answer is never left unfinished), then first posts (every question is acknowledged),
then the edits of answers still growing; equal priorities in arrival order.

A slot counts from the moment it is granted until its request has been answered, and then
for `period` seconds after the answer: the platform saw the request somewhere in between,
so no `period`-long window on its clock can hold more than `limit` of them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar

FINAL, FIRST_POST, UPDATE = 0, 1, 2  # priorities: lower goes first

#: Told (reason, seconds) when a write waited: "budget" (a window here held it back) or
#: "platform" (bot/streaming.py: the platform said to retry after a while). The intake sets
#: it for each answer (the metrics listen), so no platform module needs to know about metrics;
#: tasks an answer starts inherit it.
write_waits: ContextVar[Callable[[str, float], None] | None] = ContextVar("write_waits", default=None)


def report_wait(reason: str, seconds: float) -> None:
    observer = write_waits.get()
    if observer is not None:
        observer(reason, seconds)


class WriteWindow:
    """At most `limit` writes in any `period` seconds."""

    def __init__(self, limit: int, period: float, name: str = ""):
        if limit < 1 or period <= 0:
            raise ValueError("a write window needs limit >= 1 and period > 0")
        self.limit, self.period, self.name = limit, period, name
        self._done: deque[float] = deque()  # when granted writes were answered, oldest first
        self._in_flight = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0  # total, for /stats and tests

    @asynccontextmanager
    async def slot(self, priority: int = UPDATE) -> AsyncIterator[bool]:
        """Yields whether the write had to wait for room."""
        waited = await self._acquire(priority)
        try:
            yield waited
        finally:
            self._release()

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._waiting)

    def idle(self) -> bool:
        """Nothing waiting, nothing in flight, and no write recent enough to count."""
        recent = self._done and self._done[-1] > time.monotonic() - self.period
        return not (self.waiting or self._in_flight or recent)

    async def _acquire(self, priority: int) -> bool:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), future))
        self._grant()
        waits = not future.done()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as the waiter gave up: the slot was not used
            raise
        return waits

    def _release(self) -> None:
        self._in_flight -= 1
        self._done.append(time.monotonic())
        self._grant()

    def _grant(self) -> None:
        now = time.monotonic()
        while self._done and self._done[0] <= now - self.period:
            self._done.popleft()
        while self._waiting and self._in_flight + len(self._done) < self.limit:
            _, _, future = heapq.heappop(self._waiting)
            if future.done():
                continue  # its waiter was cancelled
            self._in_flight += 1
            self.granted += 1
            future.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.waiting and self._done:  # full: look again when the oldest write leaves the window
            delay = self._done[0] + self.period - now
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._grant)


class WriteBudget:
    """Several windows a write must fit at once (e.g. a channel's and the whole bot's)."""

    def __init__(self, windows: Sequence[WriteWindow] = ()):
        self.windows = tuple(windows)

    @asynccontextmanager
    async def slot(self, priority: int = UPDATE) -> AsyncIterator[None]:
        asked = time.monotonic()
        async with _nested(self.windows, priority) as waited:
            if waited:  # once per write, however many of its windows were full
                report_wait("budget", time.monotonic() - asked)
            yield


UNLIMITED = WriteBudget()


@asynccontextmanager
async def _nested(windows: Sequence[WriteWindow], priority: int) -> AsyncIterator[bool]:
    """A slot in every window; yields whether any of them made the write wait."""
    if not windows:
        yield False
        return
    async with windows[0].slot(priority) as first, _nested(windows[1:], priority) as rest:
        yield first or rest


class KeyedWindows:
    """One window per key (a channel), created on first use, with the same limits."""

    def __init__(self, limit: int, period: float, name: str = ""):
        self.limit, self.period, self.name = limit, period, name
        self._windows: dict[str, WriteWindow] = {}

    def __call__(self, key: str) -> WriteWindow:
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) > 10_000:  # a bot in many channels: forget the idle ones
                self._windows = {k: w for k, w in self._windows.items() if not w.idle()}
            window = self._windows[key] = WriteWindow(self.limit, self.period, f"{self.name} {key}".strip())
        return window
