"""Prometheus metrics for a running bot (the `metrics:` config section turns them on).

Events are counted where they happen: the host records how each request ended, with its
stats (bot/host.py); the intake hands the write-wait observer to each answer's writes
(bot/write_budget.py). What the engines hold now (queues, jobs in flight, loaded models)
is read from their snapshot() at scrape time, so nothing has to be kept in step.

Each app has a registry of its own (never prometheus_client's global one): several apps
in one process (tests) must not share or collide. This module imports prometheus_client:
import it only when metrics are on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bot.generation import GenerationStats, WorkerBusy
from bot.reply import ReplyGone

log = logging.getLogger(__name__)

OUTCOMES = ("answered", "failed", "cancelled", "busy")
# time to first token includes the queue and a model load: from a fraction of a second (a warm
# GPU) to minutes (a cold 8B load on a slow disk)
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# tokens/s of one answer: a few on a CPU, hundreds on a large GPU
SPEED_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0)
# how long one platform write waited: a write budget's window is seconds to a minute
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, engines: Any):
        """`engines`: the app's Engines (anything with .all() of objects with .snapshot())."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelbot_requests", "Chat requests by how they ended: answered, failed, cancelled, busy (refused)",
            ["frontend", "model", "outcome"], registry=self.registry)
        self.tokens = Counter("modelbot_generated_tokens", "Tokens generated, in requests that ended with stats (answered or stopped)",
                              ["model"], registry=self.registry)
        self.first_token = Histogram(
            "modelbot_time_to_first_token_seconds", "Answered requests: submission to first token (queue and load included)",
            ["model"], buckets=FIRST_TOKEN_BUCKETS, registry=self.registry)
        self.speed = Histogram("modelbot_tokens_per_second", "Answered requests of more than one token: generation speed",
                               ["model"], buckets=SPEED_BUCKETS, registry=self.registry)
        self.write_waits = Histogram(
            "modelbot_rate_limit_wait_seconds",
            "Platform writes held back: by the bot's write budget (reason=budget) or by the platform (reason=platform, a 429)",
            ["frontend", "reason"], buckets=WAIT_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(engines))

    # -- what the host records -------------------------------------------------------------------
    def finished(self, frontend: str, model: str, stats: GenerationStats | None) -> None:
        """A request whose stream ended normally: answered, or stopped (/stop, deleted) if its stats say so."""
        if stats is not None and stats.new_tokens:
            self.tokens.labels(model).inc(stats.new_tokens)
        if stats is None or stats.stopped_by == "cancelled":
            self._count(frontend, model, "cancelled")
            return
        self._count(frontend, model, "answered")
        if stats.time_to_first_token is not None:
            self.first_token.labels(model).observe(stats.time_to_first_token)
        if stats.new_tokens > 1 and stats.generation_seconds > 0:  # as /stats: one token says nothing of speed
            self.speed.labels(model).observe(stats.tokens_per_second)

    def ended_by(self, frontend: str, model: str, exc: BaseException) -> None:
        """A request that ended with an exception: refused as busy, cancelled, or failed."""
        if isinstance(exc, WorkerBusy):
            outcome = "busy"
        elif isinstance(exc, (asyncio.CancelledError, ReplyGone)):
            outcome = "cancelled"  # stopped, shut down, or its reply deleted on the platform
        else:
            outcome = "failed"
        self._count(frontend, model, outcome)

    def _count(self, frontend: str, model: str, outcome: str) -> None:
        self.requests.labels(frontend or "unknown", model, outcome).inc()

    # -- what the frontends' writes report --------------------------------------------------------
    def write_wait_observer(self, frontend: str) -> Callable[[str, float], None]:
        """For bot.write_budget.write_waits: (reason, seconds) -> the rate-limit histogram."""
        def observe(reason: str, seconds: float) -> None:
            self.write_waits.labels(frontend, reason).observe(seconds)

        return observe

    def exposition(self) -> bytes:
        """The Prometheus text format of everything, read now."""
        return generate_latest(self.registry)


class EngineCollector:
    """Gauges and counters read from each engine's snapshot() when Prometheus scrapes."""

    def __init__(self, engines: Any):
        self.engines = engines

    def collect(self) -> Iterable[Any]:
        queued = GaugeMetricFamily("modelbot_queue_depth", "Jobs waiting for their turn", labels=["engine"])
        in_flight = GaugeMetricFamily("modelbot_in_flight", "Jobs generating now", labels=["engine"])
        healthy = GaugeMetricFamily("modelbot_healthy_replicas", "Remote engines: replicas taking requests",
                                    labels=["engine"])
        budget = GaugeMetricFamily("modelbot_memory_budget_bytes", "Local engine: memory the models may use",
                                   labels=["engine"])
        resident = GaugeMetricFamily("modelbot_model_resident_bytes", "Loaded models: weights plus caches in memory",
                                     labels=["model"])
        loads = CounterMetricFamily("modelbot_model_loads", "Model loads since start", labels=["model"])
        evictions = CounterMetricFamily("modelbot_model_evictions", "Model unloads since start", labels=["model"])
        for engine in self.engines.all():
            try:
                snapshot = engine.snapshot()
            except Exception:  # noqa: BLE001 - one engine's bug must not fail the whole scrape
                log.warning("could not read the %s engine's snapshot for metrics", getattr(engine, "kind", "?"),
                            exc_info=True)
                continue
            name = engine_label(snapshot)
            queued.add_metric([name], snapshot.get("queued", 0))
            in_flight.add_metric([name], snapshot.get("running", 0))
            if "replicas" in snapshot:
                healthy.add_metric([name], sum(1 for r in snapshot["replicas"] if r.get("healthy")))
            if snapshot.get("budget_bytes") is not None:
                budget.add_metric([name], snapshot["budget_bytes"])
            models = [m for m in snapshot.get("models", []) if isinstance(m, dict)]  # a remote engine lists names
            for model in models:
                resident.add_metric([model["name"]], model.get("footprint_bytes", 0) + model.get("cache_bytes", 0))
            for family, key in ((loads, "loads"), (evictions, "evictions")):
                for model, count in per_model_counts(snapshot, models, key).items():
                    family.add_metric([model], count)
        return [queued, in_flight, healthy, budget, resident, loads, evictions]


def engine_label(snapshot: dict[str, Any]) -> str:
    """"local" for the in-process worker (it serves every local model); a remote engine serves
    one model: "openai:NAME"."""
    kind = snapshot.get("kind", "engine")
    if kind == "local":
        return kind
    names = [m if isinstance(m, str) else m.get("name", "?") for m in snapshot.get("models", [])]
    return f"{kind}:{','.join(names)}" if names else kind


def per_model_counts(snapshot: dict[str, Any], models: list[dict], key: str) -> dict[str, int]:
    """Loads or evictions per model: from `{key}_by_model` (every model ever loaded), else from
    each loaded model's entry. Engines that count neither give nothing."""
    counts = {m["name"]: m[key] for m in models if isinstance(m.get(key), (int, float))}
    by_model = snapshot.get(f"{key}_by_model")
    if isinstance(by_model, dict):
        counts.update(by_model)
    return counts
