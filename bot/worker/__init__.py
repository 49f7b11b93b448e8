"""The local engine: the in-process worker that owns the device and every torch call.

The job, stream and stats types it speaks live in bot/generation.py (every engine's); they
are re-exported here for the callers that knew them as the worker's.
"""

from bot.generation import GenerationFailed, GenerationJob, GenerationStats, GenerationStream, WorkerBusy
from bot.worker.engine import Worker

__all__ = ["GenerationFailed", "GenerationJob", "GenerationStats", "GenerationStream", "Worker", "WorkerBusy"]
