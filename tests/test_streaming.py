"""The streamed-reply pipeline every chat frontend uses: placeholder, throttled edits,
splitting past the length limit, footer and errors. The platform here is a recorder of
posts and edits (the real platforms are tested through their emulators)."""

from __future__ import annotations

import asyncio
import time

from bot.streaming import StreamedMessage, split_point


class RecordingPlatform:
    def __init__(self):
        self.messages: list[list[str]] = []  # each message's versions, in order
        self.events: list[tuple[float, str, int]] = []

    async def post(self, text, previous):
        self.messages.append([text])
        self.events.append((time.monotonic(), "post", len(self.messages) - 1))
        return len(self.messages) - 1

    async def edit(self, index, text):
        self.messages[index].append(text)
        self.events.append((time.monotonic(), "edit", index))

    def final(self) -> list[str]:
        return [versions[-1] for versions in self.messages]


def run_stream(deltas, limit=2000, interval=0.0, delay=0.0, footer="model · 9.0 tok/s", fail=None):
    platform = RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=limit, interval=interval)
        await stream.start()
        for delta in deltas:
            await stream.write(delta)
            if delay:
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


def test_edits_are_throttled_per_interval():
    platform, _ = run_stream(["tok "] * 40, interval=0.2, delay=0.02)  # ~0.8 s of tokens
    edits = [t for t, kind, _ in platform.events if kind == "edit"]
    gaps = [b - a for a, b in zip(edits, edits[1:-1])]  # the final edit is never delayed
    assert 2 <= len(edits) <= 7
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert platform.final() == ["tok " * 40 + "\n-# model · 9.0 tok/s"]


def test_status_shows_until_text_arrives_and_errors_end_the_reply():
    platform = RecordingPlatform()

    async def go():
        stream = StreamedMessage(platform.post, platform.edit, limit=2000, interval=0)
        await stream.start()
        await stream.status("queued: 2nd")
        await stream.write("Partial answer")
        await stream.status("queued: 1st")  # too late: text is showing
        await stream.fail("the model ran out of memory")

    asyncio.run(go())
    assert platform.messages == [["…", "queued: 2nd", "Partial answer",
                                  "Partial answer\n\n⚠️ the model ran out of memory"]]


def test_an_empty_reply_says_so():
    platform, _ = run_stream([], footer="")
    assert platform.final() == ["(no reply)"]


def test_split_point_prefers_paragraphs_then_lines_then_spaces():
    assert split_point("a" * 10, 20) == 10
    assert split_point("aaaaaaaaa\n\nbb\ncccc dddd", 16) == 11  # the paragraph, though a line ends later
    assert split_point("aaaa\n\nbbbb\ncccc dddd", 16) == 11  # a break in the first half would leave a stub
    assert split_point("aaaa bbbb\ncccc dddd", 16) == 10
    assert split_point("aaaa bbbb cccc dddd", 16) == 15
    assert split_point("x" * 40, 16) == 16
