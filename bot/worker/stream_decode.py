"""Incremental detokenization: token ids in, text deltas out.

Decoding one token at a time breaks characters that span tokens (emoji, CJK, accented
letters in byte-level BPE) and drops the spaces SentencePiece attaches to the next token.
This keeps a small window of recent ids and only emits text once it decodes cleanly,
the technique text-generation servers use.
"""

from __future__ import annotations

from typing import Any


class DeltaDecoder:
    def __init__(self, tokenizer: Any, stop_token_ids: set[int] | frozenset[int] = frozenset()):
        self._tokenizer = tokenizer
        self._stop = set(stop_token_ids)
        self.ids: list[int] = []
        self._prefix = 0  # window start: decoded as context so spacing comes out right
        self._read = 0  # ids before this index have been emitted
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly readable text (possibly empty)."""
        if token_id in self._stop:
            return ""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete multi-token character: wait for the rest
        delta = after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        delta = after[len(before):] if len(after) > len(before) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta
