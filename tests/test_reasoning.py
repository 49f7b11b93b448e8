"""A reasoning model's <think>…</think>: a status while it thinks, the answer alone as the
message, the thinking collapsed with show_thinking, and never fed back as history.

The model is served by tests/scripted_openai.py (streamed as vLLM streams a Qwen3 or
DeepSeek-R1 distill) through the real openai engine, host and frontends: the real
discord.py and slack-bolt against their emulators, and the console."""

from __future__ import annotations

import asyncio
import re

import pytest
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from frontend_helpers import running_bot
from helpers import RecordingOut, write_config
from scripted_openai import Reasoning, ScriptedChatServer
from test_discord import FOOTER, _edited_original, answer_to, bot_config
from test_slack import FOOTER as SLACK_FOOTER
from test_slack import answer_in, push_thread_message, socket_bot

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from bot.reasoning import ThinkingSplitter, collapsed, strip_thinking

ANSWER = "The capital of France is Paris."
# the tags cut across chunks, as a tokenizer's pieces may cut them
IN_CONTENT = ["<think>", "The user asks", " for France's capital.", "\n\nIt is Paris.", "</th", "ink>", "\n\n",
              "The capital", " of France is Paris."]
APART = [Reasoning("The user asks for France's capital."), Reasoning("\n\nIt is Paris."), "The capital",
         " of France is Paris."]
THOUGHT = "The user asks for France's capital.\n\nIt is Paris."

pytestmark = pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")


def reasoner(server: ScriptedChatServer, name: str = "reasoner", **fields) -> dict:
    return {"name": name, "engine": "openai", "base_url": server.base_url, "api": "chat", "family": "qwen2",
            "served_model": server.served, **fields}


def test_discord_shows_a_status_while_it_thinks_then_the_answer_alone_or_collapsed(tmp_path):
    async def run():
        async with ScriptedChatServer(pause=0.3) as server, DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, [reasoner(server), reasoner(server, "shows", show_thinking=True)],
                                edit_interval=0.2)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                ann = emu.user("ann")
                server.will_answer(IN_CONTENT)
                hidden = await answer_to(emu, await emu.push_message(ann, "What is the capital of France?",
                                                                     mentions_bot=True))
                server.will_answer(APART)  # thinking sent apart (vLLM's reasoning parser): the same
                apart = await answer_to(emu, await emu.push_message(ann, "And again?", mentions_bot=True))
                switched = await emu.push_interaction(ann, "model", {"name": "shows"}, channel_id=emu.other_channel_id)
                await emu.wait_for(lambda: _edited_original(emu, switched["id"]), timeout=30)
                server.will_answer(IN_CONTENT)
                shown = await answer_to(emu, await emu.push_message(ann, "What is the capital of France?",
                                                                    mentions_bot=True, channel_id=emu.other_channel_id))
                server.will_answer(["Berlin."])
                follow_up = await answer_to(emu, await emu.push_message(ann, "And of Germany?", reply_to=shown[-1].id,
                                                                        channel_id=emu.other_channel_id))
                server.will_answer(IN_CONTENT[:3], finish_reason="length")
                cut = await answer_to(emu, await emu.push_message(ann, "Think hard.", mentions_bot=True))
            return hidden, apart, shown, follow_up, cut, server.bodies

    hidden, apart, shown, follow_up, cut, bodies = asyncio.run(run())
    [message] = hidden
    assert FOOTER.sub("", message.content) == ANSWER and FOOTER.search(message.content)
    states = [edit["content"] for edit in message.history]
    assert "… thinking" in states  # the status while the model thought
    assert not any("user asks" in state for state in states)  # its thinking never appeared
    assert FOOTER.sub("", apart[-1].content) == ANSWER
    [message] = shown
    assert FOOTER.sub("", message.content) == (
        "-# 💭 thinking\n||The user asks for France's capital.||\n\n||It is Paris.||\n\n" + ANSWER)
    assert FOOTER.sub("", follow_up[-1].content) == "Berlin."
    history = bodies[3]["messages"]  # the follow-up's request: the earlier answer without its thinking
    assert [m["role"] for m in history] == ["user", "assistant", "user"] and history[1]["content"] == ANSWER
    assert "used all its 3 tokens thinking" in cut[-1].content and "/settings max_new_tokens" in cut[-1].content


