"""A streamed reply on a chat platform: one message that grows by edits, continued in new
messages past the platform's length limit, ending with a footer or an error.

The host only changes what the reply should show (text, a status line, the end); one writer
task per reply makes the platform show it. The writer
- keeps the pace: non-final writes at most once per `interval` (statuses such as the queue
  position included), and it always shows the latest state when its turn comes, so a reply
  waiting for the platform's budget skips the states in between;
- keeps within the platform's limits: every write takes a slot of a shared WriteBudget
  (bot/write_budget.py), final edits first;
- never loses the end: a write the platform refuses for now (429, 5xx, network) is retried
  with backoff until it goes through (bounded by RetryPolicy.give_up_after); a reply deleted
  under it ends quietly (ReplyGone).
Text that no longer fits a message is sealed there and continues in the next one; a sealed
part is never edited again, so nothing is posted twice and nothing is lost.

A frontend supplies `post(text, previous) -> message` and `edit(message, text)`, and
optionally `seal(message, text)` for platforms where a message must be closed (Slack's
chat streaming). They raise TransientWriteError, MessageTooLong or ReplyGone for what the
platform said; anything else is a permanent failure of the reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.reply import ReplyGone
from bot.write_budget import FINAL, FIRST_POST, UNLIMITED, UPDATE, WriteBudget, report_wait, write_waits

log = logging.getLogger(__name__)

PLACEHOLDER = "…"
MIN_LIMIT = 100  # MessageTooLong halves the limit down to this
T = TypeVar("T")


class TransientWriteError(Exception):
    """The platform may accept this write later: rate limited, a server error, a network error."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MessageTooLong(Exception):
    """The platform refused the text as too long for one message (Slack's msg_too_long)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures: first_delay, doubling up to max_delay; after failing
    for give_up_after seconds in a row the write is abandoned (and logged)."""

    first_delay: float = 0.5
    max_delay: float = 15.0
    give_up_after: float = 600.0


class _Backoff:
    def __init__(self, policy: RetryPolicy, what: str):
        self.policy, self.what = policy, what
        self._since: float | None = None
        self._delay = policy.first_delay

    def succeeded(self) -> None:
        self._since, self._delay = None, self.policy.first_delay

    async def wait(self, exc: TransientWriteError) -> bool:
        """Sleep before the next try; False when it is time to give up."""
        now = time.monotonic()
        self._since = self._since or now
        if now - self._since > self.policy.give_up_after:
            log.error("%s: giving up after %.0f s of failures (last: %s)", self.what, now - self._since, exc)
            return False
        delay = exc.retry_after if exc.retry_after is not None else self._delay
        self._delay = min(self._delay * 2, self.policy.max_delay)
        log.warning("%s failed (%s); trying again in %.1f s", self.what, exc, delay)
        await asyncio.sleep(delay)
        if exc.retry_after:  # the platform said how long to wait (a 429): a rate-limit wait
            report_wait("platform", delay)
        return True


async def deliver(call: Callable[[], Awaitable[T]], *, budget: WriteBudget = UNLIMITED, priority: int = FINAL,
                  retry: RetryPolicy = RetryPolicy(), what: str = "write") -> T:
    """One write outside a streamed reply (a file, a notice), within the budget, retried while
    the platform fails transiently. Raises the last TransientWriteError when giving up."""
    backoff = _Backoff(retry, what)
    while True:
        try:
            async with budget.slot(priority):
                return await call()
        except TransientWriteError as exc:
            if not await backoff.wait(exc):
                raise


def split_point(text: str, limit: int) -> int:
    """Where to cut `text` so the first part fits `limit`: at a line break, else a space."""
    if len(text) <= limit:
        return len(text)
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, limit // 2, limit)
        if cut > 0:
            return cut + len(separator)
    return limit


@dataclass(frozen=True)
class _Step:
    kind: str  # post | edit | seal
    index: int  # which message of the reply
    text: str
    final: bool  # what this message will show for good


