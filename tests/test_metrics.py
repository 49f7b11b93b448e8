"""Metrics and health: what bot/metrics.py counts and bot/health_server.py serves.

The end-to-end test runs `modelbot run discord` against the Discord emulator with the
endpoint on a free port, reads it over real HTTP and parses it with prometheus-client's own
parser; the counters must match what the emulator saw the bot answer."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import pytest
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from frontend_helpers import running_bot
from helpers import RecordingOut, smollm2, write_config
from prometheus_client.parser import text_string_to_metric_families

from bot.app import build_app
from bot.config import load_settings
from bot.frontends.console import ConsoleReply
from bot.generation import GenerationStats
from bot.health_server import start_health_server
from bot.host import ChatEvent
from bot.metrics import Metrics
from bot.streaming import RetryPolicy, TransientWriteError, deliver
from bot.write_budget import WriteBudget, WriteWindow, write_waits

FOOTER = re.compile(r"-# smollm2 · [\d.]+ tok/s · (?P<tokens>\d+) tokens")
HEALTH_URL = re.compile(r"metrics and health at (http://\S+) ")
LONG_QUESTION = "Tell me everything about the sea. " * 1500  # over SmolLM2's 8192-token context


# -- reading the exposition ---------------------------------------------------------------------
def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def requests(samples: dict, frontend: str, outcome: str, model: str = "smollm2") -> float:
    return sample(samples, "modelbot_requests_total", frontend=frontend, model=model, outcome=outcome) or 0.0


class FakeEngines:
    def __init__(self, *snapshots):
        self.snapshots = snapshots

    def all(self):
        return [FakeEngine(s) for s in self.snapshots]


class FakeEngine:
    kind = "fake"

    def __init__(self, snapshot):
        self._snapshot = snapshot

    def snapshot(self):
        if isinstance(self._snapshot, Exception):
            raise self._snapshot
        return self._snapshot


# -- units ----------------------------------------------------------------------------------------
def test_the_engines_snapshots_are_read_at_scrape_time():
    local = {"kind": "local", "running": 2, "queued": 3, "budget_bytes": 1000,
             "models": [{"name": "a", "footprint_bytes": 300, "cache_bytes": 20, "loads": 9},
                        {"name": "b", "footprint_bytes": 100, "cache_bytes": 0, "loads": 1, "evictions": 1}],
             "loads_by_model": {"a": 2, "c": 4}, "evictions_by_model": {"c": 4}}
    remote = {"kind": "openai", "models": ["big"], "running": 1, "queued": 0,
              "replicas": [{"url": "http://x", "healthy": True}, {"url": "http://y", "healthy": False}]}
    metrics = Metrics(FakeEngines(local, RuntimeError("a broken engine"), remote))
    samples = parse(metrics.exposition().decode())

    assert sample(samples, "modelbot_queue_depth", engine="local") == 3
    assert sample(samples, "modelbot_in_flight", engine="local") == 2
    assert sample(samples, "modelbot_in_flight", engine="openai:big") == 1
    assert sample(samples, "modelbot_queue_depth", engine="openai:big") == 0
    assert sample(samples, "modelbot_healthy_replicas", engine="openai:big") == 1
    assert sample(samples, "modelbot_memory_budget_bytes", engine="local") == 1000
    assert sample(samples, "modelbot_model_resident_bytes", model="a") == 320
    assert sample(samples, "modelbot_model_resident_bytes", model="b") == 100
    # loads_by_model (every model ever loaded) wins over a loaded model's own entry
    assert sample(samples, "modelbot_model_loads_total", model="a") == 2
    assert sample(samples, "modelbot_model_loads_total", model="b") == 1
    assert sample(samples, "modelbot_model_loads_total", model="c") == 4
    assert sample(samples, "modelbot_model_evictions_total", model="c") == 4
    assert sample(samples, "modelbot_model_evictions_total", model="b") == 1
    assert sample(samples, "modelbot_model_evictions_total", model="a") is None


def test_each_app_has_its_own_registry():
    first, second = Metrics(FakeEngines()), Metrics(FakeEngines())
    stats = GenerationStats(model="m", prompt_tokens=3, new_tokens=5, queue_seconds=0.5, first_token_seconds=0.25,
                            generation_seconds=0.5)
    first.finished("discord", "m", stats)
    assert requests(parse(first.exposition().decode()), "discord", "answered", "m") == 1
    assert requests(parse(second.exposition().decode()), "discord", "answered", "m") == 0


def test_write_waits_reach_the_observer_of_the_answer_they_belong_to():
    async def run():
        seen: list[tuple[str, float]] = []
        metrics = Metrics(FakeEngines())

        async def budget_waits():
            write_waits.set(lambda reason, seconds: seen.append((reason, seconds)))
            budget = WriteBudget([WriteWindow(1, 0.3, "channel"), WriteWindow(1, 0.3, "bot-wide")])
            for _ in range(2):
                async with budget.slot():
                    pass

        async def platform_waits():
            write_waits.set(metrics.write_wait_observer("slack"))
            refusals = [TransientWriteError("ratelimited", retry_after=0.05), TransientWriteError("HTTP 502")]

            async def write():
                if refusals:
                    raise refusals.pop(0)
                return "written"

            return await deliver(write, retry=RetryPolicy(first_delay=0.01))

        async def unobserved():  # another task's waits are not this answer's
            budget = WriteBudget([WriteWindow(1, 0.2)])
            for _ in range(2):
                async with budget.slot():
                    pass

        results = await asyncio.gather(budget_waits(), platform_waits(), unobserved())
        return seen, results[1], parse(metrics.exposition().decode())

    seen, written, samples = asyncio.run(run())
    assert written == "written"
    # the second write waited for both full windows, and is reported once
    assert [reason for reason, _ in seen] == ["budget"]
    assert 0.2 < seen[0][1] < 2.0
    # only the 429 (it said how long to wait) counts as the platform's; the 502 is an error
    assert sample(samples, "modelbot_rate_limit_wait_seconds_count", frontend="slack", reason="platform") == 1
    assert sample(samples, "modelbot_rate_limit_wait_seconds_sum", frontend="slack", reason="platform") == \
        pytest.approx(0.05)
    assert sample(samples, "modelbot_rate_limit_wait_seconds_count", frontend="slack", reason="budget") is None


def test_the_host_records_answered_busy_failed_and_cancelled(tmp_path):
    config = write_config(tmp_path, [smollm2()], worker={"max_pending_per_user": 1},
                          metrics={"host": "127.0.0.1", "port": 0})

    async def chat(app, text: str, user: str = "u"):
        reply = ConsoleReply(RecordingOut(), RecordingOut())
        return await app.host.chat(ChatEvent(f"c-{user}", user, text, history=[], frontend="console"), reply)

    async def run():
        app = build_app(load_settings(config))
        try:
            first = await chat(app, "What is the capital of France?")
            # two at once from one user, who may have one in progress: one is refused as busy
            pair = await asyncio.gather(chat(app, "Name a colour."), chat(app, "Name a fruit."))
            too_long = await chat(app, LONG_QUESTION)
            cancelled = asyncio.create_task(chat(app, "Tell me a long story about the sea.", user="v"))
            deadline = time.monotonic() + 120
            while not app.engines.active_jobs() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            return first, pair, too_long, parse(app.metrics.exposition().decode())
        finally:
            await app.close()

    first, pair, too_long, samples = asyncio.run(run())
    answers = [first, *[r for r in pair if r.error is None]]
    refused = [r for r in pair if r.error is not None]
    assert len(answers) == 2 and all(r.stats and r.stats.new_tokens > 1 for r in answers)
    assert len(refused) == 1 and "requests in progress" in refused[0].error
    assert too_long.error and "reads at most" in too_long.error

    assert requests(samples, "console", "answered") == 2
    assert requests(samples, "console", "busy") == 1
    assert requests(samples, "console", "failed") == 1
    assert requests(samples, "console", "cancelled") == 1
    assert sample(samples, "modelbot_generated_tokens_total", model="smollm2") == \
        sum(r.stats.new_tokens for r in answers)
    assert sample(samples, "modelbot_time_to_first_token_seconds_count", model="smollm2") == 2
    assert sample(samples, "modelbot_time_to_first_token_seconds_sum", model="smollm2") == \
        pytest.approx(sum(r.stats.time_to_first_token for r in answers))
    assert sample(samples, "modelbot_tokens_per_second_count", model="smollm2") == 2
    assert sample(samples, "modelbot_tokens_per_second_sum", model="smollm2") == \
        pytest.approx(sum(r.stats.tokens_per_second for r in answers))


# -- end to end: `modelbot run discord` with the endpoint on ----------------------------------------
async def health_url(caplog, bot: asyncio.Task, timeout: float = 120.0) -> str:
    """The endpoint's address, from the one line `modelbot run` logs when it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            found = HEALTH_URL.search(record.getMessage() + " ")
            if found:
                return found.group(1)
        if bot.done():
            raise AssertionError(f"the bot ended before its endpoint listened: {bot.exception()!r}")
        await asyncio.sleep(0.02)
    raise AssertionError("no health endpoint was logged")


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.get(url) as response:
        return response.status, await response.text(), response.headers.get("Content-Type", "")


