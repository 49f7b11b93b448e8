"""The host's Reply protocol over chat messages, for every platform frontend (Discord, Slack).

A platform reply posts and edits messages; everything else is shared: each streamed answer
is a StreamedMessage (bot/streaming.py), the placeholder posted at once becomes the first
answer, progress shows in a placeholder still waiting for words, and whatever the host left
open is ended when it is done.
"""

from __future__ import annotations

from typing import Any

from bot.host import ordinal
from bot.streaming import StreamedMessage


class MessageReplyBase:
    """Subclasses provide `_post(text, previous)` and `_edit(message, text)`, and `send_file`."""

    def __init__(self, limit: int, interval: float, footer_format=None):
        self._limit, self._interval = limit, interval
        self._footer_format = footer_format
        self._first: StreamedMessage | None = None  # the placeholder's stream, until someone uses it
        self._streams: list[StreamedMessage] = []

    def _new_stream(self) -> StreamedMessage:
        extra = {"footer_format": self._footer_format} if self._footer_format else {}
        stream = StreamedMessage(self._post, self._edit, limit=self._limit, interval=self._interval, **extra)
        self._streams.append(stream)
        return stream

    def _take_stream(self) -> StreamedMessage:
        if self._first is not None:
            stream, self._first = self._first, None
            return stream
        return self._new_stream()

    async def _start_placeholder(self) -> None:
        """Post the placeholder ("…") that the first answer will grow from."""
        self._first = self._new_stream()
        await self._first.start()

    # Reply protocol
    async def send(self, text: str) -> None:
        stream = self._take_stream()
        await stream.write(text)
        await stream.finish("")

    async def progress(self, text: str) -> None:
        """Shown in the reply still waiting for its first words (the placeholder), if any."""
        waiting = [stream for stream in self._streams if not stream.ended and not stream.text]
        if waiting:
            await waiting[-1].status(f"… {text}")

    def stream(self, header: str = "") -> "LabelledStream":
        return LabelledStream(self._take_stream(), header)

    async def close(self, stopped: str | None = None) -> None:
        """The host is done (or was stopped, saying why): end any stream it left open."""
        for stream in self._streams:
            if not stream.ended and stream.messages:
                await (stream.fail(stopped) if stopped else stream.finish(""))

    async def _post(self, text: str, previous: Any) -> Any:
        raise NotImplementedError

    async def _edit(self, message: Any, text: str) -> Any:
        raise NotImplementedError


class LabelledStream:
    """The host's ReplyStream over a StreamedMessage, with an optional header line, notes kept
    for the footer, and the queue position shown while waiting."""

    def __init__(self, message: StreamedMessage, header: str = ""):
        self._message = message
        self._header = header
        self._notes: list[str] = []

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
            await self._message.status(f"queued: {ordinal(position)}")
