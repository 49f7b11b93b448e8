"""A job while it generates: its tokens, its streamed text, its stats and how it ends.

Both paths (plain generate and continuous batching) feed tokens here, so decoding,
stop tokens, limits and the final stats work the same whichever path ran the job, and a
job handed from one path to the other mid-reply simply continues.
"""

from __future__ import annotations

import time
from typing import Any

from bot.generation import GenerationFailed, GenerationStats, GenerationStream
from bot.worker.stream_decode import delta_decoder


class RunningJob:
    def __init__(self, stream: GenerationStream, tokenizer: Any, max_new_tokens: int, footprint: int,
                 text_every: float = 0.0):
        self.stream = stream
        self.job = stream.job
        self.max_new_tokens = max_new_tokens
        self.stop_ids = set(self.job.stop_token_ids)
        self.decoder = delta_decoder(tokenizer, self.stop_ids)
        self.text_every = text_every  # seconds between decoding what came and handing it on
        self._text_at = -float("inf")  # the first token's text goes out at once
        self._decoded = 0  # tokens before this index are decoded
        self.tokens: list[int] = []
        self.started = time.monotonic()
        self.last_token_at = self.started
        self.stats = GenerationStats(
            model=self.job.model, prompt_tokens=len(self.job.input_ids),
            queue_seconds=self.started - stream.submitted, footprint_bytes=footprint,
        )
        self.request_id: str | None = None  # set while it is in a continuous batch
        self.batch_offset = 0  # tokens generated before it joined the batch
        self.done = False

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.tokens)

    @property
    def hit_stop(self) -> bool:
        return bool(self.tokens) and self.tokens[-1] in self.stop_ids

    @property
    def finished(self) -> bool:
        return self.hit_stop or self.remaining <= 0

    def continuation_ids(self) -> list[int]:
        """Prompt plus what it generated so far: where another path picks it up."""
        return [*self.job.input_ids, *self.tokens]

    def push(self, token_ids: list[int]) -> bool:
        """New tokens (one per step, or what a batch made since the last look). Their text is
        decoded and handed on at most every `text_every` seconds, a few tokens at once: per
        token in between, only the id is kept (decoding each one as it came cost a tenth of
        a small model's speed on a CPU, measured). True when text was handed on now."""
        now = time.monotonic()
        for token_id in token_ids:
            if self.finished:
                break
            self.tokens.append(token_id)
            self.last_token_at = now
        self.stats.new_tokens = len(self.tokens)
        if self.stats.first_token_seconds is None and self.tokens:
            self.stats.first_token_seconds = now - self.started
        if now - self._text_at >= self.text_every:
            self._hand_on_text(now)
            return True
        return False

    def _hand_on_text(self, now: float) -> None:
        """Decode the tokens not decoded yet; their text goes to the stream as one delta."""
        self._text_at = now
        pending, self._decoded = self.tokens[self._decoded:], len(self.tokens)
        deltas = [delta for delta in map(self.decoder.push, pending) if delta]
        if deltas:
            self.stream.emit("".join(deltas))

    def idle_for(self) -> float:
        return time.monotonic() - self.last_token_at

    def settle(self, stopped_by: str | None = None) -> GenerationStats:
        """End normally: flush held-back text and fix the stats (close() then ends the stream,
        so the worker can record the job before its user sees the end)."""
        if self.done:
            return self.stats
        self.done = True
        self._hand_on_text(time.monotonic())
        tail = self.decoder.flush()
        if tail:
            self.stream.emit(tail)
        self.stats.generation_seconds = self.last_token_at - self.started if self.tokens else 0.0
        if stopped_by is None:
            stopped_by = "eos" if self.hit_stop or self.remaining > 0 else "length"
        self.stats.stopped_by = stopped_by
        return self.stats

    def close(self) -> None:
        self.stream.finish(self.stats)

    def fail(self, message: "str | GenerationFailed") -> None:
        if self.done:
            return
        self.done = True
        self._hand_on_text(time.monotonic())  # the text so far stands, the message follows it
        self.stream.finish(error=message)
