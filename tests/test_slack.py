"""The Slack frontend end to end: the real slack-bolt and slack_sdk, started through `modelbot
run slack`'s code path, talking HTTP and websocket (Socket Mode) to the local emulator
(tests/slack_emulator.py), answering with SmolLM2 on the CPU. Assertions are on what the
emulator received."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from frontend_helpers import expected_replies, expected_reply, frontend_config, running_bot
from helpers import REPO, smollm2
from slack_emulator import DEFAULT_RATE_LIMITS, SlackEmulator, no_swallowed_slack_errors  # noqa: F401

from bot.config import ConfigError
from bot.frontends.mrkdwn import to_mrkdwn

FOOTER = re.compile(r"(?:^|\n)_(?P<model>\S+) · [\d.]+ tok/s · \d+ tokens[^\n]*_$")
SECRET = "test-signing-secret"

# every test here: no exception swallowed (logged) by slack-bolt or slack_sdk
pytestmark = pytest.mark.usefixtures("no_swallowed_slack_errors")


def bot_config(tmp_path, emu, models=None, worker=None, **slack_settings):
    section = {"bot_token": emu.bot_token, "app_token": emu.app_token, "api_base": emu.api_base, **slack_settings}
    return frontend_config(tmp_path, "slack", section, models, worker)


def limits_for(**slack_settings) -> dict:
    """Slack's tiers as the emulator enforces them, with chat.update at the budget the bot is
    given (tests that raise `edits_per_minute` to run faster raise the workspace's limit too)."""
    return {**DEFAULT_RATE_LIMITS, "chat.update": (slack_settings.get("edits_per_minute", 50), 60.0)}


@asynccontextmanager
async def socket_bot(tmp_path, models=None, worker=None, emulator: dict | None = None, **slack_settings):
    """An emulator, and the bot connected to it over Socket Mode; yields (emulator, config)."""
    async with SlackEmulator(rate_limits=limits_for(**slack_settings), **(emulator or {})) as emu:
        config = bot_config(tmp_path, emu, models, worker, **slack_settings)
        async with running_bot(config, "slack"):
            await emu.wait_socket_connected(timeout=30)
            yield emu, config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def answer_in(emu, thread_ts: str, timeout: float = 60.0, count: int = 1) -> list:
    """The bot's messages in the thread, once `count` of them carry a footer (or one an error)."""
    def done():
        parts = emu.bot_messages(thread_ts=thread_ts)
        if sum(bool(FOOTER.search(m.text)) for m in parts) >= count:
            return parts
        if parts and parts[-1].text.startswith(("⚠️", "error")):
            return parts
        return None

    return await emu.wait_for(done, timeout=timeout)


def text_of(parts) -> str:
    return "".join(FOOTER.sub("", part.text) for part in parts)


async def push_thread_message(emu, user: str, text: str, thread_ts: str) -> str:
    """A human writes in a thread without mentioning the bot: Slack sends a `message` event."""
    message = emu.post_user_message(user, text, thread_ts=thread_ts)
    await emu.push_socket_event("events_api", emu.event_callback(emu.message_event(message)))
    return message.ts


def test_http_mode_signed_mention_streams_the_greedy_answer_in_a_thread(tmp_path):
    question = "Tell me about the sea."
    port = free_port()

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, [smollm2(generation={"do_sample": False, "max_new_tokens": 60})],
                                mode="http", signing_secret=SECRET, port=port, host="127.0.0.1", app_token="",
                                streaming="off")
            expected = await expected_reply(config, [{"role": "user", "content": question}])
            async with running_bot(config, "slack"):
                await wait_listening(port)
                url = f"http://127.0.0.1:{port}/slack/events"
                body = emu.event_callback(emu.app_mention(emu.user("alice"), question))
                refused = [(await emu.deliver(url, body, None))[0],
                           (await emu.deliver(url, body, SECRET, timestamp=int(time.time()) - 600))[0],
                           (await emu.deliver(url, body, "not the secret"))[0]]
                await asyncio.sleep(0.5)
                after_refused = list(emu.requests)
                status, _, took = await emu.deliver(url, body, SECRET)
                parts = await answer_in(emu, body["event"]["ts"])
                retried = await emu.deliver(url, body, SECRET, retry_num=1, retry_reason="http_timeout")
                await asyncio.sleep(1.0)
                answers_after_retry = len(emu.bot_messages())
                command = emu.slash_command(emu.user("alma"), "/models")  # form-encoded, signed, same URL
                acked = await emu.deliver(url, command, SECRET)
                listed = await emu.wait_for(lambda: [m for m in emu.bot_messages() if "`/models`" in m.text
                                                     and "smollm2" in m.text])
                return expected, refused, after_refused, (status, took), parts, retried, answers_after_retry, \
                    acked, listed, emu

    expected, refused, after_refused, (status, took), parts, retried, answers_after_retry, acked, listed, emu = \
        asyncio.run(run())
    assert refused == [401, 401, 401]
    assert [r.method for r in after_refused] == ["auth.test"]  # the bot's own start-up: nothing else happened
    assert status == 200 and took < 3  # acked at once; the answer follows
    assert len(parts) == 1 and expected
    (reply,) = parts
    assert text_of(parts) == to_mrkdwn(expected)
    assert FOOTER.search(reply.text).group("model") == "smollm2"
    versions = [text for text, _, _ in reply.history]
    assert versions[0] == "…"  # the placeholder came first, in the thread
    texts = [FOOTER.sub("", v) for v in versions[1:] if not v.startswith(("…", "queued"))]
    assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:])), versions  # only grows
    edit_times = [t for _, _, t in reply.history[1:-1]]  # the last edit (footer) is never held back
    assert all(b - a >= 1.4 for a, b in zip(edit_times, edit_times[1:])), edit_times  # ~1 edit per 1.5 s
    assert retried[0] == 200  # the retry is acknowledged...
    assert answers_after_retry == 1 and len(emu.find_requests("chat.postMessage")) == 2  # ...and not answered
    assert acked[0] == 200 and acked[2] < 3 and listed[0].thread_ts is None  # a slash command over HTTP too


