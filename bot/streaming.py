"""A streamed reply on a chat platform: one message that grows by edits, continued in new
messages past the platform's length limit, ending with a footer or an error.

Platforms limit edits (Discord: ~5 per 5 s per channel; Slack: `chat.update` ~50/min), so
text is buffered and a message is edited at most once per `interval`. Text that no longer
fits a message is sealed there and continues in the next one; a sealed part is never
edited again, so nothing is posted twice and nothing is lost. The frontend supplies three
coroutines: post a new message (the first one is usually a placeholder posted at once),
edit a message, and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

PLACEHOLDER = "…"


def split_point(text: str, limit: int) -> int:
    """Where to cut `text` so the first part fits `limit`: at a line break, else a space."""
    if len(text) <= limit:
        return len(text)
    for separator in ("\n\n", "\n", " "):
        cut = text.rfind(separator, limit // 2, limit)
        if cut > 0:
            return cut + len(separator)
    return limit


class StreamedMessage:
    def __init__(self, post: Callable[[str, Any], Awaitable[Any]], edit: Callable[[Any, str], Awaitable[Any]],
                 limit: int, interval: float, footer_format: Callable[[str], str] = lambda f: f"\n-# {f}"):
        """post(text, previous_message) -> message; edit(message, text) -> None, or a message that
        replaces the edited one (a frontend that had to re-post it, e.g. after a token expired)."""
        self._post, self._edit = post, edit
        self.limit = limit
        self.interval = interval
        self._footer_format = footer_format
        self.messages: list[Any] = []  # every message of this reply, in order
        self._shown: list[str] = []  # what each message shows now
        self._sealed = 0  # messages before this index are final
        self._text = ""  # the whole reply so far
        self._status = ""  # placeholder / queue position / progress, shown until text arrives
        self._last_edit = -float("inf")
        self._pending: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.ended = False

    # -- what the host calls (through the frontend's ReplyStream) ---------------------------------
    async def start(self, status: str = PLACEHOLDER) -> None:
        """Post the placeholder now, so the user sees an answer coming."""
        self._status = status
        async with self._lock:
            if not self.messages:
                await self._new_message(status)

    async def status(self, text: str) -> None:
        """Replace the placeholder's text (queue position, loading...) while no reply text exists."""
        if self._text or self.ended:
            return
        self._status = text
        await self._refresh()  # throttled like the text: a status change is an edit too

    async def write(self, delta: str) -> None:
        if self.ended or not delta:
            return
        self._text += delta
        await self._refresh()

    async def finish(self, footer: str = "") -> None:
        await self._end(self._footer_format(footer) if footer else "")

    async def fail(self, message: str) -> None:
        await self._end(("\n\n" if self._text else "") + f"⚠️ {message}")

    @property
    def text(self) -> str:
        return self._text

    # -- internals --------------------------------------------------------------------------------
    async def _end(self, tail: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self._pending is not None:
            self._pending.cancel()
        async with self._lock:
            if not self._text:
                await self._set(0, tail.lstrip("\n") or "(no reply)")
                return
            parts = self._layout(self._text)
            if len(parts[-1]) + len(tail) <= self.limit:
                parts[-1] += tail  # the last edit carries the rest of the text and the footer at once
                tail = ""
            await self._apply(parts)
            if tail:  # a footer or an error is never cut in two: it gets a message of its own
                await self._new_message(tail.lstrip("\n"))

    async def _refresh(self) -> None:
        wait = self._last_edit + self.interval - time.monotonic()
        if wait > 0:
            if self._pending is None or self._pending.done():
                self._pending = asyncio.get_running_loop().create_task(self._refresh_later(wait))
            return
        async with self._lock:
            if not self.ended:
                await self._show(self._text or self._status)

    async def _refresh_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if not self.ended:
                await self._show(self._text or self._status)

    async def _show(self, full: str) -> None:
        """Make the messages show `full` (the text so far, or a status line before any text)."""
        if not self._text:  # only a status line so far: it lives in the first message
            await self._set(0, full)
            return
        await self._apply(self._layout(full))

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

    async def _apply(self, parts: list[str]) -> None:
        for i, part in enumerate(parts):
            await self._set(self._sealed, part)
            if i < len(parts) - 1:
                self._sealed += 1  # full: this message is final, the text goes on in the next one

    async def _set(self, index: int, text: str) -> None:
        if index >= len(self.messages):
            await self._new_message(text)
        elif text and text != self._shown[index]:
            replacement = await self._edit(self.messages[index], text)
            if replacement is not None:
                self.messages[index] = replacement
            self._shown[index] = text
            self._last_edit = time.monotonic()

    async def _new_message(self, text: str) -> None:
        previous = self.messages[-1] if self.messages else None
        message = await self._post(text, previous)
        self.messages.append(message)
        self._shown.append(text)
        self._last_edit = time.monotonic()
