"""Observability: /stats in a chat, and `modelbot stats` looking at a running bot."""

from __future__ import annotations

import asyncio
import subprocess
import time

from helpers import RecordingOut, cli, cli_env, smollm2, write_config

from bot.app import build_app, stats_path
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.host import ChatEvent
from bot.text import ordinal


def test_stats_command_shows_models_memory_queue_and_speed(tmp_path):
    settings = load_settings(write_config(tmp_path, [smollm2()]))

    async def run():
        app = build_app(settings)
        out = RecordingOut()
        try:
            reply = ConsoleReply(out, RecordingOut())
            await app.host.handle(ChatEvent("c", "u", "/stats"), reply)
            before = out.text
            await app.host.handle(ChatEvent("c", "u", "What is the capital of France?"), reply)
            await app.host.handle(ChatEvent("c", "u", "/stats"), reply)
            return before, out.text[len(before):]
        finally:
            await app.close()

    before, after = asyncio.run(run())
    assert "loaded models: none" in before and "no replies" in before
    assert "smollm2: 538.1 MB, idle" in after
    assert "queue: 0 generating, 0 waiting" in after
    assert "last 10 min: 1 replies" in after and "tok/s per reply" in after and "first token p50" in after


def test_modelbot_stats_reads_a_running_bot_and_knows_when_it_stopped(tmp_path):
    config = write_config(tmp_path, [smollm2()])
    console = subprocess.Popen(cli("console", "--config", str(config)), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        console.stdin.write("What is the capital of France?\n")
        console.stdin.flush()
        deadline = time.monotonic() + 120
        shown = None
        while time.monotonic() < deadline:
            done = subprocess.run(cli("stats", "--config", str(config)), capture_output=True, text=True,
                                  env=cli_env(), timeout=60)
            if done.returncode == 0 and "1 replies" in done.stdout:
                shown = done.stdout
                break
            time.sleep(1)
        assert shown is not None, "the running console never reported a finished reply"
        assert "smollm2: 538.1 MB" in shown and f"pid {console.pid}" in shown
    finally:
        console.stdin.close()
        console.wait(timeout=60)
    after = subprocess.run(cli("stats", "--config", str(config)), capture_output=True, text=True, env=cli_env(),
                           timeout=60)
    assert after.returncode == 1 and "not running" in after.stderr
    assert stats_path(load_settings(config)).is_file()


def test_ordinals_for_queue_positions():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st"]