def test_socket_mode_mention_is_acked_answered_once_and_the_thread_continues(tmp_path):
    first_question = "My favourite colour is green. Say OK."
    second_question = "What is my favourite colour?"

    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            bob = emu.user("bob")
            eid, event = await emu.push_mention(bob, first_question)
            await emu.wait_for(lambda: eid in emu.acks)
            answer = await answer_in(emu, event["ts"])
            again = await emu.redeliver(eid, "timeout")  # Slack's retry: retry_attempt 1
            await emu.wait_for(lambda: again in emu.acks)
            await push_thread_message(emu, bob, second_question, event["ts"])
            both = await answer_in(emu, event["ts"], count=2)
            unrelated = emu.post_user_message(bob, "a thread the bot is not in")
            await push_thread_message(emu, bob, "no one asked the bot here", unrelated.ts)
            await asyncio.sleep(1.0)
            history = [{"role": "user", "content": first_question},
                       {"role": "assistant", "content": text_of(answer)},
                       {"role": "user", "content": second_question}]
            with_history = await expected_reply(config, history)
            without = await expected_reply(config, [{"role": "user", "content": second_question}])
            return emu, eid, answer, both, unrelated, with_history, without

    emu, eid, answer, both, unrelated, with_history, without = asyncio.run(run())
    assert emu.acks[eid].time - emu.envelopes[eid].time < 3
    assert len(answer) == 1 and answer[0].thread_ts == emu.envelopes[eid].payload["event"]["ts"]
    assert len(both) == 2  # the retry got no answer of its own, the follow-up did
    assert text_of(both[1:]) == with_history  # streamed: the model's own Markdown
    assert with_history != without  # the thread really was the history
    assert emu.bot_messages(thread_ts=unrelated.ts) == []


