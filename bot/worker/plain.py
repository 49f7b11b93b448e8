"""The plain path: one job through `model.generate`, streamed token by token.

For a lone user this is faster than a batch of one (32 vs 19 tok/s on an H100). It stops
early when the job is cancelled, when no token came for the idle timeout, or when another
job for the same model arrives (`should_hand_off`): the engine then continues this job in a
continuous batch together with the newcomer.

Everything per token happens in the streamer's put(), which generate calls once the token
is on the host anyway: no logits processor or stopping criterion of ours (transformers
inspects a processor's signature at every step, and each costs tensor work), no EOS check
of generate's (put() knows the stop ids), and no device sync of our own. The NaN check
reads the model's own logits at the chosen token (a NaN wins argmax, a row of -inf leaves
-inf), and stopping, early or at a stop id, is an exception out of put().
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from typing import Any, Callable

from bot.worker.running import RunningJob


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or infinite scores for every token."""


class _StopGenerating(Exception):
    """Raised in put() to end generate early; carries why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run_plain(model: Any, pad_token_id: int | None, running: RunningJob, idle_timeout: float,
              should_hand_off: Callable[[], bool], between_tokens: Callable[[], None] = lambda: None) -> str:
    """Generate until the job ends or must move; returns why it stopped:
    "done" (EOS or the token limit), "cancelled", "timeout" or "handoff".
    `between_tokens` runs whenever the job's text is handed on (the engine's housekeeping while
    generate blocks), and so does `should_hand_off`."""
    import torch

    job = running.job
    logits: dict[str, Any] = {}

    class Streamer:
        """transformers' streamer protocol: put() gets the prompt first, then each new token."""

        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            tokens = value.tolist()  # generate hands over one token per sequence: a 1-D tensor
            last = logits.get("last")
            if last is not None and not math.isfinite(last[0, -1, tokens[-1]].item()):
                raise NonFiniteLogits("the model produced NaN scores")
            reason = take_tokens(running, tokens, idle_timeout, should_hand_off, between_tokens)
            if reason is not None:
                raise _StopGenerating(reason)

        def end(self):
            pass

    input_ids = torch.tensor([running.continuation_ids()], device=model.device)
    settings = dict(job.settings, max_new_tokens=running.remaining)
    stop_ids = list(job.stop_token_ids)
    if pad_token_id is None:
        pad_token_id = stop_ids[0] if stop_ids else 0
    running.last_token_at = time.monotonic()  # the idle clock starts now, not at submission
    try:
        with keeping_logits(model, logits), torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                # put() stops at the job's stop ids; generate's own EOS check (a stopping
                # criterion and three tensor ops per step) would only repeat it. An explicit
                # None keeps generate from falling back to the model's EOS.
                eos_token_id=None,
                pad_token_id=pad_token_id,
                streamer=Streamer(),
                **settings,
            )
    except _StopGenerating as stop:
        return stop.reason
    except NonFiniteLogits:
        raise
    except Exception as exc:
        # sampling from NaN scores fails inside generate (torch.multinomial) before put() sees it
        last = logits.get("last")
        if last is not None and not bool(torch.isfinite(last[0, -1]).all()):
            raise NonFiniteLogits("the model produced NaN scores") from exc
        raise
    return "done"


def take_tokens(running: RunningJob, tokens: list[int], idle_timeout: float, should_hand_off: Callable[[], bool],
                between_tokens: Callable[[], None]) -> str | None:
    """A step's new tokens into the job, then the checks the lone path makes after each: why it
    must stop ("cancelled", "timeout", "done" or "handoff"), or None to go on (run_plain's and
    the bench's null model's put(): bot/bench_null.py)."""
    late = running.idle_for() > idle_timeout  # this token came after the idle timeout
    handed_on = running.push(tokens)
    if running.job.cancelled.is_set():
        return "cancelled"
    if late:
        return "timeout"
    if running.finished:  # a stop token (generate itself is given none) or the token limit
        return "done"
    # the queue is looked at when text went out (the first token, then every text_every), not
    # after every token: a newcomer joins the batch at most text_every later
    if handed_on:
        between_tokens()
        if should_hand_off():
            return "handoff"
    return None


@contextmanager
def keeping_logits(model: Any, kept: dict[str, Any]):
    """While inside, kept["last"] is the logits of the model's latest forward, as generate gets
    them (a reference only: put() reads it once the step is done anyway). It wraps the model's
    own forward on the instance rather than registering a forward hook: any hook sends every
    call of its module down nn.Module's slow path, which cost ~2% of a small model's speed on a
    CPU (measured); the wrapper costs one Python call per step."""
    before = model.__dict__.get("forward")  # an instance forward of someone else's (accelerate's hooks)
    inner = model.forward

    @functools.wraps(inner)  # generate reads forward's signature (logits_to_keep, position_ids, ...)
    def forward(*args, **kwargs):
        output = inner(*args, **kwargs)
        kept["last"] = getattr(output, "logits", None)
        return output

    model.forward = forward
    try:
        yield
    finally:
        if before is None:
            del model.forward
        else:
            model.forward = before
