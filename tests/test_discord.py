"""The Discord frontend end to end: the real discord.py, started through `modelbot run
discord`'s code path, talking HTTP and websocket to the local emulator (tests/discord_emulator.py),
answering with SmolLM2 on the CPU. Assertions are on what the emulator received."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from frontend_helpers import expected_replies, expected_reply, frontend_config, running_bot
from helpers import smollm2, write_config

from bot.command_table import offered
from bot.commands import as_command
from bot.app import stats_path
from bot.config import load_settings
from bot.stats import read_running_stats

FOOTER = re.compile(r"(?:^|\n)-# (?P<model>\S+) · [\d.]+ tok/s · \d+ tokens.*$")
EPHEMERAL = 64
MANAGE_GUILD = 1 << 5


# every test here: discord.py's URLs restored afterwards, and no exception swallowed by discord.py
pytestmark = pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")


def bot_config(tmp_path, emu, models=None, worker=None, **discord_settings):
    section = {"token": "test-token", "api_base": emu.api_base, "gateway_url": emu.gateway_url, **discord_settings}
    return frontend_config(tmp_path, "discord", section, models, worker)


@asynccontextmanager
async def bot_and_emulator(tmp_path, models=None, worker=None, **discord_settings):
    """An emulator, and the bot connected to it; yields (emulator, config path)."""
    async with DiscordEmulator() as emu:
        config = bot_config(tmp_path, emu, models, worker, **discord_settings)
        async with running_bot(config, "discord"):
            await emu.wait_ready()
            yield emu, config


async def answer_to(emu, pushed: dict, timeout: float = 60.0) -> list:
    """The bot's messages answering `pushed`, once its last part carries the footer."""
    def done():
        parts = [m for m in emu.bot_messages() if _answers(emu, m, pushed["id"])]
        if parts and FOOTER.search(parts[-1].content or ""):
            return parts
        if parts and (parts[-1].content or "").startswith(("⚠️", "error")):
            return parts
        return None

    return await emu.wait_for(done, timeout=timeout)


def _answers(emu, message, root_id: str) -> bool:
    """Whether `message` is in the chain of replies under `root_id`."""
    seen = 0
    while message is not None and seen < 100:
        reference = (message.message_reference or {}).get("message_id")
        if reference == root_id:
            return True
        message = emu.messages.get(reference)
        seen += 1
    return False


def text_of(parts) -> str:
    return "".join(FOOTER.sub("", part.content) for part in parts)


def test_a_mention_streams_the_greedy_answer_with_paced_edits(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, [smollm2(generation={"do_sample": False, "max_new_tokens": 60})])
            expected = await expected_reply(config, [{"role": "user", "content": "Tell me about the sea."}])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                alice = emu.user("alice")
                pushed = await emu.push_message(alice, "Tell me about the sea.", mentions_bot=True)
                parts = await answer_to(emu, pushed)
                return expected, parts

    expected, parts = asyncio.run(run())
    assert len(parts) == 1
    reply = parts[0]
    assert text_of(parts) == expected and expected
    assert FOOTER.search(reply.content).group("model") == "smollm2"
    versions = [v["content"] for v in reply.history]
    assert versions[0] == "…"  # the placeholder came first
    texts = [v for v in versions[1:] if not v.startswith(("…", "queued"))]
    assert all(b.startswith(FOOTER.sub("", a)) for a, b in zip(texts, texts[1:])), versions  # only grows
    edit_times = [v["time"] for v in reply.history[1:-1]]  # the last edit (footer) is never held back
    assert all(b - a >= 0.95 for a, b in zip(edit_times, edit_times[1:])), edit_times  # ~1 edit/s at most


def test_a_reply_to_the_answer_continues_the_conversation(tmp_path):
    first_question = "My favourite colour is green. Say OK."
    second_question = "What is my favourite colour?"

    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            bob = emu.user("bob")
            first = await emu.push_message(bob, first_question, mentions_bot=True)
            answer = await answer_to(emu, first)
            follow_up = await emu.push_message(bob, second_question, reply_to=answer[-1].id)
            second = await answer_to(emu, follow_up)
            history = [{"role": "user", "content": first_question}, {"role": "assistant", "content": text_of(answer)},
                   {"role": "user", "content": second_question}]
            with_history = await expected_reply(config, history)
            without = await expected_reply(config, [{"role": "user", "content": second_question}])
            return text_of(second), with_history, without

    got, with_history, without = asyncio.run(run())
    assert got == with_history
    assert with_history != without  # the earlier turns really changed the answer