def test_slash_model_is_acked_persists_across_a_restart_and_can_be_for_admins_only(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with SlackEmulator() as emu:
            member, admin = emu.user("member"), emu.user("admin")
            config = bot_config(tmp_path, emu, models, model_switch="admins", admins=[admin])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                refused = emu.slash_command(member, "/model", "second")
                refused_eid = await emu.push_socket_event("slash_commands", refused)
                refusal = await emu.wait_for(lambda: [p["json"] for p in emu.response_posts[refused["command_id"]]])
                await emu.wait_for(lambda: not emu.bot_messages())  # the channel placeholder is taken away
                eid = await emu.push_socket_event("slash_commands", emu.slash_command(admin, "/model", "second"))
                switched = await emu.wait_for(lambda: [m for m in emu.bot_messages() if "now uses" in m.text])
                # bolt sends the ack once its listener called ack(), polling every 10 ms: the answer
                # can be posted first; wait for the ack before the bot is stopped
                await emu.wait_for(lambda: refused_eid in emu.acks and eid in emu.acks)
            async with running_bot(config, "slack"):  # a restart: same config, same sqlite store
                await emu.wait_for(lambda: len(emu.socket_connections) == 2, timeout=30)
                _, event = await emu.push_mention(member, "Hi")
                parts = await answer_in(emu, event["ts"])
            return emu, refused_eid, eid, refusal, switched, parts, admin

    emu, refused_eid, eid, refusal, switched, parts, admin = asyncio.run(run())
    for envelope in (refused_eid, eid):
        assert emu.acks[envelope].time - emu.envelopes[envelope].time < 3  # acked within Slack's 3 s
    assert "Only the bot's admins" in refusal[0]["text"] and refusal[0]["response_type"] == "ephemeral"
    assert switched[0].text == f"<@{admin}> `/model second`\nThis channel now uses second."
    assert switched[0].thread_ts is None  # a command's answer is in the channel
    assert FOOTER.search(parts[-1].text).group("model") == "second"


def test_layers_by_slash_command_and_by_asking(tmp_path):
    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            dave = emu.user("dave")
            eid = await emu.push_socket_event("slash_commands", emu.slash_command(dave, "/layers"))
            def uploaded(thread_ts=None):  # the tree, then the picture
                found = [f for f in emu.files.values() if f.completed and thread_ts in (None, f.thread_ts)]
                return found if len(found) == 2 else None

            by_command = await emu.wait_for(uploaded, timeout=60)
            assert emu.acks[eid].time - emu.envelopes[eid].time < 3  # acked at once, though loading took longer
            _, event = await emu.push_mention(dave, "show me the layers")
            asked = await emu.wait_for(lambda: uploaded(event["ts"]), timeout=60)
            return emu, by_command, event, asked

    emu, by_command, event, asked = asyncio.run(run())
    (anchor,) = [m for m in emu.bot_messages() if m.thread_ts is None]
    assert anchor.text.startswith(f"<@{emu.envelopes[next(iter(emu.envelopes))].payload['user_id']}> `/layers`")
    assert "`smollm2` · LlamaForCausalLM" in anchor.text and "memory: 538.1 MB" in anchor.text
    assert by_command[0].filename == "smollm2-layers.txt" and by_command[0].thread_ts == anchor.ts
    assert b"LlamaForCausalLM" in by_command[0].data
    summary = emu.bot_messages(thread_ts=event["ts"])[0].text
    assert to_mrkdwn(summary).split("\n")[:3] == anchor.text.split("\n")[1:4]  # the same answer as /layers
    assert asked[0].filename == "smollm2-layers.txt" and asked[0].data == by_command[0].data
    # the picture, uploaded as bytes: a PNG that opens, at its size, in the same thread, captioned
    import io

    from PIL import Image

    for picture, thread in ((by_command[1], anchor.ts), (asked[1], event["ts"])):
        assert picture.filename == "smollm2-layers.png" and picture.thread_ts == thread
        assert Image.open(io.BytesIO(picture.data)).size == (1200, 675)
        assert [m.text for m in emu.bot_messages(thread_ts=thread) if m.files == [picture.id]] == ["layers as a picture"]


def test_layers_without_files_write_sends_the_tree_as_text_and_says_the_picture_is_missing(tmp_path):
    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            emu.fail_next("files.getUploadURLExternal", 200, error="missing_scope", times=2)
            _, event = await emu.push_mention(emu.user("dave"), "show me the layers")
            said = await emu.wait_for(lambda: [m.text for m in emu.bot_messages(thread_ts=event["ts"])
                                               if "could not upload" in m.text], timeout=60)
            return emu, event, said

    emu, event, said = asyncio.run(run())
    texts = [m.text for m in emu.bot_messages(thread_ts=event["ts"])]
    assert any(text.startswith("full module tree\n```") and "LlamaForCausalLM" in text for text in texts)
    assert said == ["I could not upload smollm2-layers.png (layers as a picture) here: Slack refused the upload "
                    "(missing_scope; the app needs the files:write scope)."]
    assert not [f for f in emu.files.values() if f.completed]


def test_compare_answers_with_both_models_labelled(tmp_path):
    models = [smollm2(), smollm2("second")]

    async def run():
        async with socket_bot(tmp_path, models) as (emu, config):
            await emu.push_socket_event("slash_commands", emu.slash_command(emu.user("erin"), "/compare",
                                                                            "What is 2+2?"))
            return await emu.wait_for(lambda: [m for m in emu.bot_messages() if FOOTER.search(m.text)]
                                      if len([m for m in emu.bot_messages() if FOOTER.search(m.text)]) == 2 else None,
                                      timeout=90)

    first, second = asyncio.run(run())
    assert first.text.split("\n")[:2] == ["<@U0EMU000001> `/compare What is 2+2?`", "*── smollm2 ──*"]
    assert second.text.startswith("*── second ──*\n") and second.thread_ts == first.ts
    assert FOOTER.search(first.text).group("model") == "smollm2"
    assert FOOTER.search(second.text).group("model") == "second"


def test_a_long_answer_is_split_without_loss_or_duplication(tmp_path):
    story = "Write a long story about a dragon and a knight."
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 160})

    async def run():
        async with SlackEmulator(rate_limits=limits_for(edits_per_minute=600)) as emu:
            config = bot_config(tmp_path, emu, [model], message_limit=100, edit_interval=0.2, edits_per_minute=600,
                                streaming="off")
            expected = await expected_reply(config, [{"role": "user", "content": story}])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                _, event = await emu.push_mention(emu.user("frank"), story)
                parts = await answer_in(emu, event["ts"], timeout=120)
            return expected, parts, emu.find_requests("chat.postMessage")

    expected, parts, posts = asyncio.run(run())
    assert len(parts) >= 4 and all(len(p.text) <= 100 for p in parts[:-1])
    assert all(p.text for p in parts) and FOOTER.search(parts[-1].text)
    assert text_of(parts) == to_mrkdwn(expected)  # joined back, nothing lost and nothing twice
    assert len(posts) == len(parts)  # each part posted exactly once
    for earlier, later in zip(parts, parts[1:]):  # a sealed part is never edited again
        assert earlier.history[-1][2] <= later.history[0][2]


