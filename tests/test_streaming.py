"""The streamed-reply pipeline every chat frontend uses: placeholder, paced edits, splitting
past the length limit, footer and errors, write budgets, and retries of writes the platform
refused for now. The platform here is a recorder of posts and edits (the real platforms are
tested through their emulators)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.reply import ReplyGone
from bot.streaming import MessageTooLong, RetryPolicy, StreamedMessage, TransientWriteError, split_point
from bot.write_budget import FINAL, UPDATE, WriteBudget, WriteWindow

FAST_RETRY = RetryPolicy(first_delay=0.01, max_delay=0.05, give_up_after=5.0)


class RecordingPlatform:
    def __init__(self, failures: list[Exception] | None = None):
        self.messages: list[list[str]] = []  # each message's versions, in order
        self.events: list[tuple[float, str, int]] = []
        self.failures = list(failures or [])  # raised by the next writes, one each
        self.attempts = 0

    def _maybe_fail(self):
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)

    async def post(self, text, previous):
        self._maybe_fail()
        self.messages.append([text])
        self.events.append((time.monotonic(), "post", len(self.messages) - 1))
        return len(self.messages) - 1

    async def edit(self, index, text):
        self._maybe_fail()
        self.messages[index].append(text)
        self.events.append((time.monotonic(), "edit", index))

    def final(self) -> list[str]:
        return [versions[-1] for versions in self.messages]


def run_stream(deltas, limit=2000, interval=0.0, delay=0.0, footer="model · 9.0 tok/s", fail=None, platform=None,
               **options):
    platform = platform or RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=limit, interval=interval, retry=FAST_RETRY,
                                 **options)
        await stream.start()
        for delta in deltas:
            await stream.write(delta)
            await asyncio.sleep(delay)
        if fail:
            await stream.fail(fail)
        else:
            await stream.finish(footer)
        return stream

    return platform, asyncio.run(go())


def test_a_long_reply_is_split_without_loss_or_duplication():
    words = [f"word{i} " for i in range(900)]  # ~7 KB
    platform, stream = run_stream(words, limit=500)
    final = platform.final()
    assert len(final) > 10 and all(len(part) <= 500 for part in final)
    assert "".join(final) == "".join(words) + "\n-# model · 9.0 tok/s"
    for versions in platform.messages:  # every message only ever grew
        assert all(b.startswith(a) or a == "…" for a, b in zip(versions, versions[1:])), versions


def test_edits_are_paced_per_interval():
    platform, _ = run_stream(["tok "] * 40, interval=0.2, delay=0.02)  # ~0.8 s of tokens
    edits = [t for t, kind, _ in platform.events if kind == "edit"]
    gaps = [b - a for a, b in zip(edits, edits[1:-1])]  # the final edit is never delayed
    assert 2 <= len(edits) <= 7
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert platform.final() == ["tok " * 40 + "\n-# model · 9.0 tok/s"]


def test_statuses_show_before_the_text_never_after_it_and_errors_end_the_reply():
    platform = RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=2000, interval=0.05)
        await stream.start()
        await asyncio.sleep(0.01)
        await stream.status("queued: 2nd")
        await asyncio.sleep(0.1)
        await stream.write("Partial answer")
        await stream.status("queued: 1st")  # too late: text is showing
        await asyncio.sleep(0.1)
        await stream.fail("the model ran out of memory")

    asyncio.run(go())
    assert platform.messages == [["…", "queued: 2nd", "Partial answer",
                                  "Partial answer\n\n⚠️ the model ran out of memory"]]


def test_a_status_and_text_arriving_within_one_interval_become_one_edit():
    """The throttle takes its time from the last write, not from when it was asked: a queue
    position followed at once by the first words is one edit, not two a few ms apart."""
    platform = RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=2000, interval=0.3)
        await stream.start()
        await asyncio.sleep(0.05)
        await stream.status("queued: 1st")
        await stream.write("Hello")
        await asyncio.sleep(0.5)
        await stream.finish("")

    asyncio.run(go())
    assert platform.messages == [["…", "Hello"]]


def test_an_empty_reply_says_so():
    platform, _ = run_stream([], footer="")
    assert platform.final() == ["(no reply)"]


def test_writes_the_platform_refuses_for_now_are_retried_until_the_end_is_shown():
    failures = [TransientWriteError("HTTP 503"), TransientWriteError("HTTP 429", retry_after=0.02)] * 4
    platform, stream = run_stream(["Paris ", "is ", "the ", "capital."], interval=0.01, delay=0.01,
                                  platform=RecordingPlatform(failures))
    assert platform.failures == []  # every failure was met...
    assert platform.final() == ["Paris is the capital.\n-# model · 9.0 tok/s"]  # ...and the end still arrived
    assert stream.delivered


def test_a_reply_deleted_on_the_platform_stops_the_answer_quietly():
    platform = RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=2000, interval=0)
        await stream.start()
        await asyncio.sleep(0.01)
        platform.failures.append(ReplyGone("Unknown Message"))
        await stream.write("first words")
        await asyncio.sleep(0.05)
        with pytest.raises(ReplyGone):
            await stream.write("more")  # the host stops generating here
        with pytest.raises(ReplyGone):
            await stream.finish("footer")
        return stream

    stream = asyncio.run(go())
    assert stream.gone and platform.messages == [["…"]]  # nothing posted after it was gone


def test_text_the_platform_finds_too_long_is_split_smaller():
    platform = RecordingPlatform([MessageTooLong("msg_too_long")])
    text = "word " * 100
    platform, _ = run_stream([text], limit=400, footer="", platform=platform)
    assert "".join(platform.final()) == text
    assert all(len(part) <= 200 for part in platform.final())


def test_answers_sharing_a_budget_stay_inside_it_and_all_finish_final_edits_first():
    """Eight answers in one channel with a budget of 3 writes per 0.3 s: no window ever holds
    more than 3 writes, every answer ends complete, and the ends were not held up by the
    growing answers' edits."""
    window = WriteWindow(3, 0.3)
    budget = WriteBudget([window])
    platform = RecordingPlatform()

    async def answer(n: int):
        stream = StreamedMessage(platform.post, platform.edit, limit=2000, interval=0.05, post_budget=budget,
                                 edit_budget=budget)
        await stream.start()
        for word in range(6):
            await stream.write(f"a{n}w{word} ")
            await asyncio.sleep(0.05)
        await stream.finish("done")

    async def go():
        await asyncio.gather(*(answer(n) for n in range(8)))

    asyncio.run(go())
    times = sorted(t for t, _, _ in platform.events)
    assert max(sum(1 for u in times if t <= u < t + 0.3) for t in times) <= 3
    finals = platform.final()
    assert sorted(finals) == sorted("".join(f"a{n}w{w} " for w in range(6)) + "\n-# done" for n in range(8))


def test_a_write_window_hands_out_slots_by_priority_then_arrival():
    async def go():
        window = WriteWindow(1, 0.05)
        order: list[str] = []

        async def write(name: str, priority: int):
            async with window.slot(priority):
                order.append(name)

        async with window.slot(UPDATE):  # the window is busy while these queue up
            tasks = [asyncio.create_task(write(name, priority)) for name, priority in
                     (("edit-1", UPDATE), ("final-1", FINAL), ("edit-2", UPDATE), ("final-2", FINAL))]
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(go()) == ["final-1", "final-2", "edit-1", "edit-2"]


def test_split_point_prefers_paragraphs_then_lines_then_spaces():
    assert split_point("a" * 10, 20) == 10
    assert split_point("aaaaaaaaa\n\nbb\ncccc dddd", 16) == 11  # the paragraph, though a line ends later
    assert split_point("aaaa\n\nbbbb\ncccc dddd", 16) == 11  # a break in the first half would leave a stub
    assert split_point("aaaa bbbb\ncccc dddd", 16) == 10
    assert split_point("aaaa bbbb cccc dddd", 16) == 15
    assert split_point("x" * 40, 16) == 16