class StreamedMessage:
    def __init__(self, post: Callable[[str, Any], Awaitable[Any]], edit: Callable[[Any, str], Awaitable[Any]],
                 limit: int, interval: float, *, seal: Callable[[Any, str], Awaitable[Any]] | None = None,
                 post_budget: WriteBudget = UNLIMITED, edit_budget: WriteBudget = UNLIMITED,
                 seal_budget: WriteBudget | None = None, retry: RetryPolicy = RetryPolicy(), footer_format: Callable[[str], str] = lambda f: f"\n-# {f}",
                 name: str = "reply"):
        """edit and seal may return a message that replaces the edited one (a frontend that had
        to post it anew, e.g. after an interaction token expired), or None."""
        self._post, self._edit, self._seal = post, edit, seal
        self.limit = limit
        self.interval = interval
        self._post_budget, self._edit_budget = post_budget, edit_budget
        self._seal_budget = seal_budget or edit_budget
        self._retry = retry
        self._footer_format = footer_format
        self.name = name
        self.messages: list[Any] = []  # every message of this reply, in order
        self._shown: list[str] = []  # what each message shows now
        self._closed: list[bool] = []  # sealed on the platform (always true without `seal`)
        self._sealed = 0  # messages before this index are final
        self._pieces: list[str] = []  # the whole reply so far, as written: joined only when shown
        self._status = ""  # placeholder / queue position / progress, shown until text arrives
        self._tail = ""  # footer or error, once ended
        self._last_write = -float("inf")
        self._changed = asyncio.Event()
        self._ended_event = asyncio.Event()
        self._first_done = asyncio.Event()  # the first message is posted, or never will be
        self._writer: asyncio.Task | None = None
        self._write_waits = write_waits.get()  # the answer's; a writer task may start from another context
        self.started = False
        self.gone = False  # deleted on the platform
        self.broken = False  # can no longer be written (deleted, refused, or given up)

    # -- what the host calls (through the frontend's ReplyStream) ---------------------------------
    async def start(self, status: str = PLACEHOLDER) -> None:
        """Post the placeholder as soon as the budget allows (without waiting for it), so the
        user sees an answer coming."""
        self._status = status
        self._touch()

    async def status(self, text: str) -> None:
        """Replace the placeholder's text (queue position, loading...) while no reply text exists."""
        if self._pieces or self.ended:
            return
        self._status = text
        self._touch()

    async def write(self, delta: str) -> None:
        if self.broken:
            raise ReplyGone(f"{self.name} can no longer be written")
        if self.ended or not delta:
            return
        self._pieces.append(delta)
        self._touch()

    async def finish(self, footer: str = "") -> None:
        await self._end(self._footer_format(footer) if footer else "")

    async def fail(self, message: str) -> None:
        await self._end(("\n\n" if self._pieces else "") + f"⚠️ {message}")

    async def posted(self) -> bool:
        """Wait until the first message is on the platform (True) or never will be (False)."""
        await self._first_done.wait()
        return bool(self.messages)

    def abandon(self) -> None:
        """Stop writing now (the bot is going away and cannot wait any longer)."""
        self._break()
        if self._writer is not None:
            self._writer.cancel()

    def _break(self) -> None:
        self.broken = True
        self._first_done.set()

    @property
    def text(self) -> str:
        return self._joined()

    def _joined(self) -> str:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    @property
    def ended(self) -> bool:
        return self._ended_event.is_set()

    @property
    def delivered(self) -> bool:
        """Ended, and the platform shows all of it."""
        return self.ended and self._writer is not None and self._writer.done() and not self.broken

    # -- the writer -------------------------------------------------------------------------------
    def _touch(self) -> None:
        self.started = True
        self._changed.set()
        if not self.broken and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write_until_shown())

    async def _end(self, tail: str) -> None:
        if not self.ended:
            self._tail = tail
            self._ended_event.set()
        self._touch()
        writer = self._writer
        if writer is not None:
            # shielded: a cancelled caller (shutdown) does not cut the final write in half;
            # whoever ends the reply again waits for the same writer
            try:
                await asyncio.shield(writer)
            except asyncio.CancelledError:
                if not writer.cancelled() or asyncio.current_task().cancelling():
                    raise  # we were cancelled, not just the writer (abandoned)
        if self.broken:
            raise ReplyGone(f"{self.name} can no longer be written")

    async def _write_until_shown(self) -> None:
        write_waits.set(self._write_waits)  # this task's own context: its waits count for the answer's frontend
        backoff = _Backoff(self._retry, self.name)
        while True:
            step = self._next_step()
            if step is None:
                if self.ended or self.broken:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            if not step.final and not (step.kind == "post" and step.index == 0):
                wait = self._last_write + self.interval - time.monotonic()
                if wait > 0:  # keep the pace; an end arriving meanwhile goes out at once
                    try:
                        await asyncio.wait_for(self._ended_event.wait(), wait)
                    except TimeoutError:
                        pass
                    continue
            budget = self._budget(step)
            priority = FINAL if step.final else FIRST_POST if step.kind == "post" and step.index == 0 else UPDATE
            try:
                async with budget.slot(priority):
                    step = self._next_step()  # the latest state, now that the write may go out
                    if step is None or self._budget(step) is not budget:
                        continue
                    await self._apply(step)
            except TransientWriteError as exc:
                if not await backoff.wait(exc):
                    self._break()
                    return
                continue
            except MessageTooLong:
                if self.limit <= MIN_LIMIT:
                    log.error("%s: the platform refuses even %d characters; giving up", self.name, self.limit)
                    self._break()
                    return
                self.limit = max(MIN_LIMIT, self.limit // 2)
                continue
            except ReplyGone:
                log.info("%s was deleted on the platform; its answer ends here", self.name)
                self.gone = True
                self._break()
                return
            except Exception as exc:  # noqa: BLE001 - a refusal (no permission...): logged where it happened
                log.error("%s cannot be written (%s: %s)", self.name, type(exc).__name__, exc)
                self._break()
                return
            backoff.succeeded()

    def _budget(self, step: _Step) -> WriteBudget:
        return {"post": self._post_budget, "edit": self._edit_budget, "seal": self._seal_budget}[step.kind]

    async def _apply(self, step: _Step) -> None:
        if step.kind == "post":
            previous = self.messages[-1] if self.messages else None
            message = await self._post(step.text, previous)
            self.messages.append(message)
            self._shown.append(step.text)
            self._closed.append(self._seal is None)
            self._first_done.set()
        else:
            write = self._seal if step.kind == "seal" else self._edit
            replacement = await write(self.messages[step.index], step.text)
            if replacement is not None:
                self.messages[step.index] = replacement
            self._shown[step.index] = step.text
            self._closed[step.index] = self._closed[step.index] or step.kind == "seal"
        self._last_write = time.monotonic()

    def _next_step(self) -> _Step | None:
        """The write that brings the platform closer to what the reply should show, if any."""
        if self.broken:
            return None
        target = self._target()
        base = self._sealed
        for offset, part in enumerate(target):
            index = base + offset
            last = offset == len(target) - 1
            final = self.ended or not last
            if index >= len(self.messages):
                return _Step("post", index, part, final)
            if part != self._shown[index]:
                return _Step("seal" if final and self._seal else "edit", index, part, final)
            if final and not self._closed[index]:
                return _Step("seal", index, part, final)
            if not last:
                self._sealed = index + 1  # full, shown and closed: this message is final
        return None

    def _target(self) -> list[str]:
        """What the unsealed messages should show now."""
        tail = self._tail if self.ended else ""
        if not self._pieces:
            if self.ended:
                return [tail.lstrip("\n") or "(no reply)"]
            return [self._status] if self._status else []
        parts = self._layout(self._joined())
        if tail:
            if len(parts[-1]) + len(tail) <= self.limit:
                parts[-1] += tail  # the last edit carries the rest of the text and the footer at once
            else:  # a footer or an error is never cut in two: it gets a message of its own
                parts.append(tail.lstrip("\n"))
        return parts

    def _layout(self, full: str) -> list[str]:
        """How `full` spreads over the unsealed messages: each part fits the limit, and a part
        never ends before what its message already shows (edits only grow)."""
        rest = full[sum(len(part) for part in self._shown[:self._sealed]):]
        parts = []
        index = self._sealed
        while True:
            cut = split_point(rest, self.limit)
            shown = self._shown[index] if index < len(self._shown) else ""
            if rest.startswith(shown) and cut < len(shown) <= self.limit:
                cut = len(shown)
            parts.append(rest[:cut])
            rest = rest[cut:]
            if not rest:
                return parts
            index += 1