def test_rate_limited_update_is_waited_out_and_retried(tmp_path):
    async def run():
        async with socket_bot(tmp_path, edit_interval=0.3, edits_per_minute=600, streaming="off") as (emu, config):
            emu.fail_next("chat.update", 429, retry_after=1)
            _, event = await emu.push_mention(emu.user("gina"), "What is the capital of France?")
            parts = await answer_in(emu, event["ts"])
            return parts, emu.find_requests("chat.update")

    parts, updates = asyncio.run(run())
    assert (updates[0].status, updates[0].error) == (429, "ratelimited")
    assert updates[1].status == 200 and updates[1].params == updates[0].params  # the same edit, again
    assert updates[1].time - updates[0].time >= 1.0  # after Retry-After
    assert "Paris" in text_of(parts)


def test_errors_and_places_the_bot_cannot_post_become_messages(tmp_path):
    async def run():
        async with SlackEmulator() as emu:
            broken = {"name": "broken", "source": str(tmp_path / "no-such-model")}
            config = bot_config(tmp_path, emu, [broken])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                _, event = await emu.push_mention(emu.user("mia"), "Hello")
                failed = await emu.wait_for(lambda: [m for m in emu.bot_messages(thread_ts=event["ts"])
                                                     if "⚠️" in m.text])
                emu.fail_next("chat.postMessage", 200, error="not_in_channel")
                command = emu.slash_command(emu.user("ned"), "/models")
                await emu.push_socket_event("slash_commands", command)
                told = await emu.wait_for(lambda: emu.response_posts[command["command_id"]])
            return failed, told

    (failed,), told = asyncio.run(run())
    assert "could not load model broken" in failed.text or "no-such-model" in failed.text
    assert told[0]["json"]["response_type"] == "ephemeral" and "/invite" in told[0]["json"]["text"]


def test_its_own_other_bots_unaddressed_and_other_channels_messages_are_ignored(tmp_path):
    async def run():
        async with socket_bot(tmp_path, channels=["C0GENERAL1"]) as (emu, config):
            henry = emu.user("henry")
            own = emu.post_user_message(emu.bot_user_id, f"<@{emu.bot_user_id}> talking to myself")
            other_bot = {**emu.message_event(emu.post_user_message(emu.user("otherbot"), "hi", mention=True)),
                         "bot_id": "B0OTHER01"}
            for event in (emu.message_event(own), other_bot,
                          emu.message_event(emu.post_user_message(henry, "just chatting, no mention"))):
                await emu.push_socket_event("events_api", emu.event_callback(event))
            await emu.push_mention(henry, "What is 2+2?", channel=emu.other_channel)
            await asyncio.sleep(1.5)
            silent = list(emu.bot_messages())
            _, event = await emu.push_mention(henry, "What is 2+2?")
            await answer_in(emu, event["ts"])
            return silent, emu.bot_messages()

    silent, after = asyncio.run(run())
    assert [m for m in silent if m.origin != "user"] == []
    assert len([m for m in after if m.origin != "user"]) == 1  # and it still answers a real mention in an allowed channel


def test_deleting_the_question_stops_its_answer(tmp_path):
    long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 400})

    async def run():
        async with socket_bot(tmp_path, [long_answers], edit_interval=0.3, edits_per_minute=600) as (emu, config):
            _, event = await emu.push_mention(emu.user("pia"), "Write a long story about a dragon and a knight.")
            await emu.wait_for(lambda: [m for m in emu.bot_messages(thread_ts=event["ts"])
                                        if not m.text.startswith("…")], timeout=30)
            deleted = {"type": "message", "subtype": "message_deleted", "channel": event["channel"],
                       "deleted_ts": event["ts"], "hidden": True, "ts": "1.000000",
                       "previous_message": {"type": "message", "user": event["user"], "ts": event["ts"]}}
            await emu.push_socket_event("events_api", emu.event_callback(deleted))
            stopped = await emu.wait_for(lambda: [m for m in emu.bot_messages(thread_ts=event["ts"])
                                                  if "⚠️ stopped" in m.text], timeout=30)
            versions = len(stopped[-1].history)  # a count, taken now: the message itself changes in place
            await asyncio.sleep(1.0)
            return stopped, versions, len(emu.bot_messages(thread_ts=event["ts"]))

    stopped, versions, messages = asyncio.run(run())
    assert stopped[-1].text.endswith("⚠️ stopped: the message it answered was deleted")
    assert len(stopped[-1].text) < 1500  # far from 400 tokens: generation really stopped
    assert len(stopped[-1].history) == versions and messages == len(stopped)  # nothing was written after that


