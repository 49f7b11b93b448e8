"""Model sources other than the embedded GGUF: a local checkpoint directory, and a hub id
that cannot be reached (the case every offline machine and typo meets)."""

from __future__ import annotations

import asyncio
import subprocess

import family_fixtures as ff
from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from helpers import RecordingOut, cli, cli_env, write_config


def test_local_checkpoint_directory_is_detected_by_model_type_and_chats(tmp_path):
    checkpoint = tmp_path / "checkpoint"  # nothing in the name says which family it is
    ff.model("qwen2").save_pretrained(checkpoint)
    ff.tokenizer("qwen2").save_pretrained(checkpoint)
    config = write_config(tmp_path, [{"name": "tiny", "source": str(checkpoint),
                                      "generation": {"do_sample": False, "max_new_tokens": 5}}])

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        try:
            await app.host.handle(ChatEvent("c", "u", "/models"), ConsoleReply(out, RecordingOut()))
            await app.host.handle(ChatEvent("c", "u", "hello"), ConsoleReply(out, RecordingOut()))
            return out.text
        finally:
            await app.close()

    text = asyncio.run(session())
    assert "tiny  qwen2 (plugins.qwen2)" in text
    # random weights say nothing sensible, but the reply runs to its token limit and finishes
    assert "[tiny · " in text and "5 tokens · stopped at the token limit]" in text


def test_unreachable_hub_model_is_one_clear_line(tmp_path):
    config = write_config(tmp_path, [{"name": "hubby", "source": "example-org/no-such-model-7b"}])
    env = cli_env()
    env["HF_HUB_OFFLINE"] = "1"  # as on a machine without network
    done = subprocess.run(cli("ask", "--config", str(config), "hi"), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "modelbot: could not load model hubby: HF_HUB_OFFLINE is set and example-org/no-such-model-7b is not in the "
        "local cache (download it on a machine with network, or use a local path as source)"]


def test_message_longer_than_the_context_is_refused_clearly(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    ff.model("qwen2").save_pretrained(checkpoint)  # max_position_embeddings of the tiny config
    ff.tokenizer("qwen2").save_pretrained(checkpoint)
    config = write_config(tmp_path, [{"name": "tiny", "source": str(checkpoint)}])
    context = ff.model("qwen2").config.max_position_embeddings

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        try:
            await app.host.handle(ChatEvent("c", "u", "word " * context), ConsoleReply(out, RecordingOut()))
            return out.text
        finally:
            await app.close()

    text = asyncio.run(session())
    assert f"tiny reads at most {context}" in text and text.startswith("error: the message is ")
