"""Which waiting job the worker serves next when models must take turns on the memory.

The fair queue's order decides, except when its head needs a model that would have to be
swapped in (no room beside the loaded ones) while jobs for a loaded model wait: then the
loaded model's jobs go first, until a job for another model is overdue, i.e. has waited
`swap_after` seconds since it was queued or since the last swap, whichever came later
(counted from queuing alone, a backlog on both sides would make every job overdue and the
worker would reload after every answer). Fairness between users within a model stays the
queue's.
"""

from __future__ import annotations

from typing import Callable, Sequence

from bot.generation import GenerationStream


def next_job(order: Sequence[GenerationStream], loaded: set[str], has_room_for: Callable[[str], bool],
             turn_began: float, swap_after: float, now: float) -> GenerationStream | None:
    """`order`: the waiting jobs in the fair queue's order; `turn_began`: when the latest model
    was loaded (time.monotonic())."""
    if not order:
        return None
    head = order[0]
    if not loaded or head.job.model in loaded or has_room_for(head.job.model):
        return head
    overdue = [s for s in order if s.job.model not in loaded and now - max(s.submitted, turn_began) >= swap_after]
    if overdue:
        longest = min(overdue, key=lambda s: s.submitted)
        return next(s for s in order if s.job.model == longest.job.model)
    return next((s for s in order if s.job.model in loaded), head)
