"""Streaming text out of token ids without breaking multi-token characters."""

from __future__ import annotations

import pytest

from bot.worker.stream_decode import DeltaDecoder
from helpers import SMOLLM2_SOURCE


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from bot.sources import resolve_source

    gguf = resolve_source(SMOLLM2_SOURCE)
    return AutoTokenizer.from_pretrained(gguf.gguf_dir, gguf_file=gguf.gguf_name)


@pytest.mark.parametrize("text", ["The capital of France is Paris.", "Ça coûte 5 €, señor 👋🏽 — 日本語で話す"])
def test_deltas_reassemble_the_text_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = DeltaDecoder(tokenizer, stop_token_ids={tokenizer.eos_token_id})
    deltas = [decoder.push(i) for i in ids] + [decoder.push(tokenizer.eos_token_id), decoder.flush()]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) > 3  # it streamed, not one block at the end
