"""Conversation history: kept per channel where the platform has no history of its own,
and trimmed, oldest turns first, so prompt plus reply fit the model's context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bot.backend import Prompt


@dataclass
class TrimmedPrompt:
    prompt: Prompt
    messages: list[dict]
    dropped: int  # how many of the oldest messages were left out


def fit_to_context(
    messages: list[dict], build: Callable[[list[dict]], Prompt], context_length: int, reply_tokens: int
) -> TrimmedPrompt:
    """Drop the oldest non-system messages until the prompt leaves room for the reply.

    The newest user message always stays; if even it alone is too long, the prompt is built
    anyway and generation gets whatever room is left (the host caps max_new_tokens).
    """
    budget = max(context_length - reply_tokens, 1)
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    dropped = 0
    while True:
        kept = system + turns[dropped:]
        prompt = build(kept)
        if prompt.token_count <= budget or len(turns) - dropped <= 1:
            return TrimmedPrompt(prompt, kept, dropped)
        dropped += 1
        # keep the conversation starting on a user turn, as most templates require
        while dropped < len(turns) - 1 and turns[dropped]["role"] != "user":
            dropped += 1


class ChannelHistory:
    """In-memory history for frontends without reply chains or threads (the console)."""

    def __init__(self, max_messages: int = 200):
        self._by_channel: dict[str, list[dict]] = {}
        self._max = max_messages

    def get(self, channel: str) -> list[dict]:
        return list(self._by_channel.get(channel, []))

    def add(self, channel: str, role: str, content: str) -> None:
        history = self._by_channel.setdefault(channel, [])
        history.append({"role": role, "content": content})
        del history[: max(0, len(history) - self._max)]

    def reset(self, channel: str) -> None:
        self._by_channel.pop(channel, None)