def test_slash_model_switches_and_persists_across_a_restart(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, models)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                carol = emu.user("carol")
                suggestions = await emu.push_interaction(carol, "model", {"name": "sec"}, kind=4)
                await emu.wait_for(lambda: emu.interactions[suggestions["id"]].choices is not None)
                switched = await emu.push_interaction(carol, "model", {"name": "second"})
                record = await emu.wait_for(lambda: _edited_original(emu, switched["id"]))
            async with running_bot(config, "discord"):  # a restart: same config, same sqlite store
                await emu.wait_for(lambda: len(emu.identify_payloads) == 2, timeout=30)
                pushed = await emu.push_message(carol, "Hi", mentions_bot=True)
                parts = await answer_to(emu, pushed)
            return emu.interactions[suggestions["id"]].choices, record, parts

    choices, record, parts = asyncio.run(run())
    assert [choice["value"] for choice in choices] == ["second"]
    assert "now uses second" in record
    assert FOOTER.search(parts[-1].content).group("model") == "second"


def _edited_original(emu, interaction_id: str) -> str | None:
    original = emu.interactions[interaction_id].original_id
    message = emu.messages.get(original) if original else None
    return message.content if message is not None and message.content else None


def test_layers_by_slash_command_and_by_asking(tmp_path):
    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            dave = emu.user("dave")
            slash = await emu.push_interaction(dave, "layers")
            summary = await emu.wait_for(lambda: "LlamaForCausalLM" in (_edited_original(emu, slash["id"]) or "")
                                         and _edited_original(emu, slash["id"]), timeout=60)
            def slash_files():
                found = [a for m in emu.messages.values() if m.interaction_id == slash["id"] for a in m.attachments]
                return found if len(found) == 2 else None  # the tree, then the picture

            await emu.wait_for(slash_files, timeout=60)
            asked = await emu.push_message(dave, "show me the layers", mentions_bot=True)

            def attached():
                found = [m for m in emu.bot_messages() if m.attachments and _answers(emu, m, asked["id"])]
                return found if len(found) == 2 else None

            files = await emu.wait_for(attached, timeout=60)
            answer = [m for m in emu.bot_messages() if _answers(emu, m, asked["id"]) and not m.attachments]
            return summary, slash_files(), answer, files

    summary, slash_files, answer, files = asyncio.run(run())
    assert "`smollm2` · LlamaForCausalLM" in summary and "memory: 538.1 MB" in summary
    assert [a["filename"] for a in slash_files] == ["smollm2-layers.txt", "smollm2-layers.png"]
    assert answer[0].content.split("\n")[:3] == summary.split("\n")[:3]  # the same answer as /layers
    assert files[0].attachments[0]["filename"] == "smollm2-layers.txt"
    assert b"LlamaForCausalLM" in files[0].attachments[0]["data"]
    # the picture, as bytes over multipart: a PNG that opens, at its size, captioned
    import io

    from PIL import Image

    assert files[1].attachments[0]["filename"] == "smollm2-layers.png" and files[1].content == "layers as a picture"
    for png in (slash_files[1]["data"], files[1].attachments[0]["data"]):
        assert Image.open(io.BytesIO(png)).size == (1200, 675)
    assert slash_files[1]["data"] == files[1].attachments[0]["data"]


