"""The shared worker on a real model (SmolLM2 on the CPU): fairness, batching, cancellation,
residency under a memory budget, faults, queue positions, caps and stats."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from helpers import collect, job_for, smollm2, write_config
from worker_faults import Fault, ForcedText, registry_forcing, registry_with_fault

from bot.app import build_app
from bot.config import load_settings
from bot.worker import GenerationFailed, WorkerBusy
from bot.worker.memory import process_rss_bytes

PROMPTS = [
    "What is the capital of France?", "Name a color.", "What is 2+2?", "Say hello.",
    "What is the sun?", "Name a fruit.", "What is water?", "Count to three.",
]


def make_app(tmp_path, models=None, registry=None, **worker):
    settings = load_settings(write_config(tmp_path, models or [smollm2()], worker=worker, max_resident_models=2))
    return build_app(settings, registry)


def test_concurrent_jobs_batch_fairly_and_match_one_at_a_time(tmp_path):
    users = ["A", "A", "A", "B", "B", "B", "C", "C"]

    async def run():
        app = make_app(tmp_path, max_batch=3, max_pending_per_user=8)
        try:
            alone = [await collect(app.worker.submit(await job_for(app, p, "solo"))) for p in PROMPTS]
            jobs = [await job_for(app, p, u) for p, u in zip(PROMPTS, users)]
            streams = [app.worker.submit(job) for job in jobs]
            first_token_order: list[int] = []

            async def consume(index: int, stream) -> str:
                parts = []
                async for delta in stream:
                    if not parts:
                        first_token_order.append(index)
                    parts.append(delta)
                return "".join(parts)

            together = await asyncio.gather(*(consume(i, s) for i, s in enumerate(streams)))
            return alone, together, first_token_order, [s.stats for s in streams]
        finally:
            await app.close()

    alone, together, order, stats = asyncio.run(run())
    assert all(text for text in alone)
    assert together == alone  # greedy: batching changes nothing in the answers
    assert sum(s.batched for s in stats) >= 2  # they really ran through continuous batching
    # fairness: nobody gets a k+1-th reply started while another user still waits for a k-th
    served = {u: 0 for u in set(users)}
    total = {u: users.count(u) for u in served}
    for index in order:
        user = users[index]
        for other in served:
            if other != user and served[other] < total[other]:
                assert served[other] >= served[user], f"{user} served again before {other}: {order}"
        served[user] += 1


def test_cancel_mid_stream_frees_the_slot_for_the_next_job(tmp_path):
    async def run():
        app = make_app(tmp_path, max_batch=2, batching="always")
        try:
            long = {"stop_token_ids": [], "max_new_tokens": 60}  # no EOS: all three run long
            first, second, third = [app.worker.submit(await job_for(app, "Tell me a story.", u, **long))
                                    for u in ("u1", "u2", "u3")]
            events: list[str] = []

            async def watch(name, stream, cancel_after=None):
                count = 0
                async for _ in stream:
                    count += 1
                    if count == 1:
                        events.append(f"{name} first token")
                    if cancel_after and count == cancel_after:
                        stream.cancel()
                events.append(f"{name} done")

            await asyncio.gather(watch("first", first, cancel_after=5), watch("second", second), watch("third", third))
            return events, first, second, third
        finally:
            await app.close()

    events, first, second, third = asyncio.run(run())
    assert first.stats.stopped_by == "cancelled" and first.stats.new_tokens < 60
    assert third.positions[-1] == 0 and third.positions[0] >= 1  # it waited, then started
    # the slot freed by the cancel went to the third job while the second was still generating
    assert events.index("third first token") < events.index("second done")
    assert second.stats.new_tokens == 60 and third.stats.new_tokens == 60


def test_budget_for_one_model_evicts_the_idle_one_but_not_one_in_use(tmp_path):
    models = [smollm2("first"), smollm2("second")]

    async def run():
        app = make_app(tmp_path, models, memory_budget="800MB")  # one fp32 SmolLM2 is 538 MB
        worker = app.worker
        try:
            await collect(worker.submit(await job_for(app, "Hi", "u1", model="first")))
            with_first = process_rss_bytes()
            busy = worker.submit(await job_for(app, "Tell me a story.", "u1", model="first",
                                               stop_token_ids=[], max_new_tokens=40))
            stream = busy.__aiter__()
            await stream.__anext__()  # the first model is generating now
            waiting = worker.submit(await job_for(app, "Hi", "u2", model="second"))
            await asyncio.sleep(1.0)
            during = (worker.loaded_names(), waiting.position)
            rest = [delta async for delta in stream]
            answer = await collect(waiting)
            return during, rest, answer, worker.loaded_names(), worker.residency.last_eviction, with_first, busy
        finally:
            await app.close()

    during, rest, answer, loaded_after, eviction, with_first, busy = asyncio.run(run())
    assert during == (["first"], 1)  # the job in flight kept "first" loaded; "second" waited its turn
    assert busy.stats.new_tokens == 40 and answer
    assert loaded_after == ["second"]
    assert eviction.name == "first" and eviction.verified, eviction
    assert eviction.freed_bytes > 0.5 * 538e6
    # one model's worth of memory, not two: the first really left
    assert process_rss_bytes() < with_first + 0.5 * 538e6


@pytest.mark.parametrize("kind, message", [
    ("raise", "the faulty plugin exploded"),
    ("oom", "ran out of memory"),
    ("nan", "NaN"),
])
def test_a_fault_mid_generation_fails_only_its_job(tmp_path, kind, message):
    fault = Fault(kind, at_call=4)
    models = [smollm2(), smollm2("faulty", family="faulty")]

    async def run():
        app = make_app(tmp_path, models, registry=registry_with_fault(fault))
        try:
            broken = app.worker.submit(await job_for(app, "What is the capital of France?", "u1", model="faulty"))
            healthy = app.worker.submit(await job_for(app, "What is the capital of France?", "u2"))
            results = await asyncio.gather(collect(broken), collect(healthy), return_exceptions=True)
            again = await collect(app.worker.submit(await job_for(app, "What is the capital of France?", "u1",
                                                                   model="faulty")))
            return results, again
        finally:
            await app.close()

    (failure, healthy_text), again = asyncio.run(run())
    assert fault.fired == 1
    assert isinstance(failure, GenerationFailed) and message in str(failure)
    assert "Paris" in healthy_text
    assert "Paris" in again  # the worker lived on and the same model answers the next job


def test_nan_in_one_request_of_a_batch_fails_only_that_request(tmp_path):
    fault = Fault("nan", at_call=4, nan_rows=1)  # one decode step, first row of the batch only
    models = [smollm2("faulty", family="faulty")]

    async def run():
        app = make_app(tmp_path, models, registry=registry_with_fault(fault), batching="always", max_batch=4)
        try:
            jobs = [await job_for(app, p, f"u{i}", model="faulty", stop_token_ids=[], max_new_tokens=12)
                    for i, p in enumerate(PROMPTS[:3])]
            return await asyncio.gather(*(collect(app.worker.submit(j)) for j in jobs), return_exceptions=True)
        finally:
            await app.close()

    results = asyncio.run(run())
    failures = [r for r in results if isinstance(r, GenerationFailed)]
    assert len(failures) == 1 and "NaN" in str(failures[0])
    assert sum(1 for r in results if isinstance(r, str) and r) == 2


def test_a_stalled_job_times_out_with_a_message(tmp_path):
    fault = Fault("stall", at_call=3, stall_seconds=1.5)

    async def run():
        app = make_app(tmp_path, [smollm2("faulty", family="faulty")], registry=registry_with_fault(fault),
                       idle_timeout=0.5)
        try:
            stalled = collect(app.worker.submit(await job_for(app, "Tell me a story.", "u1", model="faulty")))
            outcome = await asyncio.gather(stalled, return_exceptions=True)
            after = await collect(app.worker.submit(await job_for(app, "What is the capital of France?", "u1",
                                                                   model="faulty")))
            return outcome[0], after
        finally:
            await app.close()

    outcome, after = asyncio.run(run())
    assert isinstance(outcome, GenerationFailed) and "timed out" in str(outcome)
    assert "Paris" in after


def test_oom_while_loading_fails_every_waiting_job_once_and_the_bot_carries_on(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained.__func__
    attempts = []
    all_submitted = threading.Event()

    def from_pretrained(cls, location, *args, **kwargs):
        if "faulty" in attempts_target:
            all_submitted.wait(30)  # a slow load: every job arrives while it is under way
            attempts.append(location)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(cls, location, *args, **kwargs)

    attempts_target = {"faulty"}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(from_pretrained))
    models = [smollm2("faulty"), smollm2()]

    async def run():
        app = make_app(tmp_path, models)
        try:
            jobs = [await job_for(app, "Hi", f"u{i}", model="faulty") for i in range(3)]
            doomed = [app.worker.submit(job) for job in jobs]  # all three wait on the same load
            all_submitted.set()
            failures = await asyncio.gather(*(collect(s) for s in doomed), return_exceptions=True)
            attempts_target.clear()
            healthy = await collect(app.worker.submit(await job_for(app, "What is the capital of France?", "u1")))
            return failures, healthy
        finally:
            await app.close()

    failures, healthy = asyncio.run(run())
    assert all(isinstance(f, GenerationFailed) and "not enough memory to load faulty" in str(f) for f in failures)
    assert len(attempts) == 2  # one load and one retry after freeing memory, not one per job
    assert "Paris" in healthy


def test_many_jobs_for_an_unloaded_model_trigger_one_load_with_progress_for_all(tmp_path):
    async def run():
        app = make_app(tmp_path, max_pending_per_user=8)
        try:
            seen: dict[int, list[str]] = {}
            streams = []
            for i in range(4):
                job = await job_for(app, PROMPTS[i], f"u{i}")
                streams.append(app.worker.submit(job, progress=seen.setdefault(i, []).append))
            await asyncio.gather(*(collect(s) for s in streams))
            return seen, app.worker.residency.loads
        finally:
            await app.close()

    seen, loads = asyncio.run(run())
    assert loads == 1
    assert all(any(m.startswith("loading smollm2") for m in messages) for messages in seen.values()), seen


def test_queue_positions_count_down_to_zero(tmp_path):
    async def run():
        app = make_app(tmp_path, batching="off")
        try:
            streams = [app.worker.submit(await job_for(app, p, f"u{i}", max_new_tokens=6))
                       for i, p in enumerate(PROMPTS[:4])]
            await asyncio.gather(*(collect(s) for s in streams))
            return [s.positions for s in streams]
        finally:
            await app.close()

    positions = asyncio.run(run())
    last = positions[-1]
    assert last[0] >= 3 and last[-1] == 0, positions
    assert all(a > b for a, b in zip(last, last[1:])), last  # only ever moves forward


def test_caps_refuse_with_a_clear_message(tmp_path):
    async def run():
        app = make_app(tmp_path, max_pending_per_user=2, max_pending=3, batching="off")
        try:
            blocker = app.worker.submit(await job_for(app, "Tell me a story.", "blocker", stop_token_ids=[],
                                                      max_new_tokens=400))
            blocking = blocker.__aiter__()
            await blocking.__anext__()  # the worker is busy with it: everything below waits in the queue
            keep = [app.worker.submit(await job_for(app, "Hi", "greedy-user", max_new_tokens=4)) for _ in range(2)]
            with pytest.raises(WorkerBusy, match="at most 2"):
                app.worker.submit(await job_for(app, "Hi", "greedy-user"))
            keep.append(app.worker.submit(await job_for(app, "Hi", "other-user", max_new_tokens=4)))
            with pytest.raises(WorkerBusy, match="busy"):
                app.worker.submit(await job_for(app, "Hi", "late-user"))
            blocker.cancel()
            await asyncio.gather(*(collect(s) for s in keep))
            return [s.stats.new_tokens for s in keep]
        finally:
            await app.close()

    assert all(n > 0 for n in asyncio.run(run()))


def test_token_cap_ends_a_runaway_reply(tmp_path):
    async def run():
        app = make_app(tmp_path, max_new_tokens=8)
        try:
            stream = app.worker.submit(await job_for(app, "Tell me a story.", "u1", stop_token_ids=[],
                                                     max_new_tokens=500))
            await collect(stream)
            return stream.stats
        finally:
            await app.close()

    stats = asyncio.run(run())
    assert stats.new_tokens == 8 and stats.stopped_by == "length"


def test_close_ends_waiting_jobs_with_a_message(tmp_path):
    async def run():
        app = make_app(tmp_path, batching="off")
        streams = [app.worker.submit(await job_for(app, "Tell me a story.", f"u{i}", stop_token_ids=[],
                                                   max_new_tokens=200)) for i in range(3)]
        results = asyncio.gather(*(collect(s) for s in streams), return_exceptions=True)
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await app.close()
        return await results, time.monotonic() - started

    results, closing_seconds = asyncio.run(run())
    assert closing_seconds < 30
    assert all(isinstance(r, str) or "shutting down" in str(r) for r in results)


def test_a_waiting_reply_shows_its_queue_position_in_the_console(tmp_path):
    from helpers import RecordingOut

    from bot.frontends.console import ConsoleReply
    from bot.host import ChatEvent

    async def run():
        app = make_app(tmp_path, batching="off")
        try:
            first_err, second_err = RecordingOut(), RecordingOut()
            await asyncio.gather(
                app.host.chat(ChatEvent("one", "u1", "Tell me a story."), ConsoleReply(RecordingOut(), first_err)),
                app.host.chat(ChatEvent("two", "u2", "Name a color."), ConsoleReply(RecordingOut(), second_err)),
            )
            return first_err.text, second_err.text
        finally:
            await app.close()

    shown = ["… queued: 1st" in err for err in asyncio.run(run())]
    assert sorted(shown) == [False, True]  # whichever reached the worker second waited, and said so


def test_a_lone_reply_joins_a_batch_when_a_second_arrives_without_changing_its_text(tmp_path):
    async def run():
        app = make_app(tmp_path)
        try:
            story = {"stop_token_ids": [], "max_new_tokens": 40}
            alone = app.worker.submit(await job_for(app, "Tell me a story.", "u1", **story))
            alone_text = await collect(alone)
            first = app.worker.submit(await job_for(app, "Tell me a story.", "u1", **story))
            tokens = first.__aiter__()
            head = [await tokens.__anext__() for _ in range(5)]  # running alone, on plain generate
            second = app.worker.submit(await job_for(app, "Name a color.", "u2", **story))
            rest, second_text = await asyncio.gather(collect_rest(tokens), collect(second))
            return alone, alone_text, first, "".join(head) + rest, second, second_text
        finally:
            await app.close()

    async def collect_rest(iterator) -> str:
        return "".join([delta async for delta in iterator])

    alone, alone_text, first, first_text, second, second_text = asyncio.run(run())
    assert not alone.stats.batched
    assert first.stats.batched and second.stats.batched  # the first moved into the batch mid-reply
    assert first_text == alone_text and first.stats.new_tokens == 40
    assert second.stats.new_tokens == 40 and second_text


def test_characters_split_across_tokens_arrive_whole_from_a_batch(tmp_path):
    """The Euro sign, an emoji with its skin tone and CJK take several byte-level tokens each;
    a batch hands every step's text to the loop at once, and no reply shows half a character."""
    text = "Ça coûte 5 €, señor 👋🏽 日本語"

    async def run():
        (tmp_path / "probe").mkdir()
        probe = make_app(tmp_path / "probe")
        tokenizer = (await asyncio.to_thread(probe.catalog.tokenizer, probe.catalog.spec("smollm2"))).tokenizer
        await probe.close()
        forced = ForcedText(tokenizer, text, after=tokenizer.encode("\n", add_special_tokens=False)[-1])
        app = make_app(tmp_path, [smollm2("forced", family="faulty")], registry_forcing(forced), max_batch=3)
        try:
            jobs = [await job_for(app, prompt, user, model="forced", max_new_tokens=len(forced.ids))
                    for prompt, user in zip(PROMPTS, "ABC")]
            streams = [app.worker.submit(job) for job in jobs]

            async def deltas(stream) -> list[str]:
                return [delta async for delta in stream]

            return await asyncio.gather(*(deltas(s) for s in streams)), [s.stats for s in streams]
        finally:
            await app.close()

    replies, stats = asyncio.run(run())
    assert all(s.batched for s in stats)  # all three ran in one continuous batch
    for deltas in replies:
        assert "".join(deltas) == text
        assert not any("\ufffd" in delta for delta in deltas)  # never half a character
        assert len(deltas) > 1  # streamed, not one block at the end


