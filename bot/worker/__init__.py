"""The model worker: owns the device and every torch call."""

from bot.worker.engine import Worker
from bot.worker.jobs import GenerationFailed, GenerationJob, GenerationStats, GenerationStream, WorkerBusy

__all__ = ["GenerationFailed", "GenerationJob", "GenerationStats", "GenerationStream", "Worker", "WorkerBusy"]