def test_slack_settings_env_overrides_credentials_and_errors_name_the_key(monkeypatch):
    from bot.frontends.slack_settings import check_credentials, parse_slack_settings

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-from-env")
    monkeypatch.setenv("SLACK_API_BASE", "https://slack-gov.com/api")
    monkeypatch.setenv("SLACK_PORT", "8080")
    parsed = parse_slack_settings({"bot_token": "xoxb-file", "enabled": "true", "channels": "C1, C2",
                                   "admins": ["U1"], "model_switch": "Admins"})
    assert parsed.bot_token == "xoxb-from-env" and parsed.api_base == "https://slack-gov.com/api/"
    assert parsed.port == 8080 and parsed.enabled and parsed.mode == "socket"
    assert parsed.channels == ("C1", "C2") and parsed.admins == frozenset({"U1"}) and parsed.model_switch == "admins"
    assert (parsed.edit_interval, parsed.message_limit) == (1.5, 3500)  # chat.update's pace, Slack's length
    with pytest.raises(ConfigError, match="slack.app_token: empty; set SLACK_APP_TOKEN"):
        check_credentials(parsed)
    with pytest.raises(ConfigError, match="slack.signing_secret: empty; set SLACK_SIGNING_SECRET"):
        check_credentials(parse_slack_settings({"mode": "http"}))
    with pytest.raises(ConfigError, match="app-level token"):
        check_credentials(parse_slack_settings({"app_token": "xoxb-wrong-kind"}))
    for bad, key in (({"mode": "webhook"}, "slack.mode"), ({"channels": ["#general"]}, "slack.channels"),
                     ({"edit_interval": -1}, "slack.edit_interval"), ({"colour": "red"}, "slack.colour"),
                     ({"message_limit": 5000}, "slack.message_limit")):
        with pytest.raises(ConfigError, match=key):
            parse_slack_settings(bad)


@pytest.mark.parametrize("token", ["bot_token", "app_token"])
def test_a_refused_token_stops_the_bot_with_the_reason(tmp_path, token):
    async def run():
        async with SlackEmulator(bot_token="xoxb-the-real-one", app_token="xapp-the-real-one") as emu:
            config = bot_config(tmp_path, emu, **{"bot_token": emu.bot_token, "app_token": emu.app_token,
                                                  token: "xapp-revoked" if token == "app_token" else "xoxb-revoked"})
            async with running_bot(config, "slack") as task:
                return await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    (outcome,) = asyncio.run(run())
    variable = "SLACK_APP_TOKEN" if token == "app_token" else "SLACK_BOT_TOKEN"
    assert isinstance(outcome, RuntimeError) and "invalid_auth" in str(outcome) and variable in str(outcome)


def test_the_app_manifest_matches_the_command_table_and_asks_for_what_the_frontend_uses():
    """docs/slack-manifest.yaml is what users install: its commands must be the command
    table's (names, descriptions, usage hints), and its events and scopes what
    bot/frontends/slack*.py answer and call."""
    import yaml

    from bot.command_table import offered

    manifest = yaml.safe_load((REPO / "docs" / "slack-manifest.yaml").read_text(encoding="utf-8"))
    commands = [(c["command"], c["description"], c.get("usage_hint", "")) for c in
                manifest["features"]["slash_commands"]]
    assert commands == [(f"/{spec.name}", spec.summary, spec.usage) for spec in offered(host_keeps_history=False)]
    assert "/reset" not in [c[0] for c in commands]  # a thread cannot be forgotten
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"app_mention", "message.channels", "message.im", "assistant_thread_started"} <= events
    assert manifest["settings"]["socket_mode_enabled"] and manifest["features"]["app_home"]["messages_tab_enabled"]
    assert "assistant_view" in manifest["features"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    code = "".join((REPO / "bot" / "frontends" / name).read_text(encoding="utf-8")
                   for name in ("slack.py", "slack_reply.py"))
    for call, scope in (("conversations_replies", "channels:history"), ("files_upload_v2", "files:write"),
                        ("chat_update", "chat:write"), ("chat_startStream", "chat:write"),
                        ("assistant_threads_setStatus", "assistant:write"),
                        ("assistant_threads_setSuggestedPrompts", "assistant:write"),
                        ("app_mention", "app_mentions:read"), ("channel_type", "im:history"),
                        ("url_private", "files:read")):
        assert call in code and scope in scopes, (call, scope)


def test_every_command_is_acked_within_3_seconds_help_and_stats_only_to_the_asker(tmp_path):
    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            quinn = emu.user("quinn")
            sent, payloads = {}, {}
            for name in ("help", "models", "stats", "stop"):
                payloads[name] = emu.slash_command(quinn, f"/{name}")
                sent[name] = await emu.push_socket_event("slash_commands", payloads[name])
            await emu.wait_for(lambda: all(eid in emu.acks for eid in sent.values()))
            in_channel = await emu.wait_for(lambda: {name: m.text for name in ("models", "stop") for m in emu.bot_messages()
                                                     if m.text.startswith(f"<@{quinn}> `/{name}`\n")}
                                            if len(emu.bot_messages()) == 2
                                            and not any(m.text.endswith("…") for m in emu.bot_messages()) else None)
            private = await emu.wait_for(lambda: {name: emu.response_posts[payloads[name]["command_id"]][0]["json"]
                                                  for name in ("help", "stats")}
                                         if all(emu.response_posts[payloads[n]["command_id"]] for n in ("help", "stats"))
                                         else None)
            return emu, sent, in_channel, private

    emu, sent, answers, private = asyncio.run(run())
    for eid in sent.values():
        assert emu.acks[eid].time - emu.envelopes[eid].time < 3
    assert all(p["response_type"] == "ephemeral" for p in private.values())
    assert "/compare" in private["help"]["text"] and "/layers" in private["help"]["text"]
    assert "/reset" not in private["help"]["text"]
    stats = private["stats"]["text"].split("\n")
    assert stats[0] == "```" and stats[1].startswith("device cpu · memory") and stats[-1] == "```"
    # /models is a table in a code block: kept intact (its "*" marks this channel's model), legend in code
    models = answers["models"].split("\n")
    assert models[1] == "```" and models[3].startswith("*  smollm2  llama") and models[-1] == "`*` = this channel's model"
    assert answers["stop"].endswith("Nothing is being generated here.")


def test_a_waiting_reply_shows_its_queue_position_as_the_threads_status(tmp_path):
    long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 120})

    async def run():
        async with socket_bot(tmp_path, [long_answers], worker={"batching": "off"}, edit_interval=0.3) as (emu, _):
            _, first = await emu.push_mention(emu.user("jack"), "Write a long story about a dragon and a knight.")
            await emu.wait_for(lambda: emu.bot_messages(thread_ts=first["ts"]), timeout=30)
            _, second = await emu.push_mention(emu.user("kate"), "Name a color.")
            parts = await answer_in(emu, second["ts"])
            await answer_in(emu, first["ts"])
            return emu.statuses[(second["channel"], second["ts"])], parts

    statuses, parts = asyncio.run(run())
    shown = [status for status, _ in statuses]
    assert shown[0] == "is thinking…" and "is queued: 1st" in shown and shown[-1] == ""  # cleared once it answers
    assert FOOTER.search(parts[-1].text)