def test_compare_answers_with_both_models_labelled(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with bot_and_emulator(tmp_path, models) as (emu, config):
            erin = emu.user("erin")
            compared = await emu.push_interaction(erin, "compare", {"prompt": "What is 2+2?"})

            def both():
                messages = [m for m in emu.messages.values() if m.interaction_id == compared["id"]
                            or m.origin == "webhook"]
                done = [m for m in messages if FOOTER.search(m.content or "")]
                return messages if len(done) == 2 else None

            messages = await emu.wait_for(both, timeout=90)
            # the typed `layers` option, without a prompt: one picture with both models side by side
            drawn = await emu.push_interaction(erin, "compare", {"layers": "smollm2,second"})
            pictures = await emu.wait_for(lambda: [a for m in emu.messages.values() if m.interaction_id == drawn["id"]
                                                   for a in m.attachments], timeout=90)
            return messages, pictures

    messages, pictures = asyncio.run(run())
    labelled = sorted(m.content.split("\n", 1)[0] for m in messages if FOOTER.search(m.content or ""))
    assert labelled == ["**── second ──**", "**── smollm2 ──**"]
    import io

    from PIL import Image

    assert [a["filename"] for a in pictures] == ["smollm2-vs-second-layers.png"]
    assert Image.open(io.BytesIO(pictures[0]["data"])).size == (1800, 675)


def test_a_long_answer_is_split_without_loss_or_duplication(tmp_path):
    story = "Write a long story about a dragon and a knight."
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 160})

    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, [model], message_limit=100, edit_interval=0.2)
            expected = await expected_reply(config, [{"role": "user", "content": story}])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                frank = emu.user("frank")
                pushed = await emu.push_message(frank, story, mentions_bot=True)
                parts = await answer_to(emu, pushed, timeout=120)
            return expected, parts, emu.find_requests("POST", r"/channels/\d+/messages$")

    expected, parts, posts = asyncio.run(run())
    assert len(parts) >= 4 and all(len(p.content) <= 100 for p in parts)
    assert all(p.content for p in parts) and FOOTER.search(parts[-1].content)
    assert text_of(parts) == expected  # joined back, nothing lost and nothing twice
    assert len(posts) == len(parts)  # each part posted exactly once
    for earlier, later in zip(parts, parts[1:]):  # sealed parts were never shortened
        assert later.message_reference["message_id"] == earlier.id


def test_rate_limited_edit_is_retried_and_forbidden_send_is_survived(tmp_path, caplog):
    async def run():
        async with bot_and_emulator(tmp_path, edit_interval=0.3) as (emu, config):
            gina = emu.user("gina")
            emu.fail_next("PATCH", r"/channels/\d+/messages/\d+", 429, retry_after=0.5)
            first = await emu.push_message(gina, "What is the capital of France?", mentions_bot=True)
            answered = await answer_to(emu, first)
            emu.fail_next("POST", r"/channels/\d+/messages$", 403)
            refused = await emu.push_message(gina, "Hello?", mentions_bot=True)
            await emu.wait_for(lambda: any("no permission to write" in r.getMessage() for r in caplog.records))
            again = await emu.push_message(gina, "What is the capital of France?", mentions_bot=True)
            answered_again = await answer_to(emu, again)
            return answered, refused, answered_again, emu.find_requests("PATCH", r"/channels/\d+/messages/\d+")

    answered, refused, answered_again, patches = asyncio.run(run())
    statuses = [r.status for r in patches]
    assert statuses[0] == 429 and statuses[1] == 200  # waited out and retried, never dropped
    assert patches[1].time - patches[0].time >= 0.45
    assert "Paris" in text_of(answered) and "Paris" in text_of(answered_again)
    assert any(f"channel {refused['channel_id']}" in r.getMessage() for r in caplog.records
               if r.name == "bot.frontends.discord")


def test_model_switch_for_admins_only(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, models, model_switch="admins", admins=[int(emu.admin_role_id)],
                                guilds=[int(emu.guild_id)])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                return await switch_as_member_then_admin(emu)

    refusal, switched, synced = asyncio.run(run())
    assert "Only the bot's admins" in refusal.content and refusal.flags & EPHEMERAL  # to the asker only
    assert "now uses second" in switched
    table = offered(host_keeps_history=False)  # Discord's commands are the command table's
    assert [(c["name"], c["description"]) for c in synced] == [(spec.name, spec.summary) for spec in table]
    assert [[(o["name"], o["description"], o.get("required", False)) for o in c["options"]] for c in synced] == \
        [sorted([(o.name, o.description, o.required) for o in spec.options], key=lambda o: not o[2]) for spec in table]
    assert [c["name"] for c in synced] == ["model", "models", "layers", "compare", "settings", "stop", "stats",
                                           "help"]
    permissions = {c["name"]: c.get("default_member_permissions") for c in synced}
    assert int(permissions.pop("model")) == MANAGE_GUILD  # hidden from members who cannot manage the server
    assert set(permissions.values()) == {None}


