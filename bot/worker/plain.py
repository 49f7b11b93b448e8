"""The plain path: one job through `model.generate`, streamed token by token.

For a lone user this is faster than a batch of one (32 vs 19 tok/s on an H100). It stops
early when the job is cancelled, when no token came for the idle timeout, or when another
job for the same model arrives (`should_hand_off`): the engine then continues this job in a
continuous batch together with the newcomer.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bot.worker.running import RunningJob


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or infinite scores for every token."""


def run_plain(model: Any, pad_token_id: int | None, running: RunningJob, idle_timeout: float,
              should_hand_off: Callable[[], bool], between_tokens: Callable[[], None] = lambda: None) -> str:
    """Generate until the job ends or must move; returns why it stopped:
    "done" (EOS or the token limit), "cancelled", "timeout" or "handoff".
    `between_tokens` runs after every token (the engine's housekeeping while generate blocks)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    job = running.job
    reason = {"value": "done"}

    class Streamer:
        """transformers' streamer protocol: put() gets the prompt first, then each new token."""

        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            running.push([int(t) for t in value.reshape(-1).tolist()])

        def end(self):
            pass

    class Interrupt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            between_tokens()
            if job.cancelled.is_set():
                reason["value"] = "cancelled"
            elif running.idle_for() > idle_timeout:
                reason["value"] = "timeout"
            elif not running.finished and should_hand_off():
                reason["value"] = "handoff"
            else:
                return False
            return True

    class NanGuard(LogitsProcessor):
        def __call__(self, input_ids, scores):
            # one reduction: max() propagates NaN, and a row of only -inf has nothing to pick
            if not bool(torch.isfinite(scores.amax(dim=-1)).all()):
                raise NonFiniteLogits("the model produced NaN scores")
            return scores

    input_ids = torch.tensor([running.continuation_ids()], device=model.device)
    settings = dict(job.settings, max_new_tokens=running.remaining)
    stop_ids = list(job.stop_token_ids)
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    running.last_token_at = time.monotonic()  # the idle clock starts now, not at submission
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            # an empty list means "no stop token"; None would fall back to the model's EOS
            eos_token_id=stop_ids or -1,
            pad_token_id=pad_token_id,
            streamer=Streamer(),
            stopping_criteria=StoppingCriteriaList([Interrupt()]),
            logits_processor=LogitsProcessorList([NanGuard()]),
            **settings,
        )
    return reason["value"]