def test_stopping_the_bot_ends_the_answers_in_progress_with_a_message(tmp_path):
    long_answers = smollm2(generation={"do_sample": False, "max_new_tokens": 400})

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, [long_answers], edit_interval=0.3)
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                _, event = await emu.push_mention(emu.user("rob"), "Write a long story about a dragon and a knight.")
                await emu.wait_for(lambda: [m for m in emu.bot_messages(thread_ts=event["ts"])
                                            if not m.text.startswith("…")], timeout=30)
            return emu.bot_messages(thread_ts=event["ts"])

    parts = asyncio.run(run())
    assert parts[-1].text.endswith("⚠️ stopped: the bot is shutting down")  # not left hanging mid-sentence


def test_a_split_reply_reads_back_as_one_turn_with_its_code_block_whole():
    from bot.frontends.mrkdwn import ends_in_code, from_slack
    from bot.frontends.slack import join_parts

    reply = "Here is the loop:\n```python\nfor i in range(3):\n    print(i)\n```\nDone."
    cut = reply.index("    print")  # the split falls inside the code block
    first, second = reply[:cut], reply[cut:]
    shown = [to_mrkdwn(first), to_mrkdwn(second, opens_in_code=ends_in_code(first))]
    assert shown[0].endswith("\n```") and shown[1].startswith("```\n    print(i)")
    read_back = join_parts(*(from_slack(text) for text in shown))
    assert read_back == "Here is the loop:\n```\nfor i in range(3):\n    print(i)\n```\nDone."
    assert join_parts("The end of one", "part.") == "The end of one\npart."


def test_ten_people_asking_at_once_each_get_one_whole_answer(tmp_path):
    questions = [f"What is {n} plus {n}?" for n in range(1, 11)]

    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            pushed = await asyncio.gather(*(emu.push_mention(emu.user(f"user{n}"), question)
                                            for n, question in enumerate(questions)))
            answers = [await answer_in(emu, event["ts"], timeout=120) for _, event in pushed]
            await asyncio.sleep(0.5)
            return emu, pushed, answers

    emu, pushed, answers = asyncio.run(run())
    assert all(eid in emu.acks and emu.acks[eid].time - emu.envelopes[eid].time < 3 for eid, _ in pushed)
    for (_, event), parts in zip(pushed, answers):
        assert len(emu.bot_messages(thread_ts=event["ts"])) == 1 and FOOTER.search(parts[0].text)
        assert text_of(parts).strip() and "⚠️" not in parts[0].text
    assert len(emu.bot_messages()) == 10


# -- Slack's chat streaming, DMs and the assistant view ---------------------------------------------

def test_answers_stream_with_slacks_chat_streaming_api_split_past_the_limit(tmp_path):
    story = "Write a long story about a dragon and a knight."
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 80})

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, [model], message_limit=150, edit_interval=0.3)
            expected = await expected_reply(config, [{"role": "user", "content": story}])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                _, event = await emu.push_mention(emu.user("sue"), story)
                parts = await answer_in(emu, event["ts"], timeout=120)
                await asyncio.sleep(0.5)
            return emu, event, expected, parts

    emu, event, expected, parts = asyncio.run(run())
    starts, stops = emu.find_requests("chat.startStream"), emu.find_requests("chat.stopStream")
    assert len(parts) >= 2 and len(starts) == len(stops) == len(parts)  # one stream per part, each closed
    assert len(emu.find_requests("chat.appendStream")) >= len(parts)
    assert emu.find_requests("chat.postMessage") == [] and emu.find_requests("chat.update") == []
    assert all(p.origin == "stream" and not p.streaming for p in parts)
    assert "".join(FOOTER.sub("", p.text) for p in parts) == expected  # the model's Markdown, whole, once
    assert all(s.params["recipient_user_id"] == event["user"] and s.params["recipient_team_id"] == emu.team_id
               and s.params["thread_ts"] == event["ts"] for s in starts)


