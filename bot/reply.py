"""What a frontend provides so the host can answer: messages, files and streamed replies.

The host speaks only this protocol; each frontend (console, Discord, Slack) implements it
for its platform, including throttled edits and message splitting for streamed replies.
"""

from __future__ import annotations

from typing import Protocol


class ReplyGone(Exception):
    """The reply's message was deleted on the platform (a moderator removed it): the answer
    ends quietly, its generation is stopped, and nothing more is posted for it."""


class ReplyStream(Protocol):
    async def write(self, delta: str) -> None:
        """Append generated text to the reply."""

    async def finish(self, footer: str) -> None:
        """The reply is complete; footer is a short line such as 'smollm2 · 24.1 tok/s'."""

    async def fail(self, message: str) -> None:
        """The reply ended with an error; message says what went wrong."""

    async def note(self, text: str) -> None:
        """A remark that belongs with this reply (e.g. old messages left out of the context).
        Optional: without it the host shows the remark as progress."""

    async def queued(self, position: int) -> None:
        """The reply waits in the worker's queue at `position` (1 = next); 0: it is being generated.
        Optional: a stream without it shows nothing while waiting."""


class Reply(Protocol):
    async def send(self, text: str) -> None:
        """Post a complete message (Markdown)."""

    async def notice(self, text: str) -> None:
        """A message only the asker needs (help, stats, a refusal, an error): private where the
        platform can do that (Discord's ephemeral answers, Slack's response_url).
        Optional: without it the host uses send()."""

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        """Post an attachment, with an optional caption: str for a text file (UTF-8), bytes for a
        binary one such as a PNG (a frontend that cannot attach says so instead of showing bytes)."""

    async def progress(self, text: str) -> None:
        """Show a transient status such as 'loading gemma-2-2b…'."""

    def stream(self, header: str = "") -> ReplyStream:
        """Start a streamed reply, optionally under a header line (used by /compare)."""


async def notice(reply: Reply, text: str) -> None:
    """Tell the asker only, where the reply can (Reply.notice is optional)."""
    private = getattr(reply, "notice", None)
    await (private(text) if private is not None else reply.send(text))