async def switch_as_member_then_admin(emu):
    member = emu.user("member")
    admin = emu.user("admin", roles=[emu.admin_role_id])
    refused = await emu.push_interaction(member, "model", {"name": "second"})
    refusal = await emu.wait_for(lambda: ephemeral_answer(emu, refused["id"]))
    allowed = await emu.push_interaction(admin, "model", {"name": "second"})
    switched = await emu.wait_for(lambda: _edited_original(emu, allowed["id"]))
    return refusal, switched, emu.commands[emu.guild_id]


def ephemeral_answer(emu, interaction_id: str):
    """The interaction's ephemeral message with text (a deferred private answer, or a follow-up)."""
    found = [m for m in emu.messages.values() if m.interaction_id == interaction_id and m.flags & EPHEMERAL
             and m.content and not m.deleted]
    return found[-1] if found else None


def test_its_own_and_other_bots_messages_and_unaddressed_ones_are_ignored(tmp_path):
    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            other_bot = emu.user("otherbot", bot=True)
            await emu.push_message(emu.bot_user, "Talking to myself", mentions_bot=True)
            await emu.push_message(other_bot, "Hello bot", mentions_bot=True)
            await emu.push_message(emu.user("henry"), "Just chatting, no mention")
            await asyncio.sleep(1.5)
            silent = list(emu.bot_messages())
            pushed = await emu.push_message(emu.user("henry"), "What is 2+2?", mentions_bot=True)
            await answer_to(emu, pushed)
            return silent, emu.bot_messages()

    silent, after = asyncio.run(run())
    assert [m for m in silent if m.origin != "user"] == []
    assert len([m for m in after if m.origin != "user"]) == 1  # and it still answers a real mention


def test_asking_for_layers_in_words_becomes_the_command():
    assert as_command("show me the layers") == "/layers"
    assert as_command("please show the layers of gemma-2-2b") == "/layers gemma-2-2b"
    assert as_command("Display layers for smollm2") == "/layers smollm2"
    assert as_command("what are layers in a cake?") == "what are layers in a cake?"


def test_long_work_continues_as_channel_messages_once_the_interaction_token_expired(tmp_path, monkeypatch):
    import bot.frontends.discord as frontend

    monkeypatch.setattr(frontend, "TOKEN_LIFETIME", 0.0)  # as if the 15 minutes had passed after the defer

    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            ivy = emu.user("ivy")
            compared = await emu.push_interaction(ivy, "compare", {"prompt": "What is 2+2?"})
            await emu.wait_for(lambda: emu.interactions[compared["id"]].callbacks)
            emu.expire_interaction(compared["id"])
            in_channel = await emu.wait_for(
                lambda: [m for m in emu.bot_messages() if m.origin == "rest" and FOOTER.search(m.content or "")],
                timeout=60)
            return emu.interactions[compared["id"]], in_channel

    interaction, in_channel = asyncio.run(run())
    assert interaction.callbacks[0]["type"] == 5  # deferred within the 3 s
    assert in_channel[0].content.startswith("**── smollm2 ──**")


def test_a_waiting_reply_shows_its_queue_position(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 120})
            config = bot_config(tmp_path, emu, [long_answers], worker={"batching": "off"}, edit_interval=0.3)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                first = await emu.push_message(emu.user("jack"), "Write a long story about a dragon and a knight.",
                                               mentions_bot=True)
                await emu.wait_for(lambda: [m for m in emu.bot_messages() if _answers(emu, m, first["id"])
                                            and m.content not in ("…",) and not m.content.startswith("…")])
                second = await emu.push_message(emu.user("kate"), "Name a color.", mentions_bot=True)
                parts = await answer_to(emu, second)
                await answer_to(emu, first)
                return [v["content"] for v in parts[0].history]

    versions = asyncio.run(run())
    assert "queued: 1st" in versions and FOOTER.search(versions[-1])


def test_threads_mentioned_in_and_threads_of_its_own(tmp_path):
    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            liam = emu.user("liam")
            theirs = await emu.create_thread("questions", owner_id=liam["id"])
            asked = await emu.push_message(liam, "What is 2+2?", mentions_bot=True, thread=theirs["id"])
            in_thread = await answer_to(emu, asked)
            unaddressed = await emu.push_message(liam, "thanks", thread=theirs["id"])
            own = await emu.create_thread("bot thread", owner_id=emu.bot_user_id)
            no_mention = await emu.push_message(liam, "What is the capital of France?", thread=own["id"])
            in_own = await answer_to(emu, no_mention)
            await asyncio.sleep(0.5)
            ignored = [m for m in emu.bot_messages() if _answers(emu, m, unaddressed["id"])]
            return theirs, own, in_thread, in_own, ignored

    theirs, own, in_thread, in_own, ignored = asyncio.run(run())
    assert in_thread[0].channel_id == theirs["id"] and in_own[0].channel_id == own["id"]
    assert "Paris" in text_of(in_own)
    assert ignored == []  # in someone else's thread it still needs a mention