def test_a_workspace_without_chat_streaming_gets_placeholder_and_edits_and_is_asked_once(tmp_path):
    questions = ["What is the capital of France?", "Name a color."]

    async def run():
        async with SlackEmulator(streaming=False) as emu:
            config = bot_config(tmp_path, emu, edit_interval=0.3)
            expected = await expected_replies(config, [[{"role": "user", "content": q}] for q in questions])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                answers = []
                for n, question in enumerate(questions):
                    _, event = await emu.push_mention(emu.user(f"ann{n}"), question)
                    answers.append(await answer_in(emu, event["ts"]))
            return emu, expected, answers

    emu, expected, answers = asyncio.run(run())
    assert [text_of(parts) for parts in answers] == [to_mrkdwn(text) for text in expected]
    starts = emu.find_requests("chat.startStream")
    assert len(starts) == 1 and starts[0].error == "unknown_method"  # tried once, then chat.update for good
    assert answers[1][0].history[0][0] == "…"  # the second answer started with a placeholder, as before


def test_a_dm_and_the_assistant_view_are_answered_with_the_thinking_status(tmp_path):
    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            vera = emu.user("vera")
            _, started = await emu.push_assistant_thread_started(vera, context_channel=emu.channel)
            thread = started["assistant_thread"]
            await emu.wait_for(lambda: emu.suggested_prompts)
            _, asked = await emu.push_dm(vera, "What is the capital of France?", thread_ts=thread["thread_ts"])
            parts = await answer_in(emu, thread["thread_ts"])
            _, direct = await emu.push_dm(vera, "Name a color.")  # a plain DM, no thread yet
            direct_parts = await answer_in(emu, direct["ts"])
            await asyncio.sleep(0.5)
            return emu, thread, parts, direct_parts, direct

    emu, thread, parts, direct_parts, direct = asyncio.run(run())
    assert emu.suggested_prompts[0]["channel_id"] == thread["channel_id"]
    assert {"/models", "show me the layers"} <= {p["message"] for p in emu.suggested_prompts[0]["prompts"]}
    assert parts[0].channel == thread["channel_id"] and "Paris" in text_of(parts)
    assert FOOTER.search(direct_parts[-1].text) and direct_parts[0].thread_ts == direct["ts"]
    start = emu.find_requests("chat.startStream")[0]
    assert "recipient_user_id" not in start.params  # a DM needs no recipient
    statuses = emu.statuses[(thread["channel_id"], thread["thread_ts"])]
    assert statuses[0][0] == "is thinking…" and statuses[0][1] < start.time  # shown while it waited
    assert statuses[-1][0] == "" and emu.status_of(thread["channel_id"], thread["thread_ts"]) == ""  # and cleared


# -- faults and limits: nothing is stranded ------------------------------------------------------------

@pytest.mark.parametrize("streaming", ["off", "auto"])
def test_a_failed_first_post_and_a_ten_second_outage_strand_no_answer(tmp_path, streaming):
    """The first post of an answer fails once with HTTP 500, another's with msg_too_long, and
    the Web API is down for 10 s while a third answer grows: each arrives complete, once."""
    questions = ["What is the capital of France?", "Name a color.", "Write a long story about a dragon and a knight."]
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 60})
    first_post = "chat.postMessage" if streaming == "off" else "chat.startStream"

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, [model], edit_interval=0.3, streaming=streaming)
            expected = await expected_replies(config, [[{"role": "user", "content": q}] for q in questions])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                answers = []
                emu.fail_next(first_post, 500)
                _, event = await emu.push_mention(emu.user("walt"), questions[0])
                answers.append(await answer_in(emu, event["ts"], timeout=60))
                emu.fail_next(first_post, 200, error="msg_too_long")
                _, event = await emu.push_mention(emu.user("walt"), questions[1])
                answers.append(await answer_in(emu, event["ts"], timeout=60))
                _, event = await emu.push_mention(emu.user("walt"), questions[2])
                await emu.wait_for(lambda: [m for m in emu.bot_messages(thread_ts=event["ts"]) if len(m.text) > 20],
                                   timeout=60)
                emu.outage(10)
                answers.append(await answer_in(emu, event["ts"], timeout=120))
                await asyncio.sleep(0.5)
            return emu, expected, answers

    emu, expected, answers = asyncio.run(run())
    render = to_mrkdwn if streaming == "off" else (lambda text: text)
    assert [text_of(parts) for parts in answers] == [render(text) for text in expected]
    assert [len(parts) for parts in answers] == [1, 1, 1]  # each once: no duplicate after a retry
    failed = [r for r in emu.requests if r.status == 500 or r.error == "msg_too_long"]
    assert any(r.method == first_post and r.error == "msg_too_long" for r in failed)
    assert sum(r.status == 500 for r in failed) >= 2  # the failed first post, and the outage


