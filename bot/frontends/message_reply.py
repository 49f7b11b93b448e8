"""The host's Reply protocol over chat messages, for every platform frontend (Discord, Slack).

A platform reply posts and edits messages; everything else is shared: each streamed answer
is a StreamedMessage (bot/streaming.py) writing within the platform's budgets, the
placeholder posted at once becomes the first answer, progress shows in a placeholder still
waiting for words, and whatever the host left open is ended when it is done.
"""

from __future__ import annotations

from typing import Any

from bot.reply import ReplyGone
from bot.streaming import RetryPolicy, StreamedMessage
from bot.text import ordinal
from bot.write_budget import UNLIMITED, WriteBudget


class MessageReplyBase:
    """Subclasses provide `_post(text, previous)` and `_edit(message, text)`, and `send_file`;
    they raise bot.streaming's TransientWriteError / MessageTooLong or ReplyGone for what the
    platform answered."""

    def __init__(self, limit: int, interval: float, *, post_budget: WriteBudget = UNLIMITED,
                 edit_budget: WriteBudget = UNLIMITED, retry: RetryPolicy = RetryPolicy(), footer_format=None,
                 name: str = "reply"):
        self._limit, self._interval = limit, interval
        self.post_budget, self.edit_budget = post_budget, edit_budget
        self.seal_budget: WriteBudget | None = None
        self.retry = retry
        self._footer_format = footer_format
        self.name = name
        self._first: StreamedMessage | None = None  # the placeholder's stream, until someone uses it
        self._streams: list[StreamedMessage] = []

    def _new_stream(self) -> StreamedMessage:
        extra = {"footer_format": self._footer_format} if self._footer_format else {}
        stream = StreamedMessage(self._post, self._edit, limit=self._limit, interval=self._interval,
                                 seal=self._seal_callback(), post_budget=self.post_budget,
                                 edit_budget=self.edit_budget, seal_budget=self.seal_budget, retry=self.retry,
                                 name=self.name, **extra)
        self._streams.append(stream)
        return stream

    def _seal_callback(self):
        """Platforms whose messages must be closed (Slack's chat streaming) return one."""
        return None

    def _take_stream(self) -> StreamedMessage:
        if self._first is not None:
            stream, self._first = self._first, None
            return stream
        return self._new_stream()

    async def start(self) -> bool:
        """Post the placeholder ("…") that the first answer will grow from (as soon as the
        budget allows; a platform refusal shows up as ReplyGone at the next write)."""
        self._first = self._new_stream()
        await self._first.start()
        return True

    # Reply protocol
    async def send(self, text: str) -> None:
        stream = self._take_stream()
        await stream.write(text)
        await stream.finish("")

    async def notice(self, text: str) -> None:
        """Public by default: a chat message cannot be private (interactions can: subclasses)."""
        await self.send(text)

    async def progress(self, text: str) -> None:
        """Shown in the reply still waiting for its first words (the placeholder), if any."""
        waiting = [stream for stream in self._streams if not stream.ended and not stream.text]
        if waiting:
            await self._show_status(waiting[-1], f"… {text}")

    async def _show_status(self, stream: StreamedMessage, text: str) -> None:
        """A status line (queue position, loading…) for an answer with no words yet: in its
        placeholder here; a platform with a status display of its own overrides this."""
        await stream.status(text)

    #: how a reasoning model's thinking is folded away when shown (bot/reasoning.py's `collapsed`)
    thinking_style = "quote"

    def stream(self, header: str = "") -> "LabelledStream":
        stream = self._take_stream()
        return LabelledStream(stream, header, status=lambda text: self._show_status(stream, text),
                              thinking_style=self.thinking_style)

    async def close(self, stopped: str | None = None) -> None:
        """The host is done (or was stopped, saying why): end any stream it left open, and wait
        until the platform shows the end of each."""
        if stopped and not any(stream.started for stream in self._streams):
            # nothing of this answer is on the platform (a status only, where the platform has
            # one): the reason it stopped is its answer
            try:
                await self._take_stream().fail(stopped)
            except ReplyGone:
                pass
            return
        for stream in self._streams:
            if not stream.started or stream.broken:
                continue
            try:
                await (stream.fail(stopped) if stopped and not stream.ended else stream.finish(""))
            except ReplyGone:
                continue  # deleted on the platform, or given up: logged by the stream

    def abandon(self) -> None:
        for stream in self._streams:
            stream.abandon()

    async def _post(self, text: str, previous: Any) -> Any:
        raise NotImplementedError

    async def _edit(self, message: Any, text: str) -> Any:
        raise NotImplementedError


class LabelledStream:
    """The host's ReplyStream over a StreamedMessage, with an optional header line, notes kept
    for the footer, and the queue position shown while waiting."""

    def __init__(self, message: StreamedMessage, header: str = "", status=None, thinking_style: str = "quote"):
        self._message = message
        self._header = header
        self._status = status or message.status
        self._notes: list[str] = []
        self.thinking_style = thinking_style

    async def note(self, text: str) -> None:
        self._notes.append(text)  # shown in the footer, so it stays with the answer

    async def _header_once(self) -> None:
        if self._header:
            header, self._header = self._header, ""
            await self._message.write(f"**{header}**\n")

    async def write(self, delta: str) -> None:
        await self._header_once()
        await self._message.write(delta)

    async def finish(self, footer: str) -> None:
        await self._header_once()
        await self._message.finish(" · ".join(part for part in (footer, *self._notes) if part))

    async def fail(self, message: str) -> None:
        await self._header_once()
        await self._message.fail(message)

    async def queued(self, position: int) -> None:
        if position > 0:
            await self._status(f"queued: {ordinal(position)}")

    async def status(self, text: str) -> None:
        """A passing status ("… thinking") while the answer has no words yet."""
        await self._status(text)
