"""Trimming history to the context: oldest turns go first, the newest user turn stays."""

from __future__ import annotations

import family_fixtures as ff
from bot.conversation import fit_to_context
from plugins.qwen2 import Qwen2Backend


def build(messages):
    return Qwen2Backend().build_prompt(ff.tokenizer("qwen2"), messages, "qwen2")


def long_history(turns: int) -> list[dict]:
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        history += [{"role": "user", "content": f"question {i} " + "x" * 40},
                    {"role": "assistant", "content": f"answer {i} " + "y" * 40}]
    return history + [{"role": "user", "content": "the newest question"}]


def test_everything_kept_when_it_fits():
    messages = long_history(2)
    trimmed = fit_to_context(messages, build, context_length=10_000, reply_tokens=100)
    assert trimmed.dropped == 0 and trimmed.messages == messages


def test_oldest_turns_dropped_first_and_prompt_fits():
    messages = long_history(10)
    full = len(build(messages).input_ids)
    trimmed = fit_to_context(messages, build, context_length=full // 2 + 50, reply_tokens=50)
    kept = trimmed.messages
    assert trimmed.dropped > 0
    assert len(trimmed.prompt.input_ids) <= full // 2
    assert kept[0] == {"role": "system", "content": "Be brief."}  # the system prompt stays
    assert kept[1]["role"] == "user"  # the kept part still opens on a user turn
    assert kept[-1]["content"] == "the newest question"
    assert kept[1:] == messages[-len(kept) + 1:]  # a suffix: only the oldest turns went


def test_a_single_oversized_message_is_still_sent():
    messages = [{"role": "user", "content": "z" * 500}]
    trimmed = fit_to_context(messages, build, context_length=100, reply_tokens=50)
    assert trimmed.messages == messages and trimmed.dropped == 0
