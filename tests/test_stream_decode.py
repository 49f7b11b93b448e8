"""Streaming text out of token ids without breaking multi-token characters, with both
decoders (tokenizers' DecodeStream in Rust, the Python window) on three kinds of
tokenizer: byte-level BPE (SmolLM2), SentencePiece with byte fallback (Llama 2, Mistral,
Gemma), and the bench's word-level one."""

from __future__ import annotations

import pytest

from bot.worker.stream_decode import DeltaDecoder, StreamDecoder, delta_decoder
from helpers import SMOLLM2_SOURCE

TEXTS = ["The capital of France is Paris.", "Ça coûte 5 €, señor 👋🏽 — 日本語で話す"]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from bot.sources import resolve_source

    gguf = resolve_source(SMOLLM2_SOURCE)
    return AutoTokenizer.from_pretrained(gguf.gguf_dir, gguf_file=gguf.gguf_name)


def sentencepiece_tokenizer():
    """Llama 2's tokenizer.json layout: "▁" for spaces, a prepended "▁" stripped again when
    decoding, and characters outside the vocabulary as <0xNN> byte tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", *"abcdefghijklmnopqrstuvwxyzTCP.,ç5", "▁The", "▁capital", "▁of", "▁France", "▁is"]:
        vocab.setdefault(piece, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def bench_tokenizer():
    from bot.bench_shapes import bench_tokenizer as build

    return build(64)


@pytest.fixture(params=["smollm2", "sentencepiece"])
def tokenizer(request, smollm2_tokenizer):
    return smollm2_tokenizer if request.param == "smollm2" else sentencepiece_tokenizer()


def stream(decoder, ids: list[int], stop_id: int) -> list[str]:
    return [decoder.push(i) for i in ids] + [decoder.push(stop_id), decoder.flush()]


@pytest.mark.parametrize("decoder_type", [StreamDecoder, DeltaDecoder])
@pytest.mark.parametrize("text", TEXTS)
def test_deltas_reassemble_the_text_and_never_split_a_character(tokenizer, decoder_type, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = (StreamDecoder(tokenizer, tokenizer.backend_tokenizer, {tokenizer.eos_token_id})
               if decoder_type is StreamDecoder else DeltaDecoder(tokenizer, {tokenizer.eos_token_id}))
    deltas = stream(decoder, ids, tokenizer.eos_token_id)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) > 3  # it streamed, not one block at the end


def test_the_word_level_bench_tokenizer_streams_its_spaces():
    tokenizer = bench_tokenizer()
    ids = tokenizer.encode("t5 t6 t7 t8", add_special_tokens=False)
    deltas = stream(delta_decoder(tokenizer), ids, tokenizer.eos_token_id)
    assert "".join(deltas) == "t5 t6 t7 t8"


def test_special_tokens_inside_the_reply_are_skipped(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    ids = tokenizer.encode("Hello there", add_special_tokens=False)
    special = tokenizer.convert_tokens_to_ids("<|im_start|>")
    deltas = stream(delta_decoder(tokenizer), [ids[0], special, *ids[1:]], tokenizer.eos_token_id)
    assert "".join(deltas) == "Hello there"


def test_a_character_cut_off_by_the_token_limit_ends_as_a_full_decode_shows_it(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    ids = tokenizer.encode("ok 👋", add_special_tokens=False)[:-1]  # the emoji's last byte never came
    for decoder in (delta_decoder(tokenizer), DeltaDecoder(tokenizer)):
        assert "".join(stream(decoder, ids, tokenizer.eos_token_id)) == tokenizer.decode(ids)


def test_the_rust_decoder_is_chosen_where_decoding_keeps_the_text_as_it_is(smollm2_tokenizer):
    assert isinstance(delta_decoder(smollm2_tokenizer), StreamDecoder)
    cleaning = sentencepiece_tokenizer()
    cleaning.clean_up_tokenization_spaces = True  # decode() rewrites " ." to "." afterwards
    assert isinstance(delta_decoder(cleaning), DeltaDecoder)
    text = "This is it ."
    ids = cleaning.encode(text, add_special_tokens=False)
    assert "".join(stream(delta_decoder(cleaning), ids, cleaning.eos_token_id)) == cleaning.decode(ids)