def test_a_model_that_cannot_load_answers_with_the_reason(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            broken = {"name": "broken", "source": str(tmp_path / "no-such-model")}
            config = bot_config(tmp_path, emu, [broken])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                pushed = await emu.push_message(emu.user("mia"), "Hello", mentions_bot=True)
                return await emu.wait_for(
                    lambda: [m for m in emu.bot_messages() if _answers(emu, m, pushed["id"]) and "⚠️" in m.content])

    (reply,) = asyncio.run(run())
    assert "could not load model broken" in reply.content or "no-such-model" in reply.content


def test_discord_settings_env_overrides_and_errors_name_the_key(monkeypatch):
    from bot.config import ConfigError
    from bot.frontends.discord_settings import parse_discord_settings

    monkeypatch.setenv("DISCORD_TOKEN", "from-env")
    monkeypatch.setenv("DISCORD_API_BASE", "http://selfhosted.example/api/v9/")
    parsed = parse_discord_settings({"token": "from-file", "guilds": "1, 2", "admins": [3], "model_switch": "Admins"})
    assert parsed.token == "from-env" and parsed.api_base == "http://selfhosted.example/api/v9"
    assert parsed.guilds == (1, 2) and parsed.admins == frozenset({3}) and parsed.model_switch == "admins"
    for bad, key in (({"model_switch": "mods"}, "discord.model_switch"), ({"guilds": ["general"]}, "discord.guilds"),
                     ({"edit_interval": -1}, "discord.edit_interval"), ({"colour": "red"}, "discord.colour")):
        with pytest.raises(ConfigError, match=key):
            parse_discord_settings(bad)


def small_context_copy(tmp_path, context: int) -> str:
    """SmolLM2 as a local checkpoint whose config claims a tiny context (weights linked, not copied)."""
    from bot.catalog import ModelCatalog
    from bot.plugins import load_plugins
    from bot.worker.loading import ModelLoader

    (tmp_path / "convert").mkdir()
    settings = load_settings(write_config(tmp_path / "convert", [smollm2()]))
    source = Path(ModelLoader(ModelCatalog(settings, load_plugins())).checkpoint(settings.model("smollm2")))
    target = tmp_path / "small-context"
    target.mkdir()
    for item in source.iterdir():
        if item.name != "config.json":
            (target / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    config["max_position_embeddings"] = context
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


def test_a_long_reply_chain_is_trimmed_with_a_note(tmp_path):
    padding = " ".join(["This is a detail you may forget."] * 8)
    small = {"name": "small", "source": small_context_copy(tmp_path, 200),
             "generation": {"do_sample": False, "max_new_tokens": 16}}

    async def run():
        async with bot_and_emulator(tmp_path, [small]) as (emu, config):
            nora = emu.user("nora")
            pushed = await emu.push_message(nora, f"First: {padding}", mentions_bot=True)
            answer = await answer_to(emu, pushed)
            for turn in ("Second", "Third"):
                pushed = await emu.push_message(nora, f"{turn}: {padding}", reply_to=answer[-1].id)
                answer = await answer_to(emu, pushed)
            return answer

    answer = asyncio.run(run())
    assert "oldest messages did not fit small's context and were left out" in answer[-1].content


def test_only_the_configured_channels_are_answered(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, channels=[int(emu.channel_id)])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                olga = emu.user("olga")
                elsewhere = await emu.push_message(olga, "What is 2+2?", mentions_bot=True,
                                                   channel_id=emu.other_channel_id)
                here = await emu.push_message(olga, "What is 2+2?", mentions_bot=True)
                await answer_to(emu, here)
                return [m for m in emu.bot_messages() if _answers(emu, m, elsewhere["id"])]

    assert asyncio.run(run()) == []


def test_deleting_the_question_stops_its_answer(tmp_path):
    long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 400})

    async def run():
        async with bot_and_emulator(tmp_path, [long_answers], edit_interval=0.3) as (emu, config):
            pia = emu.user("pia")
            pushed = await emu.push_message(pia, "Write a long story about a dragon and a knight.", mentions_bot=True)
            await emu.wait_for(lambda: [m for m in emu.bot_messages() if _answers(emu, m, pushed["id"])
                                        and not m.content.startswith("…")], timeout=30)
            await emu.dispatch("MESSAGE_DELETE", {"id": pushed["id"], "channel_id": pushed["channel_id"],
                                                  "guild_id": emu.guild_id})
            stopped = await emu.wait_for(lambda: [m for m in emu.bot_messages() if _answers(emu, m, pushed["id"])
                                                  and "⚠️ stopped" in m.content], timeout=30)
            versions = len(stopped[-1].history)  # a count, taken now: the message itself changes in place
            await asyncio.sleep(1.0)
            return stopped, versions, len(emu.bot_messages())

    stopped, versions, messages = asyncio.run(run())
    assert stopped[-1].content.endswith("⚠️ stopped: the message it answered was deleted")
    assert len(FOOTER.sub("", stopped[-1].content)) < 1500  # far from 400 tokens: generation really stopped
    assert len(stopped[-1].history) == versions and messages == len(stopped)  # nothing was written after that


