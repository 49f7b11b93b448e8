"""The model worker: owns the device and every torch call."""

from bot.worker.engine import GenerationFailed, GenerationJob, GenerationStats, GenerationStream, Worker

__all__ = ["GenerationFailed", "GenerationJob", "GenerationStats", "GenerationStream", "Worker"]
