"""What a frontend hands the host (a ChatEvent), what a chat turn returns (a ChatResult), and
the footer under an answer: shared by the host, the commands and the frontends."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.attachments import FileText
from bot.generation import GenerationStats
from bot.text import human_bytes


@dataclass
class ChatEvent:
    channel: str
    user: str
    text: str
    #: the conversation so far as the platform knows it (reply chain, thread); None means the
    #: host keeps the channel's history itself (the console)
    history: list[dict] | None = None
    #: which frontend it came from ("discord", "console", ...), for the metrics
    frontend: str = ""
    #: text files attached to the message, already read (bot/attachments.py): they join the user's turn
    files: list[FileText] = field(default_factory=list)


@dataclass
class ChatResult:
    text: str
    stats: GenerationStats | None
    error: str | None = None


def format_footer(stats: GenerationStats | None, with_footprint: bool = False) -> str:
    if stats is None:
        return ""
    parts = [stats.model, f"{stats.tokens_per_second:.1f} tok/s", f"{stats.new_tokens} tokens"]
    if with_footprint and stats.footprint_bytes:
        parts.append(f"{human_bytes(stats.footprint_bytes)} in memory")
    if stats.stopped_by == "length":
        parts.append("stopped at the token limit")
    elif stats.stopped_by == "cancelled":
        parts.append("stopped")
    return " · ".join(parts)