# -- Discord's limits, faults and safety -----------------------------------------------------------

def _answer_parts(emu, pushed_id: str) -> list:
    return [m for m in emu.bot_messages() if _answers(emu, m, pushed_id)]


def _non_final_gaps(message) -> list[float]:
    """Seconds between consecutive versions of a message, the last (final) one left out."""
    times = [version["time"] for version in message.history[:-1]]
    return [b - a for a, b in zip(times, times[1:])]


def test_sixty_four_mentions_in_one_channel_are_all_answered_within_discords_write_limit(tmp_path):
    """16 users, 4 mentions each, at once, in one channel under Discord's real bucket (5 writes
    per 5 s, 429s with truthful headers): every mention gets exactly one complete answer, equal
    to the model's, and the bot never tried more writes than the bucket allows."""
    questions = [f"What is {n} plus {n}?" for n in range(8)]
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 12})

    async def run():
        async with DiscordEmulator() as emu:  # the default bucket: 5 writes per 5 s per channel
            config = bot_config(tmp_path, emu, [model])
            expected = await expected_replies(config, [[{"role": "user", "content": q}] for q in questions])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                users = [emu.user(f"user{n}") for n in range(16)]
                pushed = await asyncio.gather(*(emu.push_message(users[n % 16], questions[n % 8], mentions_bot=True)
                                                for n in range(64)))
                answers = [await answer_to(emu, mention, timeout=400) for mention in pushed]
                await asyncio.sleep(1.0)
                return emu, pushed, answers, dict(zip(questions, expected))

    emu, pushed, answers, expected = asyncio.run(run())
    assert emu.rate_limited == []  # not one write refused...
    assert emu.max_writes_in_window(emu.channel_id, 5.0) <= 5  # ...because none went over the bucket
    for n, (mention, parts) in enumerate(zip(pushed, answers)):
        assert len(parts) == 1 and len(_answer_parts(emu, mention["id"])) == 1  # one answer per mention
        assert text_of(parts) == expected[questions[n % 8]] and "⚠️" not in parts[0].content
        assert all(gap >= 0.95 for gap in _non_final_gaps(parts[0])), parts[0].history  # edit_interval 1 s
    assert len(emu.bot_messages()) == 64