async def poll(http: aiohttp.ClientSession, url: str, until, timeout: float = 60.0) -> str:
    """GET `url` every few milliseconds until `until(status, text)`; the text that satisfied it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, text, _ = await get(http, url)
        if until(status, text):
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url}: still {status} {text!r} after {timeout} s")


async def answer_to(emu, pushed: dict, timeout: float = 120.0):
    """The bot's reply to `pushed` once it ended: with the footer, or with an error."""
    def done():
        for message in emu.bot_messages():
            if (message.message_reference or {}).get("message_id") == pushed["id"]:
                content = message.content or ""
                if FOOTER.search(content) or content.startswith("⚠️"):
                    return content
        return None

    return await emu.wait_for(done, timeout=timeout)


@pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")
def test_discord_metrics_match_what_the_bot_answered_and_readyz_follows_the_connection(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bot.health_server")

    async def run():
        async with DiscordEmulator() as emu:
            config = write_config(
                tmp_path, [smollm2()], worker={"max_pending_per_user": 1}, metrics={"host": "127.0.0.1", "port": 0},
                # one write a second in the channel: the answers' writes must wait for the budget
                discord={"enabled": True, "token": "test-token", "api_base": emu.api_base,
                         "gateway_url": emu.gateway_url, "writes_per_channel": 1, "write_window": 1.0})
            emu.outage(120, status=502)  # the bot cannot log in (discord.py retries 502s) until it ends
            async with running_bot(config, "discord") as bot, aiohttp.ClientSession() as http:
                url = await health_url(caplog, bot)
                healthz = await get(http, f"{url}/healthz")
                before = await get(http, f"{url}/readyz")
                emu.outage(0)
                await emu.wait_ready(timeout=60)
                ready = await poll(http, f"{url}/readyz", lambda status, _: status == 200)

                alice, bob = emu.user("alice"), emu.user("bob")
                pair = [await emu.push_message(alice, question, mentions_bot=True)
                        for question in ("What is the capital of France?", "Name a colour.")]

                def working(status, text):
                    samples = parse(text)
                    return (sample(samples, "modelbot_in_flight", engine="local") or 0) + \
                        (sample(samples, "modelbot_queue_depth", engine="local") or 0) >= 1

                during = parse(await poll(http, f"{url}/metrics", working))
                replies = [await answer_to(emu, pushed) for pushed in pair]
                replies.append(await answer_to(emu, await emu.push_message(bob, "Name a fruit.", mentions_bot=True)))
                _, metrics_text, content_type = await get(http, f"{url}/metrics")
                return healthz, before, ready, during, replies, parse(metrics_text), content_type

    healthz, before, ready, during, replies, after, content_type = asyncio.run(run())
    assert healthz[:2] == (200, "ok\n")
    assert before[0] == 503 and "frontend discord: not connected" in before[1]
    assert ready == "ready\n"

    # while alice's accepted question was in the worker, nothing had been answered yet
    assert requests(during, "discord", "answered") == 0

    answered = [FOOTER.search(r) for r in replies if FOOTER.search(r)]
    busy = [r for r in replies if r.startswith("⚠️")]
    assert len(answered) == 2 and len(busy) == 1 and "requests in progress" in busy[0], replies
    assert requests(after, "discord", "answered") == 2
    assert requests(after, "discord", "busy") == 1
    assert requests(after, "discord", "failed") == requests(after, "discord", "cancelled") == 0
    assert sample(after, "modelbot_generated_tokens_total", model="smollm2") == \
        sum(int(m.group("tokens")) for m in answered)
    assert sample(after, "modelbot_time_to_first_token_seconds_count", model="smollm2") == 2
    assert sample(after, "modelbot_tokens_per_second_count", model="smollm2") == 2
    assert sample(after, "modelbot_in_flight", engine="local") == 0
    assert sample(after, "modelbot_queue_depth", engine="local") == 0
    assert sample(after, "modelbot_model_loads_total", model="smollm2") == 1
    assert sample(after, "modelbot_model_resident_bytes", model="smollm2") > 0
    # two placeholders at once in a channel allowed one write a second: the budget held some back
    assert sample(after, "modelbot_rate_limit_wait_seconds_count", frontend="discord", reason="budget") >= 1
    assert sample(after, "modelbot_rate_limit_wait_seconds_sum", frontend="discord", reason="budget") > 0
    assert content_type.startswith("text/plain")


def test_readyz_names_each_thing_not_ready(tmp_path):
    (tmp_path / "empty").mkdir()
    config = write_config(tmp_path, [smollm2("broken", source=str(tmp_path / "empty"))],
                          metrics={"host": "127.0.0.1", "port": 0})

    async def run():
        app = build_app(load_settings(config))
        server = await start_health_server(app, app.settings.metrics, frontends=["discord", "slack"])
        try:
            async with aiohttp.ClientSession() as http:
                first = await get(http, f"{server.url}/readyz")
                app.host.readiness.connected("discord", True)
                checked = await poll(http, f"{server.url}/readyz", lambda _, text: "checking" not in text)
                app.host.readiness.connected("slack", True)
                connected = await get(http, f"{server.url}/readyz")
                alive = await get(http, f"{server.url}/healthz")
        finally:
            await server.close()
            await app.close()
        return first, checked, connected, alive

    first, checked, connected, alive = asyncio.run(run())
    assert first[0] == 503
    assert "- frontend discord: not connected\n- frontend slack: not connected\n" in first[1]
    assert "default model broken:" in first[1]
    assert "frontend discord" not in checked and "frontend slack: not connected" in checked
    model_line = next(line for line in checked.splitlines() if line.startswith("- default model"))
    assert "could not load model broken" in model_line
    assert connected[:2] == (503, f"not ready:\n{model_line}\n")  # both connected: only the model is left
    assert alive[:2] == (200, "ok\n")