def test_slack_quotes_the_thinking_and_the_thread_reads_back_without_it(tmp_path):
    async def run():
        async with ScriptedChatServer(pause=0.3) as server:
            async with socket_bot(tmp_path, [reasoner(server, show_thinking=True)], edit_interval=0.2) as (emu, _):
                bob = emu.user("bob")
                server.will_answer(IN_CONTENT)
                _, event = await emu.push_mention(bob, "What is the capital of France?")
                first = await answer_in(emu, event["ts"])
                server.will_answer(["Berlin."])
                await push_thread_message(emu, bob, "And of Germany?", event["ts"])
                both = await answer_in(emu, event["ts"], count=2)
                return first, both, emu.statuses[(event["channel"], event["ts"])], server.bodies

    first, both, statuses, bodies = asyncio.run(run())
    text = SLACK_FOOTER.sub("", first[0].text)
    assert text.startswith("> _💭 thinking_\n> The user asks for France's capital.\n>\n> It is Paris.")
    assert text.endswith(ANSWER)
    assert "is thinking" in [status for status, _ in statuses]
    assert SLACK_FOOTER.sub("", both[1].text) == "Berlin."
    history = bodies[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"] and history[1]["content"] == ANSWER


def test_the_console_says_it_is_thinking_and_prints_the_answer_alone(tmp_path):
    async def run():
        async with ScriptedChatServer() as server:
            config = write_config(tmp_path, [reasoner(server)])
            app = build_app(load_settings(config))
            try:
                out, err = RecordingOut(), RecordingOut()
                server.will_answer(IN_CONTENT)
                await app.host.handle(ChatEvent("console", "u", "What is the capital of France?"), ConsoleReply(out, err))
                server.will_answer(["Berlin."])
                await app.host.handle(ChatEvent("console", "u", "And of Germany?"), ConsoleReply(RecordingOut(), err))
                return "".join(out.writes), "".join(err.writes), server.bodies
            finally:
                await app.close()

    printed, status, bodies = asyncio.run(run())
    assert printed.startswith(ANSWER + "\n[reasoner · ") and "user asks" not in printed
    assert "… thinking\n" in status
    assert bodies[1]["messages"][1] == {"role": "assistant", "content": ANSWER}  # kept history: the answer only


@pytest.mark.parametrize("text", ["<think>a\nb</think>\n\nParis 🇫🇷!", "  <think></think>Paris 🇫🇷!"])
def test_the_splitter_finds_the_tags_wherever_the_stream_cuts_them(text):
    thought = re.search(r"<think>(.*)</think>", text, re.DOTALL).group(1)
    for cut in range(len(text) + 1):  # every place a chunk may end, and one character at a time
        for chunks in ([text[:cut], text[cut:]], list(text)):
            splitter = ThinkingSplitter()
            pieces = [piece for chunk in chunks for piece in splitter.feed(chunk)] + splitter.flush()
            assert "".join(t for kind, t in pieces if kind == "thinking") == thought
            assert "".join(t for kind, t in pieces if kind == "answer") == "Paris 🇫🇷!"


def test_text_without_a_leading_think_is_all_answer_and_a_prompt_may_open_it():
    for text in ("<thinking is fun>", "Use <think> tags like this.", "<th"):
        splitter = ThinkingSplitter()
        pieces = splitter.feed(text) + splitter.flush()
        assert pieces == [("answer", text)]
    opened = ThinkingSplitter(inside=True)  # DeepSeek-R1's template ends its prompt with "<think>\n"
    assert opened.feed("hmm</think>\n\nHi") == [("thinking", "hmm"), ("answer", "Hi")]


@pytest.mark.parametrize("style", ["spoiler", "quote", "console"])
def test_collapsed_thinking_is_stripped_from_history_in_every_style(style):
    shown = collapsed("one\ntwo\n\nthree", style) + "The answer.\n\nIts second paragraph."
    assert strip_thinking(shown) == "The answer.\n\nIts second paragraph."
    assert strip_thinking("<think>x</think>\n\nThe answer.") == "The answer."
    assert strip_thinking("No thinking here > really.") == "No thinking here > really."
    explained = "Close it with </think>, then answer."  # an answer about the tags keeps its words
    assert strip_thinking(explained) == explained