def test_bursts_of_429s_server_errors_and_dropped_connections_never_reach_the_answers(tmp_path):
    """Eight answers while Discord answers writes with bursts of 429s (more than discord.py's
    five tries), 503s and dropped connections: all eight end complete, equal to the answers
    without faults, and no error text reaches a channel."""
    questions = [f"Name a {thing}." for thing in ("color", "fruit", "planet", "river", "tree", "bird", "city", "tool")]
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 48})

    async def run():
        async with DiscordEmulator(rate_limit=None) as emu:
            config = bot_config(tmp_path, emu, [model], edit_interval=0.3)
            expected = await expected_replies(config, [[{"role": "user", "content": q}] for q in questions])
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                writes = r"/channels/\d+/messages"
                emu.fail_next("POST", writes, 429, retry_after=0.1, times=7)  # discord.py gives up after 5
                pushed = await asyncio.gather(*(emu.push_message(emu.user(f"u{n}"), q, mentions_bot=True)
                                                for n, q in enumerate(questions)))
                await emu.wait_for(lambda: len(emu.bot_messages()) == 8, timeout=30)
                for _ in range(2):  # while the answers grow: their edits fail in every way
                    emu.fail_next("PATCH", writes, 503, times=2)
                    emu.fail_next("PATCH", writes, 0, times=2)  # the connection drops without an answer
                    emu.fail_next("PATCH", writes, 429, retry_after=0.2, times=6)
                    await asyncio.sleep(0.5)
                answers = [await answer_to(emu, mention, timeout=120) for mention in pushed]
                return emu, answers, expected

    emu, answers, expected = asyncio.run(run())
    statuses = [r.status for r in emu.requests if re.search(r"/channels/\d+/messages", r.path)]
    assert statuses.count(429) >= 12 and 503 in statuses and 0 in statuses  # the faults really happened
    assert [text_of(parts) for parts in answers] == expected
    assert not any("⚠️" in m.content or "error" in m.content.lower() for m in emu.bot_messages())


def test_model_text_and_echoed_arguments_never_ping_anyone(tmp_path):
    """Greedy SmolLM2 repeats '<@123> @everyone' when asked; an unknown /model name (a role's
    mention) is echoed in the error. Every message the bot writes forbids all pings in
    allowed_mentions, so nobody is pinged."""
    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            rita = emu.user("rita")
            asked = await emu.push_message(rita, "Repeat exactly: <@123> <@&456> @everyone", mentions_bot=True)
            answer = await answer_to(emu, asked)
            echoed = await emu.push_message(rita, f"/model <@&{emu.admin_role_id}>", mentions_bot=True)
            error = await emu.wait_for(lambda: [m for m in _answer_parts(emu, echoed["id"]) if "error" in m.content])
            return emu, answer, error

    emu, answer, error = asyncio.run(run())
    assert "<@123> @everyone" in answer[0].content  # there was something to ping with
    assert f"<@&{emu.admin_role_id}>" in error[0].content
    writes = [entry for m in emu.bot_messages() for entry in m.allowed_mentions_history]
    assert writes and all(entry is not None and entry.get("parse") == [] and not entry.get("users")
                          and not entry.get("roles") and not entry.get("replied_user") for entry in writes)
    assert all(ping == {"users": [], "roles": [], "everyone": False} for m in emu.bot_messages() for ping in m.pings)


def test_slash_commands_obey_channels_and_dms_like_mentions(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu, models, channels=[int(emu.channel_id)], allow_dms=False)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                sam = emu.user("sam")
                dm = emu.dm_channel(sam)
                tried = [await emu.push_interaction(sam, "compare", {"prompt": "What is 2+2?"},
                                                    channel_id=emu.other_channel_id),
                         await emu.push_interaction(sam, "model", {"name": "second"}, channel_id=emu.other_channel_id),
                         await emu.push_interaction(sam, "compare", {"prompt": "What is 2+2?"}, channel_id=dm),
                         await emu.push_interaction(sam, "model", {"name": "second"}, channel_id=dm)]
                await emu.push_message(sam, "What is 2+2?", channel_id=dm)
                refusals = await emu.wait_for(lambda: [ephemeral_answer(emu, t["id"]) for t in tried]
                                              if all(ephemeral_answer(emu, t["id"]) for t in tried) else None)
                await asyncio.sleep(1.0)
                silent = [m for m in emu.bot_messages() if not m.flags & EPHEMERAL]
                here = await emu.push_message(sam, "What is 2+2?", mentions_bot=True)
                parts = await answer_to(emu, here)
                return emu, refusals, silent, parts

    emu, refusals, silent, parts = asyncio.run(run())
    assert all("don't answer here" in r.content for r in refusals)
    assert silent == []  # nothing ran: no model output anywhere, the DM ignored
    assert FOOTER.search(parts[-1].content).group("model") == "smollm2"  # /model second was not saved
    assert {tuple(c["contexts"]) for c in emu.commands[None]} == {(0,)}  # not offered in DMs at all


