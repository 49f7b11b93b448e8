"""Stopping the bot as systemd, Docker and Kubernetes do (SIGTERM) and as Ctrl-C does (SIGINT):
`modelbot run` / `modelbot console` in a real subprocess with answers streaming (two batched,
one waiting), the signal sent, and what the platform emulator (or the terminal) last showed of
each answer checked: its text so far, then the shutdown notice. Exit 0 within the shutdown
timeout, one line on stderr, and an intact sqlite store."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import pytest
from discord_emulator import DiscordEmulator
from helpers import cli, cli_env, smollm2, write_config
from slack_emulator import SlackEmulator

from bot.config import load_settings

NOTICE = "stopped: the bot is shutting down"
LONG = {"do_sample": False, "max_new_tokens": 400}
QUESTIONS = ["Write a long story about a dragon.", "Write a long poem about the sea.", "Describe Paris at length."]
# two answers generate together, the third waits its turn
WORKER = {"max_batch": 2, "max_pending_per_user": 4}
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*cli(*args), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=cli_env())


async def stop(bot: asyncio.subprocess.Process, number: int) -> tuple[int, float, str, str]:
    """Send the signal; (exit code, seconds to exit, stdout, stderr)."""
    sent = time.monotonic()
    bot.send_signal(number)
    out, err = await asyncio.wait_for(bot.communicate(), 60)
    return bot.returncode, time.monotonic() - sent, out.decode(), err.decode()


def assert_clean_exit(returncode: int, seconds: float, stderr: str, number: int, store) -> None:
    assert returncode == 0, stderr
    assert seconds < 10.0, seconds  # shutdown_timeout's default
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"modelbot: {signal.Signals(number).name}: stopped"), stderr
    assert "Traceback" not in stderr
    with sqlite3.connect(store) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def _answers(emu, message, root_id: str) -> bool:
    for _ in range(100):
        reference = (message.message_reference or {}).get("message_id") if message else None
        if reference is None:
            return False
        if reference == root_id:
            return True
        message = emu.messages.get(reference)
    return False


@pytest.mark.parametrize("number", SIGNALS)
def test_discord_answers_in_progress_end_with_the_shutdown_notice(tmp_path, number):
    async def run():
        async with DiscordEmulator() as emu:
            section = {"enabled": True, "token": "test-token", "api_base": emu.api_base,
                       "gateway_url": emu.gateway_url}
            config = write_config(tmp_path, [smollm2(generation=LONG)], worker=WORKER, discord=section)
            bot = await start("run", "discord", "--config", str(config))
            await emu.wait_ready(timeout=60)
            pushed = [await emu.push_message(emu.user(f"user{i}"), question, mentions_bot=True)
                      for i, question in enumerate(QUESTIONS)]

            def answers():
                return [[m for m in emu.bot_messages() if _answers(emu, m, p["id"])] for p in pushed]

            def two_streaming_one_waiting():  # placeholders go out in any order: any two, any one
                parts = answers()
                if not all(parts):
                    return None
                shown = [p[0].content for p in parts]
                streaming = [i for i, text in enumerate(shown)
                             if len(text) > 40 and not text.startswith(("…", "queued")) and "\n-# " not in text]
                waiting = [i for i, text in enumerate(shown) if text in ("…", "queued: 1st")]
                return (streaming, waiting[0]) if len(streaming) == 2 and len(waiting) == 1 else None

            streaming, waiting = await emu.wait_for(two_streaming_one_waiting, timeout=120)
            result = await stop(bot, number)
            return [[(m.content, m.history) for m in parts] for parts in answers()], streaming, waiting, result, config

    answers, streaming, waiting, (returncode, seconds, _, stderr), config = asyncio.run(run())
    assert_clean_exit(returncode, seconds, stderr, number, load_settings(config).store_path)
    for parts in answers:
        last, history = parts[-1]
        assert last.rstrip().endswith(NOTICE), last
    assert answers[waiting][0][0] == f"⚠️ {NOTICE}"  # it never had words: the notice is its answer
    for index in streaming:  # the text so far stays above the notice
        content, history = answers[index][0]
        streamed = [v["content"] for v in history if not v["content"].startswith(("…", "queued"))]
        assert len(content) > 40 + len(NOTICE) and content.startswith(streamed[0][:40])


@pytest.mark.parametrize("number", SIGNALS)
def test_slack_answers_in_progress_end_with_the_shutdown_notice(tmp_path, number):
    async def run():
        async with SlackEmulator() as emu:
            section = {"enabled": True, "bot_token": emu.bot_token, "app_token": emu.app_token,
                       "api_base": emu.api_base, "edit_interval": 0.5}
            config = write_config(tmp_path, [smollm2(generation=LONG)], worker=WORKER, slack=section)
            bot = await start("run", "slack", "--config", str(config))
            await emu.wait_socket_connected(timeout=60)
            threads = []
            for i, question in enumerate(QUESTIONS):
                _, event = await emu.push_mention(emu.user(f"user{i}"), question)
                threads.append(event["ts"])

            def answers():
                return [emu.bot_messages(thread_ts=ts) for ts in threads]

            def two_streaming_one_waiting():  # a waiting answer shows a thread status, no message yet
                shown = [parts[0].text if parts else "" for parts in answers()]
                streaming = [i for i, text in enumerate(shown) if len(text) > 40 and not text.startswith("…")]
                waiting = [i for i, text in enumerate(shown) if text in ("", "…") or text.startswith("… queued")]
                return (streaming, waiting[0]) if len(streaming) == 2 and len(waiting) == 1 else None

            streaming, waiting = await emu.wait_for(two_streaming_one_waiting, timeout=120)
            result = await stop(bot, number)
            return [[m.text for m in parts] for parts in answers()], streaming, waiting, result, config

    answers, streaming, waiting, (returncode, seconds, _, stderr), config = asyncio.run(run())
    assert_clean_exit(returncode, seconds, stderr, number, load_settings(config).store_path)
    for parts in answers:
        assert parts and parts[-1].rstrip().endswith(NOTICE), parts
    assert answers[waiting] == [f"⚠️ {NOTICE}"]  # it never had words: the notice is its answer
    for index in streaming:
        assert len(answers[index][0]) > 40 + len(NOTICE)  # the text so far stays above the notice


@pytest.mark.parametrize("number", SIGNALS)
def test_console_answer_in_progress_and_waiting_lines_end_with_the_notice(tmp_path, number):
    config = write_config(tmp_path, [smollm2(generation=LONG)], worker=WORKER)

    async def run():
        bot = await start("console", "--config", str(config))
        bot.stdin.write("".join(q + "\n" for q in QUESTIONS).encode())
        await bot.stdin.drain()
        shown = b""
        while len(shown) < 100:  # the first answer is streaming; the other two lines wait
            shown += await asyncio.wait_for(bot.stdout.read(100), 120)
        returncode, seconds, out, err = await stop(bot, number)
        return returncode, seconds, shown.decode() + out, err

    returncode, seconds, out, stderr = asyncio.run(run())
    # the console's own lines (banner, loading) go to stderr before the stop; the stop adds one
    stop_lines = [line for line in stderr.splitlines() if line.startswith("modelbot:")]
    assert returncode == 0 and seconds < 10.0 and "Traceback" not in stderr, stderr
    assert len(stop_lines) == 1 and stop_lines[0].startswith(f"modelbot: {signal.Signals(number).name}: stopped")
    first, *rest = out.split(f"[{NOTICE}]\n")
    assert len(first) > 100 and len(rest) == 1  # the text so far, then the notice, once
    assert rest[0].count("[not answered: the bot is shutting down:") == 2, out
    with sqlite3.connect(load_settings(config).store_path) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("signals", [1, 2], ids=["one-signal", "two-signals"])
def test_a_stuck_platform_still_stops_within_the_timeout_and_a_second_signal_exits_at_once(tmp_path, signals):
    async def run():
        async with DiscordEmulator() as emu:
            section = {"enabled": True, "token": "test-token", "api_base": emu.api_base,
                       "gateway_url": emu.gateway_url}
            config = write_config(tmp_path, [smollm2(generation=LONG)], discord=section, shutdown_timeout=1.5)
            bot = await start("run", "discord", "--config", str(config))
            await emu.wait_ready(timeout=60)
            await emu.push_message(emu.user("alice"), QUESTIONS[0], mentions_bot=True)
            await emu.wait_for(lambda: any(len(m.content) > 40 for m in emu.bot_messages()), timeout=120)
            emu.outage(60)  # every write now fails: the notice cannot be shown
            if signals == 2:
                bot.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
            return await stop(bot, signal.SIGTERM)

    returncode, seconds, _, stderr = asyncio.run(run())
    assert "Traceback" not in stderr
    if signals == 2:
        assert returncode == 128 + signal.SIGTERM and seconds < 1.0, stderr
        assert stderr.strip().splitlines()[-1] == "modelbot: SIGTERM again: stopped at once"
        return
    # the writes would be retried for ~3 s more; shutdown_timeout (1.5 s) ends the stop first
    assert returncode == 0 and 1.4 < seconds < 4.0, (seconds, stderr)
    # the failing writes were logged as they failed; the stop itself says what it could not finish
    assert stderr.strip().splitlines()[-1].startswith("modelbot: SIGTERM: stopped in ")
    assert "ran out of time for: the notices of 1 answers" in stderr, stderr


def test_a_second_bot_on_the_same_store_is_refused_naming_the_first(tmp_path):
    config = write_config(tmp_path, [smollm2()])

    async def run():
        first = await start("console", "--config", str(config))
        try:
            await asyncio.wait_for(first.stderr.readline(), 60)  # the banner: it holds the store
            second = await start("console", "--config", str(config))
            out, err = await asyncio.wait_for(second.communicate(b""), 60)
            return second.returncode, err.decode(), first.pid
        finally:
            first.stdin.close()
            await asyncio.wait_for(first.wait(), 60)

    returncode, stderr, pid = asyncio.run(run())
    assert returncode == 1
    assert stderr.strip().splitlines() == [
        f"modelbot: another modelbot (pid {pid}) is running on the store {load_settings(config).store_path}; "
        "stop it first, or give this one its own `store:` in the config"]
    os.stat(load_settings(config).store_path)  # the first one's store is untouched and still there


def test_a_stop_during_the_preload_exits_cleanly(tmp_path):
    config = write_config(tmp_path, [smollm2()], preload=["smollm2"])

    async def run():
        bot = await start("-v", "console", "--config", str(config))
        seen = b""
        while b"loading smollm2" not in seen:  # the preload has begun (a large model: minutes)
            seen += await asyncio.wait_for(bot.stderr.readline(), 60)
        returncode, seconds, out, err = await stop(bot, signal.SIGTERM)
        return returncode, seconds, out, seen.decode() + err

    returncode, seconds, out, stderr = asyncio.run(run())
    assert returncode == 0 and seconds < 10.0, stderr
    assert stderr.strip().splitlines()[-1].startswith("modelbot: SIGTERM: stopped"), stderr
    assert "Traceback" not in stderr and out == ""
