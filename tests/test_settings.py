"""/settings: a channel's persona, sampling, reply and history length, kept in the sqlite store.

End to end over the real discord.py and the Discord emulator (and the console for the
history length); the prompt a channel's settings give is read with `modelbot prompt --json
--channel`, the path the bot's own prompts take."""

from __future__ import annotations

import asyncio
import json
import re

import family_fixtures as ff
import pytest
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from frontend_helpers import expected_reply, running_bot
from helpers import RecordingOut, smollm2, write_config
from test_discord import EPHEMERAL, FOOTER, MANAGE_GUILD, _edited_original, answer_to, bot_config, text_of

from bot.app import build_app
from bot.channel_settings import MAX_HISTORY, BadSetting, ChannelSettings, canonical, parse_value
from bot.cli import main
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent

PERSONA = "You are Captain Hook. Answer every question as a pirate would."
QUESTION = "Who are you?"

pytestmark = pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")


def prompt_json(config, tmp_path, channel: str, messages: list[dict], capsys) -> dict:
    """`modelbot prompt --json --channel CHANNEL`, run in this process."""
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages), encoding="utf-8")
    capsys.readouterr()
    assert main(["prompt", "--config", str(config), "--json", "--channel", channel, "--messages", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def ephemeral_text(emu, interaction_id: str) -> str | None:
    found = [m for m in emu.messages.values() if m.interaction_id == interaction_id and m.flags & EPHEMERAL
             and m.content and not m.deleted]
    return found[-1].content if found else None


def test_a_channels_persona_and_sampling_reach_its_prompts_only_and_survive_a_restart(tmp_path, capsys):
    async def first_run(emu, config):
        admin = emu.user("admin", roles=[emu.admin_role_id])
        member = emu.user("member")
        said = {}
        for key, user, options in (
                ("persona", admin, {"name": "system", "value": PERSONA}),
                ("temperature", admin, {"name": "temperature", "value": "1.2"}),
                ("refused", member, {"name": "temperature", "value": "0.2"}),
                ("top_p out of range", admin, {"name": "top_p", "value": "1.5"}),
                ("unknown", admin, {"name": "colour", "value": "blue"})):
            pushed = await emu.push_interaction(user, "settings", options)
            said[key] = await emu.wait_for(lambda: _edited_original(emu, pushed["id"])
                                           or ephemeral_text(emu, pushed["id"]), timeout=30)
        shown = await emu.push_interaction(member, "settings")  # looking is for everyone
        said["shown to a member"] = await emu.wait_for(lambda: _edited_original(emu, shown["id"]), timeout=30)
        typing = await emu.push_interaction(admin, "settings", {"name": "temp"}, kind=4)
        said["suggested"] = await emu.wait_for(lambda: emu.interactions[typing["id"]].choices)
        return said, emu.commands[emu.guild_id]

    async def second_run(emu):
        admin = emu.user("admin2", roles=[emu.admin_role_id])
        shown = await emu.push_interaction(admin, "settings")
        table = await emu.wait_for(lambda: _edited_original(emu, shown["id"]), timeout=30)
        sampling_off = await emu.push_interaction(admin, "settings", {"name": "reset", "value": "temperature"})
        await emu.wait_for(lambda: _edited_original(emu, sampling_off["id"]), timeout=30)
        here = await answer_to(emu, await emu.push_message(admin, QUESTION, mentions_bot=True))
        there = await answer_to(emu, await emu.push_message(admin, QUESTION, mentions_bot=True,
                                                            channel_id=emu.other_channel_id))
        return table, here, there

    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, settings_change="admins", admins=[int(emu.admin_role_id)],
                                guilds=[int(emu.guild_id)])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                said, commands = await first_run(emu, config)
            prompts = {}  # between the runs: what the store says each channel's prompt is
            for name, channel in (("here", emu.channel_id), ("there", emu.other_channel_id)):
                prompts[name] = await asyncio.to_thread(prompt_json, config, tmp_path, channel,
                                                        [{"role": "user", "content": QUESTION}], capsys)
            async with running_bot(config, "discord"):  # a restart: the same sqlite store
                await emu.wait_for(lambda: len(emu.identify_payloads) == 2, timeout=30)
                table, here, there = await second_run(emu)
            return config, said, commands, prompts, table, here, there

    config, said, commands, prompts, table, here, there = asyncio.run(run())
    assert "system is now set" in said["persona"] and "temperature is now 1.2" in said["temperature"]
    assert "Only the bot's admins can change" in said["refused"]
    assert "top_p must be a number above 0, at most 1" in said["top_p out of range"] and "1.5" in said[
        "top_p out of range"]
    assert "no setting 'colour'" in said["unknown"] and "temperature" in said["unknown"]
    assert PERSONA in said["shown to a member"] and re.search(r"temperature\s+1\.2 \*", said["shown to a member"])
    assert [choice["value"] for choice in said["suggested"]] == ["temperature"]
    permissions = {c["name"]: c.get("default_member_permissions") for c in commands}
    assert int(permissions["settings"]) == MANAGE_GUILD  # hidden from members under settings_change: admins

    assert f"<|im_start|>system\n{PERSONA}<|im_end|>" in prompts["here"]["text"]
    assert PERSONA not in prompts["there"]["text"] and "named SmolLM" in prompts["there"]["text"]

    assert PERSONA in table and re.search(r"temperature\s+1\.2 \*", table)  # kept across the restart
    footer = FOOTER.search(here[-1].content).group(0)
    assert "custom persona" in footer and "temperature" not in footer  # reset to the model's own
    assert "persona" not in FOOTER.search(there[-1].content).group(0)
    with_persona = asyncio.run(expected_reply(config, [{"role": "system", "content": PERSONA},
                                                       {"role": "user", "content": QUESTION}]))
    assert text_of(here) == with_persona  # greedy: the persona is what changed the answer
    assert text_of(there) == asyncio.run(expected_reply(config, [{"role": "user", "content": QUESTION}]))
    assert text_of(here) != text_of(there)


def test_history_length_and_reply_length_apply_in_the_console(tmp_path):
    """Three console channels, all with replies cut to 6 tokens: one forgets (history 0), one
    remembers (the model's own: all that fits), one starts fresh."""
    config = write_config(tmp_path, [smollm2()])

    async def run():
        app = build_app(load_settings(config))
        try:
            answers = {}
            for channel, history in (("forgets", "0"), ("remembers", None), ("fresh", None)):
                out = RecordingOut()
                reply = ConsoleReply(out, RecordingOut())
                commands = ["/settings max_new_tokens 6"] + ([f"/settings history {history}"] if history else [])
                said = ["My name is Ada."] if channel != "fresh" else []
                for text in [*commands, *said]:
                    await app.host.handle(ChatEvent(channel, "u", text), reply)
                out.writes.clear()
                await app.host.handle(ChatEvent(channel, "u", "What is my name?"), reply)
                answers[channel] = "".join(out.writes)
            return answers
        finally:
            await app.close()

    answers = asyncio.run(run())
    body = {channel: answer.split("\n[")[0] for channel, answer in answers.items()}
    assert body["forgets"] == body["fresh"] != body["remembers"]
    assert "Ada" in body["remembers"]
    assert re.search(r"\[smollm2 · [^\]]*6 tokens[^\]]*max_new_tokens 6 · history 0\]", answers["forgets"])
    assert "history" not in answers["remembers"]


def test_values_are_checked_with_their_ranges():
    assert parse_value("temperature", "0.7", 2048) == 0.7
    for name, text, said in (("temperature", "0", "above 0, at most 2"), ("temperature", "nan", "above 0"),
                             ("temperature", "hot", "above 0"), ("top_p", "0", "above 0, at most 1"),
                             ("max_new_tokens", "5000", "from 1 to 2048"), ("max_new_tokens", "1.5", "whole"),
                             ("history", "-1", f"from 0 to {MAX_HISTORY}"), ("system", " ", "some text")):
        with pytest.raises(BadSetting, match=f"{name} must be .*{re.escape(said)}"):
            parse_value(name, text, 2048)
    assert canonical("Persona") == "system" and canonical("TEMP") == "temperature"
    with pytest.raises(BadSetting, match="there is no setting 'seed'"):
        canonical("seed")


def test_sampling_settings_turn_sampling_on_and_history_starts_on_a_user_turn():
    chosen = ChannelSettings(temperature=1.2, history=3)
    assert chosen.generation_overrides() == {"temperature": 1.2, "do_sample": True}
    assert ChannelSettings(max_new_tokens=9).generation_overrides() == {"max_new_tokens": 9}
    turns = [{"role": r, "content": str(i)} for i, r in enumerate(["user", "assistant"] * 3)]
    assert [t["content"] for t in chosen.trimmed_history(turns)] == ["4", "5"]  # "3" is an assistant turn
    assert ChannelSettings(history=0).trimmed_history(turns) == []
    assert ChannelSettings(history=50).trimmed_history(turns) == turns
    assert chosen.differing({"temperature": 1.2}) == ["history 3"]  # equal to the model's: not shown


def test_gemma_folds_a_channels_persona_into_the_first_user_turn(tmp_path, capsys):
    checkpoint = tmp_path / "gemma2"
    ff.tokenizer("gemma2").save_pretrained(checkpoint)
    ff.model("gemma2").config.save_pretrained(checkpoint)
    config = write_config(tmp_path, [{"name": "gemma", "source": str(checkpoint)}])

    async def set_persona():
        app = build_app(load_settings(config))
        try:
            await app.host.handle(ChatEvent("c1", "u", f"/settings system {PERSONA}"), ConsoleReply(RecordingOut(),
                                                                                                   RecordingOut()))
        finally:
            await app.close()

    asyncio.run(set_persona())
    out = prompt_json(config, tmp_path, "c1", [{"role": "user", "content": QUESTION}], capsys)
    assert out["family"] == "gemma" and "system" not in out["text"]  # Gemma 2 has no system role
    assert f"<start_of_turn>user\n{PERSONA}\n\n{QUESTION}<end_of_turn>" in out["text"]


def test_slack_settings_by_slash_command_admins_only_and_a_thread_answer_uses_them(tmp_path):
    from slack_emulator import SlackEmulator
    from test_slack import FOOTER as SLACK_FOOTER
    from test_slack import answer_in
    from test_slack import bot_config as slack_config

    async def run():
        async with SlackEmulator() as emu:
            member, admin = emu.user("member"), emu.user("admin")
            config = slack_config(tmp_path, emu, settings_change="admins", admins=[admin])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                refused = emu.slash_command(member, "/settings", "max_new_tokens 3")
                await emu.push_socket_event("slash_commands", refused)
                refusal = await emu.wait_for(lambda: [p["json"] for p in emu.response_posts[refused["command_id"]]])
                await emu.push_socket_event("slash_commands", emu.slash_command(admin, "/settings", "max_new_tokens 3"))
                changed = await emu.wait_for(lambda: [m for m in emu.bot_messages() if "is now 3" in m.text])
                _, event = await emu.push_mention(member, QUESTION)
                parts = await answer_in(emu, event["ts"])
            return refusal, changed, parts, admin

    refusal, changed, parts, admin = asyncio.run(run())
    assert "Only the bot's admins can change" in refusal[0]["text"] and refusal[0]["response_type"] == "ephemeral"
    assert changed[0].text.startswith(f"<@{admin}> `/settings max_new_tokens 3`\nmax_new_tokens is now 3")
    footer = SLACK_FOOTER.search(parts[-1].text).group(0)
    assert "3 tokens" in footer and "max_new_tokens 3" in footer