def test_a_dm_is_answered_where_dms_are_allowed(tmp_path):
    async def run():
        async with bot_and_emulator(tmp_path, allow_dms=True) as (emu, config):
            tina = emu.user("tina")
            dm = emu.dm_channel(tina)
            pushed = await emu.push_message(tina, "What is the capital of France?", channel_id=dm)
            return emu, dm, await answer_to(emu, pushed)

    emu, dm, parts = asyncio.run(run())
    assert parts[0].channel_id == dm and "Paris" in text_of(parts)
    assert {tuple(c["contexts"]) for c in emu.commands[None]} == {(0, 1)}  # commands offered in DMs too


def test_a_reply_deleted_while_it_streams_ends_quietly_and_frees_the_worker(tmp_path):
    long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 400})  # ~30 s of generating

    def generating(config) -> int | None:
        """What the running bot's /stats snapshot (rewritten every 2 s) says is generating."""
        snapshot, _ = read_running_stats(stats_path(load_settings(config)))
        return snapshot["running"] if snapshot else None

    async def run():
        async with bot_and_emulator(tmp_path, [long_answers], edit_interval=0.3) as (emu, config):
            uma = emu.user("uma")
            pushed = await emu.push_message(uma, "Write a long story about a dragon and a knight.", mentions_bot=True)
            growing = await emu.wait_for(lambda: [m for m in _answer_parts(emu, pushed["id"])
                                                  if len(m.content) > 40], timeout=30)
            await emu.wait_for(lambda: generating(config) == 1, timeout=10)
            await emu.delete_message(growing[0].id)  # a moderator removes the bot's reply
            await emu.wait_for(lambda: generating(config) == 0, timeout=10)  # far sooner than the 400 tokens
            after = await emu.push_message(uma, "Name a color.", mentions_bot=True)
            second = await answer_to(emu, after)
            await asyncio.sleep(1.0)
            return emu, growing[0], second

    emu, deleted, second = asyncio.run(run())
    assert [m for m in emu.bot_messages() if m.id != deleted.id and m not in second] == []  # no error posted
    assert [r.status for r in emu.requests if deleted.id in r.path][-1] == 404  # nothing tried after the 404
    assert FOOTER.search(second[-1].content)  # and the bot goes on answering


def test_help_stats_refusals_and_errors_are_ephemeral_and_reset_is_not_offered(tmp_path):
    async def run():
        async with bot_and_emulator(tmp_path) as (emu, config):
            vic = emu.user("vic")
            sent = {name: await emu.push_interaction(vic, name) for name in ("help", "stats")}
            sent["error"] = await emu.push_interaction(vic, "model", {"name": "no-such-model"})
            answers = await emu.wait_for(lambda: {k: ephemeral_answer(emu, p["id"]) for k, p in sent.items()}
                                         if all(ephemeral_answer(emu, p["id"]) for p in sent.values()) else None,
                                         timeout=30)
            typed = await emu.push_message(vic, "/reset", mentions_bot=True)
            reset = await emu.wait_for(lambda: [m for m in _answer_parts(emu, typed["id"]) if m.content != "…"])
            await asyncio.sleep(0.5)
            public = [m for m in emu.messages.values() if m.interaction_id in {p["id"] for p in sent.values()}
                      and not m.flags & EPHEMERAL and not m.deleted]
            return emu, answers, reset, public

    emu, answers, reset, public = asyncio.run(run())
    assert "/compare" in answers["help"].content and "/reset" not in answers["help"].content
    assert answers["stats"].content.startswith("```\ndevice cpu")
    assert "no-such-model" in answers["error"].content
    assert public == []  # nothing of these three was shown to the channel
    assert "reset" not in [c["name"] for c in emu.commands[None]]
    assert "Nothing to forget here" in reset[0].content


def test_moving_from_global_to_guild_commands_leaves_no_duplicates(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                await emu.wait_for(lambda: emu.commands.get(None))
                global_before = [c["name"] for c in emu.commands[None]]
            config = bot_config(tmp_path, emu, guilds=[int(emu.guild_id)])
            async with running_bot(config, "discord"):
                await emu.wait_for(lambda: len(emu.identify_payloads) == 2, timeout=30)
                await emu.wait_for(lambda: emu.commands.get(emu.guild_id) and emu.commands.get(None) == [])
            return global_before, emu.commands

    global_before, commands = asyncio.run(run())
    assert "compare" in global_before
    assert commands[None] == [] and [c["name"] for c in commands[emu_guild(commands)]] == global_before


def emu_guild(commands: dict) -> str:
    return next(key for key in commands if key is not None)
