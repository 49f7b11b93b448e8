"""The fair queue: waiting jobs, served round-robin between users, with caps.

One user sending ten prompts must not make everybody else wait behind all ten: the queue
keeps a line per user and serves next the user with the fewest jobs generating right now,
taking users in turn among equals (A1 B1 C1 A2 B2 A3 ...). A job's position is its place
in that order, recomputed on every change and pushed to the job's stream so a frontend can
show "queued: 3rd".

A command that runs models one after another (/compare, /layers) holds a reservation while
it runs: it counts as one request of its user, and its own jobs (`job.reserved`) take no
further share of the cap.

Thread-safe: the event loop pushes, the worker thread takes.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from typing import Callable

from bot.generation import GenerationStream, WorkerBusy


class FairQueue:
    def __init__(self, max_pending: int, max_pending_per_user: int):
        self.max_pending = max_pending
        self.max_pending_per_user = max_pending_per_user
        self._lines: OrderedDict[str, deque[GenerationStream]] = OrderedDict()  # rotation order = key order
        self._generating: Counter[str] = Counter()  # jobs per user the worker is running now
        self._reserved: Counter[str] = Counter()  # commands in progress per user (reserve())
        self._covered: Counter[str] = Counter()  # their jobs, waiting or running: counted by the reservation
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(line) for line in self._lines.values())

    def push(self, stream: GenerationStream) -> None:
        """Queue a job, or raise WorkerBusy with a message for the user."""
        user = stream.job.user
        with self._lock:
            if stream.job.reserved and self._covered[user] >= self._reserved[user]:
                stream.job.reserved = False  # no reservation of its user holds a place for it here
            if not stream.job.reserved:
                self._check_user_cap(user)
            if sum(len(line) for line in self._lines.values()) >= self.max_pending:
                raise WorkerBusy(f"the bot is busy ({self.max_pending} requests waiting); try again in a minute")
            if stream.job.reserved:
                self._covered[user] += 1
            self._lines.setdefault(user, deque()).append(stream)
            self._report_positions()

    def reserve(self, user: str) -> None:
        """Count a command in progress (/compare, /layers) as one request of `user`, or raise
        WorkerBusy as push() would; release() ends it."""
        with self._lock:
            self._check_user_cap(user)
            self._reserved[user] += 1

    def release(self, user: str) -> None:
        with self._lock:
            _decrement(self._reserved, user)

    def take(self, accept: Callable[[GenerationStream], bool] = lambda s: True) -> GenerationStream | None:
        """The next job in fair order that `accept` allows; its user goes to the back of the turn."""
        with self._lock:
            candidates = [user for user, line in self._lines.items() if accept(line[0])]
            if not candidates:
                return None
            user = min(candidates, key=lambda u: self._generating[u])  # min() keeps rotation order among equals
            line = self._lines.pop(user)
            stream = line.popleft()
            if line:
                self._lines[user] = line  # served: to the back of the rotation
            self._generating[user] += 1
            self._report_positions()
            return stream

    def job_ended(self, user: str, reserved: bool = False) -> None:
        """A job taken from here stopped generating (the worker calls this, with its job's `reserved`)."""
        with self._lock:
            _decrement(self._generating, user)
            if reserved:
                _decrement(self._covered, user)

    def peek(self) -> GenerationStream | None:
        """The job that would be served next."""
        with self._lock:
            order = self._order()
            return order[0] if order else None

    def has(self, accept: Callable[[GenerationStream], bool]) -> bool:
        with self._lock:
            return any(accept(stream) for line in self._lines.values() for stream in line)

    def remove_cancelled(self) -> list[GenerationStream]:
        """Drop jobs cancelled while waiting; returns them so they can be ended."""
        dropped = []
        with self._lock:
            for user in list(self._lines):
                line = self._lines[user]
                kept = deque(s for s in line if not s.job.cancelled.is_set())
                dropped += [s for s in line if s.job.cancelled.is_set()]
                for stream in line:
                    if stream.job.cancelled.is_set() and stream.job.reserved:
                        _decrement(self._covered, user)
                if kept:
                    self._lines[user] = kept
                else:
                    del self._lines[user]
            if dropped:
                self._report_positions()
        return dropped

    def waiting(self, accept: Callable[[GenerationStream], bool] = lambda s: True) -> list[GenerationStream]:
        with self._lock:
            return [s for s in self._order() if accept(s)]

    def drain(self) -> list[GenerationStream]:
        with self._lock:
            streams = self._order()
            self._lines.clear()
            for stream in streams:
                if stream.job.reserved:
                    _decrement(self._covered, stream.job.user)
            return streams

    def pending_for_user(self, user: str) -> int:
        with self._lock:
            return len(self._lines.get(user, ()))

    # -- under the lock ---------------------------------------------------------------------
    def _check_user_cap(self, user: str) -> None:
        in_progress = (len(self._lines.get(user, ())) + self._generating[user]
                       + self._reserved[user] - self._covered[user])
        if in_progress >= self.max_pending_per_user:
            raise WorkerBusy(
                f"you already have {in_progress} requests in progress "
                f"(at most {self.max_pending_per_user}); try again when one has finished"
            )

    def _order(self) -> list[GenerationStream]:
        """The order jobs will be served in, simulating take() on the current lines."""
        lines = OrderedDict((user, deque(line)) for user, line in self._lines.items())
        generating = Counter(self._generating)
        order = []
        while lines:
            user = min(lines, key=lambda u: generating[u])
            line = lines.pop(user)
            order.append(line.popleft())
            if line:
                lines[user] = line
            generating[user] += 1
        return order

    def _report_positions(self) -> None:
        for position, stream in enumerate(self._order(), start=1):
            stream.report_position(position)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