def test_forty_answers_under_the_tier_3_update_limit_all_arrive_whole_and_once(tmp_path):
    """40 mentions from 10 users at once, answered with placeholders and chat.update (a
    workspace without chat streaming) under Slack's 50 chat.update a minute and 1 post a
    second per channel: every answer complete, exactly once, and no call over the limits."""
    questions = [f"What is {n} times {n}?" for n in range(8)]
    model = smollm2(generation={"do_sample": False, "max_new_tokens": 16})

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, [model], streaming="off")
            expected = await expected_replies(config, [[{"role": "user", "content": q}] for q in questions])
            async with running_bot(config, "slack"):
                await emu.wait_socket_connected(timeout=30)
                users = [emu.user(f"user{n}") for n in range(10)]
                pushed = await asyncio.gather(*(emu.push_mention(users[n % 10], questions[n % 8]) for n in range(40)))
                answers = [await answer_in(emu, event["ts"], timeout=300) for _, event in pushed]
                await asyncio.sleep(1.0)
            return emu, pushed, answers, expected

    emu, pushed, answers, expected = asyncio.run(run())
    assert emu.rate_limited == []
    assert emu.max_calls_in_window("chat.update", 60.0) <= 50
    assert emu.max_calls_in_window("chat.postMessage", 5.0, channel=emu.channel) <= 5
    for n, ((_, event), parts) in enumerate(zip(pushed, answers)):
        assert len(emu.bot_messages(thread_ts=event["ts"])) == 1
        assert text_of(parts) == to_mrkdwn(expected[n % 8])
    assert len(emu.bot_messages()) == 40


# -- HTTP mode: replays and malformed requests ---------------------------------------------------------

def test_http_mode_answers_a_replayed_command_once_and_refuses_malformed_requests_quietly(tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)  # as with -v and more: still no request body in any log line
    port = free_port()
    marker = "SECRET-BODY-MARKER"

    async def run():
        async with SlackEmulator() as emu:
            config = bot_config(tmp_path, emu, mode="http", signing_secret=SECRET, port=port, host="127.0.0.1",
                                app_token="")
            async with running_bot(config, "slack"):
                await wait_listening(port)
                url = f"http://127.0.0.1:{port}/slack/events"
                command = emu.slash_command(emu.user("xena"), "/models")
                first = await emu.deliver(url, command, SECRET)
                replayed = await emu.deliver(url, command, SECRET)  # the same signed request again
                await emu.wait_for(lambda: [m for m in emu.bot_messages() if "smollm2" in m.text])
                await asyncio.sleep(1.0)
                now = str(int(time.time()))
                bad = {}
                for name, body, content_type, stamp in (
                        ("json", b'{"type": "event_callback", "event": ', "application/json", now),
                        ("utf8", b'{"text": "\xff\xfe"}', "application/json", now),
                        ("timestamp", b'{"type": "event_callback"}', "application/json", "not-a-number")):
                    headers = {"Content-Type": content_type, **emu.sign(body, SECRET, stamp)}
                    bad[name] = (await emu.deliver_raw(url, body, headers))[0]
                unsigned = await emu.deliver(url, {"text": marker * 1000}, None)
                return emu, first, replayed, bad, unsigned

    emu, first, replayed, bad, unsigned = asyncio.run(run())
    assert first[0] == replayed[0] == 200
    assert len([m for m in emu.bot_messages() if "`/models`" in m.text]) == 1  # answered once
    assert bad == {"json": 400, "utf8": 400, "timestamp": 400} and unsigned[0] == 401
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text and marker not in caplog.text


def test_a_final_edit_that_fails_is_sent_again_until_slack_shows_it():
    """The end of an answer is edited in while chat.update answers 500 twice: the same edit is
    sent again, and the message ends with it (a failed edit is never taken as shown)."""
    from bot.frontends.slack import web_client
    from bot.frontends.slack_reply import SlackBudgets, ThreadReply, Workspace
    from bot.frontends.slack_settings import parse_slack_settings

    async def run():
        async with SlackEmulator() as emu:
            settings = parse_slack_settings({"bot_token": emu.bot_token, "api_base": emu.api_base,
                                             "streaming": "off", "edit_interval": 0})
            workspace = Workspace(web_client(settings), settings, SlackBudgets(settings))
            question = emu.post_user_message(emu.user("yves"), "Hello?", mention=True)
            reply = ThreadReply(workspace, emu.channel, question.ts, question.user, dm=False)
            await reply.start()
            stream = reply.stream()
            await stream.write("The answer is")
            await emu.wait_for(lambda: [m for m in emu.bot_messages() if m.text == "The answer is"])
            emu.fail_next("chat.update", 500, times=2)
            await stream.write(" 42.")
            await stream.finish("smollm2 · 9.9 tok/s · 4 tokens")
            await reply.close()
            return emu

    emu = asyncio.run(run())
    (message,) = emu.bot_messages()
    assert message.text == "The answer is 42.\n_smollm2 · 9.9 tok/s · 4 tokens_"
    updates = emu.find_requests("chat.update")
    assert [u.status for u in updates[-3:]] == [500, 500, 200] and updates[-1].params == updates[-2].params
