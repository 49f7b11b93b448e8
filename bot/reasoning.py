"""Reasoning models' thinking (Qwen3, DeepSeek-R1 distills): `<think>…</think>` before the answer.

The thinking is not the answer: while it streams the reply shows a "thinking" status, and
the answer alone is written. A model entry with `show_thinking: true` shows the thinking
too, collapsed (a Discord spoiler, a Slack quote) above the answer. Earlier turns' thinking
is never fed back to the model: `strip_thinking` removes it from history read back from a
platform.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
THINKING_LABEL = "💭 thinking"
_SPOILER_PARAGRAPH = 1500  # Discord: a spoiler must not be cut by the 2000-character message split


def _partial_suffix(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkingSplitter:
    """Splits streamed text into ("thinking", text) and ("answer", text) pieces. Only a
    leading <think> block counts (where reasoning models put it); `inside`: the prompt
    already opened it (DeepSeek-R1's template ends with "<think>\\n")."""

    def __init__(self, inside: bool = False):
        self._state = "thinking" if inside else "start"
        self._pending = ""
        self.thought = False  # there was a thinking block

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self._pending += delta
        pieces: list[tuple[str, str]] = []
        while self._pending:
            if self._state == "start":
                stripped = self._pending.lstrip()
                if stripped.startswith(OPEN):
                    self._pending, self._state, self.thought = stripped[len(OPEN):], "thinking", True
                    continue
                if not stripped or OPEN.startswith(stripped):
                    break  # not yet known whether this is a <think>
                self._state = "answer"
            elif self._state == "thinking":
                self.thought = True
                end = self._pending.find(CLOSE)
                if end >= 0:
                    pieces.append(("thinking", self._pending[:end]))
                    self._pending, self._state = self._pending[end + len(CLOSE):], "after"
                    continue
                keep = _partial_suffix(self._pending, CLOSE)
                pieces.append(("thinking", self._pending[: len(self._pending) - keep]))
                self._pending = self._pending[len(self._pending) - keep:]
                break
            elif self._state == "after":  # the blank line after </think> is not part of the answer
                self._pending = self._pending.lstrip()
                if self._pending:
                    self._state = "answer"
            else:
                pieces.append(("answer", self._pending))
                self._pending = ""
        return [(kind, text) for kind, text in pieces if text]

    def flush(self) -> list[tuple[str, str]]:
        """The stream ended: text held back (a possible partial tag) is what it is."""
        rest, self._pending = self._pending, ""
        if not rest or self._state == "after":
            return []
        return [("thinking" if self._state == "thinking" else "answer", rest)]


def prompt_opens_thinking(prompt_text: str) -> bool:
    return prompt_text.rstrip().endswith(OPEN)


def collapsed(thinking: str, style: str) -> str:
    """The thinking, folded away above the answer: `spoiler` (Discord, click to show), `quote`
    (Slack and the default), `console` (a terminal: marked lines)."""
    thinking = thinking.strip()
    if style == "spoiler":
        paragraphs = []
        for paragraph in re.split(r"\n\s*\n", thinking):
            paragraph = paragraph.strip().replace("||", "|\u200b|")
            while paragraph:  # each paragraph its own spoiler, short enough never to be split
                paragraphs.append(f"||{paragraph[:_SPOILER_PARAGRAPH]}||")
                paragraph = paragraph[_SPOILER_PARAGRAPH:]
        return f"-# {THINKING_LABEL}\n" + "\n\n".join(paragraphs) + "\n\n"
    if style == "console":
        return f"[{THINKING_LABEL}]\n" + "\n".join(f"│ {line}" for line in thinking.splitlines()) + "\n\n"
    lines = [f"> {line}" if line.strip() else ">" for line in thinking.splitlines()]
    return f"> _{THINKING_LABEL}_\n" + "\n".join(lines) + "\n\n"


_RAW_BLOCK = re.compile(rf"^\s*{re.escape(OPEN)}.*?{re.escape(CLOSE)}\s*", re.DOTALL)  # leading only
_SHOWN_LABEL = re.compile(rf"^\s*(?:-# |> _?|\[){re.escape(THINKING_LABEL)}")


def strip_thinking(text: str) -> str:
    """An earlier answer as the model should see it again: without its thinking, whether raw
    (<think>…</think>) or shown collapsed by `collapsed`."""
    text = _RAW_BLOCK.sub("", text, count=1)
    if not _SHOWN_LABEL.match(text):
        return text
    label, _, body = text.lstrip().partition("\n")
    if label.startswith("-#"):  # spoilers: whole paragraphs
        paragraphs = re.split(r"\n\s*\n", body)
        while paragraphs and (not paragraphs[0].strip() or _is_spoiler(paragraphs[0])):
            paragraphs.pop(0)
        return "\n\n".join(paragraphs).strip()
    marker = ">" if label.startswith(">") else "│"
    lines = body.splitlines()
    while lines and (not lines[0].strip() or lines[0].startswith(marker)):
        lines.pop(0)
    return "\n".join(lines).strip()


def without_thinking(turns: list[dict]) -> list[dict]:
    """A conversation read back from a platform, as the model should see it: the answers
    without their thinking, and no turn left empty."""
    cleaned = [{**turn, "content": strip_thinking(turn["content"])} if turn["role"] == "assistant" else turn
               for turn in turns]
    return [turn for turn in cleaned if turn["content"].strip()]


def _is_spoiler(paragraph: str) -> bool:
    paragraph = paragraph.strip()
    return len(paragraph) >= 4 and paragraph.startswith("||") and paragraph.endswith("||")


class AnswerStream:
    """Between the engine's text and the reply: the answer is written, the thinking is a
    status ("… thinking") while it lasts, or, with `show`, written collapsed above the answer
    once it is complete. `progress` shows a status where the stream has no status of its own."""

    STATUS_EVERY = 10.0  # seconds between "thinking (20 s)" updates: a long think shows it is alive

    def __init__(self, stream, progress, *, show: bool, inside: bool):
        self._stream, self._progress, self._show = stream, progress, show
        self._splitter = ThinkingSplitter(inside)
        self._thinking: list[str] = []
        self._thinking_since: float | None = None
        self._status_at = 0.0
        self._collapsed_written = False
        self.answer: list[str] = []

    @property
    def thought_only(self) -> bool:
        """There was thinking and no answer (yet)."""
        return self._splitter.thought and not self.answer

    async def write(self, delta: str) -> None:
        for kind, text in self._splitter.feed(delta):
            await self._piece(kind, text)

    async def end(self) -> None:
        for kind, text in self._splitter.flush():
            await self._piece(kind, text)

    async def write_thinking_as_answer(self) -> None:
        """A model that ended inside its thinking: that text is all it said."""
        text = "".join(self._thinking).strip()
        if text:
            self.answer.append(text)
            await self._stream.write(text)

    async def show_thinking_if_wanted(self) -> None:
        if self._show and self._thinking and not self._collapsed_written:
            self._collapsed_written = True
            await self._stream.write(collapsed("".join(self._thinking), getattr(self._stream, "thinking_style", "quote")))

    async def _piece(self, kind: str, text: str) -> None:
        if kind == "thinking":
            self._thinking.append(text)
            await self._thinking_status()
            return
        await self.show_thinking_if_wanted()
        self.answer.append(text)
        await self._stream.write(text)

    async def _thinking_status(self) -> None:
        import time

        now = time.monotonic()
        if self._thinking_since is None:
            self._thinking_since = self._status_at = now
            await self._status("thinking")
        elif now - self._status_at >= self.STATUS_EVERY and hasattr(self._stream, "status"):
            self._status_at = now  # a terminal shows the first status only: it cannot replace a line
            await self._status(f"thinking ({now - self._thinking_since:.0f} s)")

    async def _status(self, text: str) -> None:
        status = getattr(self._stream, "status", None)
        await (status(f"… {text}") if status is not None else self._progress(text))
