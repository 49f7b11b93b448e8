"""The embedded SmolLM2 answering through the console frontend, the host and the worker."""

from __future__ import annotations

import asyncio
import io
import subprocess

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply, run_console
from bot.host import ChatEvent
from helpers import RecordingOut, cli, cli_env, smollm2, write_config

CAPITAL_QUESTION = "What is the capital of France?"


async def _console_session(config, lines: list[str]) -> tuple[RecordingOut, RecordingOut]:
    app = build_app(load_settings(config))
    out, err = RecordingOut(), RecordingOut()
    try:
        await run_console(app.host, stdin=io.StringIO("".join(line + "\n" for line in lines)), out=out, err=err)
    finally:
        await app.close()
    return out, err


def test_console_answers_paris_streamed_in_chunks(smollm2_config):
    out, _ = asyncio.run(_console_session(smollm2_config, [CAPITAL_QUESTION]))
    reply_writes = [w for w in out.writes if not w.startswith("[")]
    assert "Paris" in out.text
    # streamed: the answer arrived as several writes, not one block at the end
    assert len([w for w in reply_writes if w.strip()]) > 1
    assert "tok/s" in out.text  # footer with the speed


def test_conversation_is_kept_until_reset(smollm2_config):
    async def session():
        app = build_app(load_settings(smollm2_config))
        try:
            reply = ConsoleReply(RecordingOut(), RecordingOut())
            await app.host.handle(ChatEvent("c1", "u", CAPITAL_QUESTION), reply)
            kept = app.host.history.get("c1")
            await app.host.handle(ChatEvent("c1", "u", "/reset"), reply)
            return kept, app.host.history.get("c1")
        finally:
            await app.close()

    kept, after_reset = asyncio.run(session())
    assert [m["role"] for m in kept] == ["user", "assistant"]
    assert kept[0]["content"] == CAPITAL_QUESTION and "Paris" in kept[1]["content"]
    assert after_reset == []


def test_ask_streams_to_stdout_and_exits_zero(smollm2_config):
    done = subprocess.run(
        cli("ask", "--config", str(smollm2_config), "--max-new-tokens", "16", CAPITAL_QUESTION),
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "Traceback" not in done.stderr


def test_ask_with_unknown_model_fails_with_one_line(smollm2_config):
    done = subprocess.run(
        cli("ask", "--config", str(smollm2_config), "--model", "nope", "hi"),
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["modelbot: unknown model 'nope'; configured models: smollm2"]


def test_console_commands_over_stdin(smollm2_config):
    """The real `modelbot console` process, fed by a pipe like a user typing."""
    session = "/help\n/models\n/model nope\n/model smollm2\n/frobnicate\n"
    done = subprocess.run(
        cli("console", "--config", str(smollm2_config)), input=session,
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for command in ("/models", "/model", "/layers", "/compare", "/reset", "/help"):
        assert command in out  # /help lists them
    assert "smollm2" in out and "llama" in out  # /models: name and family plugin
    assert "unknown model 'nope'; configured models: smollm2" in out
    assert "This channel now uses smollm2." in out
    assert "Unknown command /frobnicate" in out


def test_model_choice_persists_across_restart(tmp_path):
    config = write_config(tmp_path, [smollm2("first"), smollm2("second")])

    async def choose_then_restart():
        app = build_app(load_settings(config))
        reply = ConsoleReply(RecordingOut(), RecordingOut())
        before = app.host.channel_model("room").name
        await app.host.handle(ChatEvent("room", "u", "/model second"), reply)
        await app.close()
        restarted = build_app(load_settings(config))  # same sqlite file, fresh process state
        try:
            return before, restarted.host.channel_model("room").name, restarted.host.channel_model("other").name
        finally:
            await restarted.close()

    before, after, other = asyncio.run(choose_then_restart())
    assert (before, after, other) == ("first", "second", "first")


def test_compare_labels_each_model_with_speed_and_footprint(tmp_path):
    config = write_config(tmp_path, [smollm2("small-a"), smollm2("small-b"), smollm2("unused")], max_resident_models=2)

    async def compare():
        app = build_app(load_settings(config))
        out = RecordingOut()
        try:
            await app.host.handle(
                ChatEvent("c", "u", f"/compare --models small-a,small-b {CAPITAL_QUESTION}"), ConsoleReply(out, RecordingOut())
            )
            return out.text, app.worker.loaded_names()
        finally:
            await app.close()

    text, loaded = asyncio.run(compare())
    assert "── small-a ──" in text and "── small-b ──" in text and "unused" not in text
    assert text.count("Paris") >= 2
    assert text.count("tok/s") == 2 and text.count("MB in memory") == 2
    assert loaded == ["small-a", "small-b"]


def test_failures_become_messages_and_the_bot_goes_on(tmp_path):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    config = write_config(tmp_path, [smollm2("good"), {"name": "missing", "source": str(tmp_path / "gone")},
                                     {"name": "empty", "source": str(empty), "family": "llama"}])

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        reply = ConsoleReply(out, RecordingOut())
        try:
            texts = []
            for channel_model in ("missing", "empty", "good"):
                out.writes.clear()
                await app.host.handle(ChatEvent("c", "u", f"/model {channel_model}"), reply)
                await app.host.handle(ChatEvent("c", "u", CAPITAL_QUESTION), reply)
                texts.append(out.text)
            return texts
        finally:
            await app.close()

    missing, empty_dir, good = asyncio.run(session())
    assert f"error: model directory {tmp_path / 'gone'} does not exist" in missing
    assert f"error: could not load model empty from {empty}" in empty_dir
    assert "Paris" in good and "error" not in good


def test_stop_cancels_the_reply_in_progress(tmp_path):
    config = write_config(tmp_path, [smollm2(generation={"do_sample": False, "max_new_tokens": 400})])

    async def session():
        app = build_app(load_settings(config))
        out = RecordingOut()
        try:
            answering = asyncio.create_task(app.host.handle(
                ChatEvent("c", "u", "Write a long story about a dragon."), ConsoleReply(out, RecordingOut())))
            while not out.writes:  # wait for the first streamed text
                await asyncio.sleep(0.05)
            stop_out = RecordingOut()
            await app.host.handle(ChatEvent("c", "u", "/stop"), ConsoleReply(stop_out, RecordingOut()))
            await asyncio.wait_for(answering, timeout=60)
            return out.text, stop_out.text
        finally:
            await app.close()

    story, stop_text = asyncio.run(session())
    assert stop_text.strip() == "Stopped."
    footer = story.strip().splitlines()[-1]
    assert footer.endswith("· stopped]")
    assert int(footer.split(" tokens")[0].rsplit(" ", 1)[1]) < 400