def test_stop_while_waiting_ends_the_job_without_running_it(tmp_path):
    async def run():
        app = make_app(tmp_path, batching="off")
        try:
            blocker = app.worker.submit(await job_for(app, "Tell me a story.", "u1", stop_token_ids=[],
                                                      max_new_tokens=400))
            running = blocker.__aiter__()
            await running.__anext__()
            waiting = app.worker.submit(await job_for(app, "Name a color.", "u2"))
            await asyncio.sleep(0.2)
            position = waiting.position
            waiting.cancel()
            text = await collect(waiting)
            still_running = app.worker.generating()
            blocker.cancel()
            rest = [delta async for delta in running]
            return position, text, waiting.stats, still_running, rest, blocker.stats
        finally:
            await app.close()

    position, text, stats, still_running, rest, blocker_stats = asyncio.run(run())
    assert position == 1
    assert text == "" and stats.stopped_by == "cancelled" and stats.new_tokens == 0
    assert still_running  # cancelling the waiting job did not touch the running one
    assert blocker_stats.stopped_by == "cancelled" and blocker_stats.new_tokens > 1


def test_without_room_for_a_batch_jobs_still_finish_one_after_another(tmp_path):
    async def run():
        app = make_app(tmp_path, kv_cache_tokens=64)  # too small for continuous batching
        try:
            story = {"stop_token_ids": [], "max_new_tokens": 30}
            first = app.worker.submit(await job_for(app, "Tell me a story.", "u1", **story))
            tokens = first.__aiter__()
            await tokens.__anext__()
            second = app.worker.submit(await job_for(app, "Name a color.", "u2", **story))
            await asyncio.gather(collect_rest(tokens), collect(second))
            return first.stats, second.stats
        finally:
            await app.close()

    async def collect_rest(iterator) -> str:
        return "".join([delta async for delta in iterator])

    first, second = asyncio.run(run())
    assert first.new_tokens == 30 and second.new_tokens == 30  # the hand-off failed, the reply did not
    assert not first.batched and not second.batched
