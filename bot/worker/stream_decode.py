"""Incremental detokenization: token ids in, text deltas out.

Decoding one token at a time breaks characters that span tokens (emoji, CJK, accented
letters in byte-level BPE) and drops the spaces SentencePiece attaches to the next token.
Both decoders here keep a small window of recent ids and only emit text once it decodes
cleanly, the technique text-generation servers use:
- a fast (Rust `tokenizers`) tokenizer does it in Rust with `tokenizers.decoders.DecodeStream`,
  one call per token (the window in Python cost two full `decode` calls per token);
- any other tokenizer, or one whose `decode` changes the text afterwards
  (`clean_up_tokenization_spaces`), takes the window in Python.
`delta_decoder(tokenizer, stop_ids)` picks one; both skip stop and special tokens.
"""

from __future__ import annotations

from typing import Any


def delta_decoder(tokenizer: Any, stop_token_ids: set[int] | frozenset[int] = frozenset()) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        try:
            return StreamDecoder(tokenizer, backend, stop_token_ids)
        except ImportError:  # tokenizers without DecodeStream (before 0.21)
            pass
    return DeltaDecoder(tokenizer, stop_token_ids)


class StreamDecoder:
    """The Rust window (tokenizers' DecodeStream); the whole text is decoded once, at the end."""

    def __init__(self, tokenizer: Any, backend: Any, stop_token_ids: set[int] | frozenset[int] = frozenset()):
        from tokenizers.decoders import DecodeStream

        self._tokenizer = tokenizer
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=True)
        self._stop = frozenset(stop_token_ids)
        self.ids: list[int] = []
        self._emitted = 0  # characters given out so far

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly readable text (possibly empty)."""
        if token_id in self._stop:
            return ""
        self.ids.append(token_id)
        delta = self._stream.step(self._backend, token_id)
        if not delta:
            return ""  # an incomplete multi-token character (or a special token): wait for the rest
        self._emitted += len(delta)
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (the tail of a character cut
        off by the token limit comes out as U+FFFD, as a full decode shows it)."""
        text = self._tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[self._emitted:] if len(text) > self._emitted else ""
        self._emitted += len(delta)
        return delta


class DeltaDecoder:
    """The window in Python, over the tokenizer's own `decode`."""

    def __init__(self, tokenizer: Any, stop_token_ids: set[int] | frozenset[int] = frozenset()):
        self._tokenizer = tokenizer
        self._stop = set(stop_token_ids)
        self.ids: list[int] = []
        self._prefix = 0  # window start: decoded as context so spacing comes out right
        self._read = 0  # ids before this index have been emitted

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
        return delta

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        delta = after[len(before):] if len(after) > len(before) else ""
        self._prefix = self._read = len(self.ids)
        return delta
