"""The `openai` engine: one remote model served by OpenAI-compatible servers (vLLM, SGLang,
llama.cpp, TGI, Ollama, `transformers serve`), behind modelbot's fair queue.

Jobs wait in the same FairQueue as local ones (round-robin between users, per-user caps,
"queued: 3rd"); at most `max_concurrency` are in flight at the servers, which batch them.
Before the first token a failed request moves to another replica; after it, never: the
user keeps the text so far and gets a notice (no duplicated text).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from bot.config import ModelSpec, WorkerSettings
from bot.engines.openai.client import (
    ReplicaFailed, RequestRejected, check_health, classify, make_client, stream_chunks,
)
from bot.engines.openai.options import OpenAIOptions
from bot.engines.openai.replicas import Replica, ReplicaPool
from bot.fair_queue import FairQueue
from bot.generation import (
    AnswerCut, EngineUnavailable, GenerationFailed, GenerationJob, GenerationStats, GenerationStream,
    GenerationTimedOut, RecentAnswers, open_stream,
)
from bot.inspect import LayerReport

log = logging.getLogger(__name__)

RECENT_JOBS = 200
MAX_RATE_LIMIT_WAIT = 30.0  # the longest a job waits on 429s (Retry-After) before it is told


class OpenAIEngine:
    kind = "openai"

    def __init__(self, spec: ModelSpec, options: OpenAIOptions, limits: WorkerSettings, catalog: Any):
        self.spec = spec
        self.options = options
        self.limits = limits
        self.catalog = catalog
        self.queue = FairQueue(limits.max_pending, limits.max_pending_per_user)
        self._clients = {url: make_client(url, options) for url in options.base_urls}
        self.pool = ReplicaPool(options.base_urls, self._health_check)
        self._served_model: str | None = options.served_model
        self._streams: dict[int, GenerationStream] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self.recent = RecentAnswers(RECENT_JOBS)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    # -- the engine contract --------------------------------------------------------------------
    def submit(self, job: GenerationJob, progress: Callable[[str], None] | None = None,
               on_position: Callable[[int], None] | None = None) -> GenerationStream:
        if self._closing:
            raise GenerationFailed("the bot is shutting down")
        stream = open_stream(job, self.limits.max_new_tokens, progress, on_position)
        loop = asyncio.get_running_loop()
        stream.wake = lambda: loop.call_soon_threadsafe(self._cancel, job.id)
        self.queue.push(stream)  # raises WorkerBusy when the queue or the user's share is full
        self._streams[job.id] = stream
        self._wake.set()
        return stream

    def active_jobs(self, channel: str | None = None) -> list[GenerationStream]:
        return [s for s in self._streams.values() if channel is None or s.job.channel == channel]

    def reserve(self, user: str) -> None:
        """/compare or /layers in progress: one request of `user` until release() (WorkerBusy at the cap)."""
        self.queue.reserve(user)

    def release(self, user: str) -> None:
        self.queue.release(user)

    def generating(self) -> bool:
        return bool(self._tasks)

    def ready_models(self) -> list[str]:
        return [self.spec.name] if any(r.healthy for r in self.pool.replicas) else []

    def where(self, spec: ModelSpec | None = None) -> str:
        urls = self.options.base_urls
        more = f" (+{len(urls) - 1} replica{'s' if len(urls) > 2 else ''})" if len(urls) > 1 else ""
        return f"openai {urls[0]}{more}"

    async def inspect(self, spec: ModelSpec, progress: Callable[[str], None]) -> LayerReport:
        from bot.engines.openai.layers import inspect_remote

        return await asyncio.to_thread(inspect_remote, self.catalog, spec, self.describe_serving())

    def describe_serving(self) -> str:
        model = self._served_model or "the server's first model"
        return f"served by {', '.join(self.options.base_urls)} as {model} (api: {self.options.api})"

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "models": [self.spec.name], "where": self.where(),
            "api": self.options.api, "served_model": self._served_model,
            "replicas": [r.snapshot() for r in self.pool.replicas],
            "running": len(self._tasks), "queued": len(self.queue), "max_concurrency": self.options.max_concurrency,
            **self.recent.summary(),
        }

    async def close(self) -> None:
        self._closing = True
        self._dispatcher.cancel()
        for stream in self.queue.drain():
            self._end_waiting(stream, GenerationFailed("the bot is shutting down"))
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()  # each ends its answer as "stopped", with the text so far
        await asyncio.gather(*tasks, return_exceptions=True)
        self.pool.close()
        await asyncio.gather(*(client.close() for client in self._clients.values()), return_exceptions=True)

    # -- the queue -----------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for stream in self.queue.remove_cancelled():
                self._end_waiting(stream)
            while len(self._tasks) < self.options.max_concurrency:
                stream = self.queue.take()
                if stream is None:
                    break
                task = asyncio.get_running_loop().create_task(self._run(stream))
                self._tasks[stream.job.id] = task
                task.add_done_callback(lambda _, stream=stream: self._settle_unstarted(stream))

    def _cancel(self, job_id: int) -> None:
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()  # closes the HTTP response: the server aborts the request
        else:
            self._wake.set()  # still waiting: the dispatcher takes it out of the queue

    def _end_waiting(self, stream: GenerationStream, error: GenerationFailed | None = None) -> None:
        self._streams.pop(stream.job.id, None)
        stream.end_unstarted(error)

    def _settle_unstarted(self, stream: GenerationStream) -> None:
        """A task cancelled before its first step never runs its body: end its answer here."""
        if stream.job.id in self._tasks:
            self._ended(stream)
            self._end_waiting(stream)

    def _ended(self, stream: GenerationStream) -> None:
        self._tasks.pop(stream.job.id, None)
        self._streams.pop(stream.job.id, None)
        self.queue.job_ended(stream.job.user, stream.job.reserved)
        self._wake.set()

    # -- one job -------------------------------------------------------------------------------
    async def _run(self, stream: GenerationStream) -> None:
        job = stream.job
        stream.report_position(0)
        started = time.monotonic()
        stats = GenerationStats(model=job.model, prompt_tokens=len(job.input_ids), queue_seconds=started - stream.submitted)
        counted = 0
        try:
            async for chunk in self._stream_with_failover(job):
                if chunk.text:
                    if stats.first_token_seconds is None:
                        stats.first_token_seconds = time.monotonic() - started
                    counted += 1
                    stream.emit(chunk.text)
                if chunk.completion_tokens is not None:
                    stats.new_tokens = chunk.completion_tokens
                if chunk.prompt_tokens is not None:
                    stats.prompt_tokens = chunk.prompt_tokens
                if chunk.finish_reason == "length":
                    stats.stopped_by = "length"
        except asyncio.CancelledError:
            stats.stopped_by = "cancelled"
        except GenerationFailed as exc:
            self._ended(stream)
            stream.finish(error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug here fails this answer, not the engine
            log.exception("remote job %s on %s failed", job.id, job.model)
            self._ended(stream)
            stream.finish(error=GenerationFailed(f"generation failed ({type(exc).__name__}: {exc})"))
            return
        stats.new_tokens = stats.new_tokens or counted  # the server's usage count when it sent one
        stats.generation_seconds = time.monotonic() - started
        self._ended(stream)
        self.recent.add(stats)
        stream.finish(stats)

    async def _stream_with_failover(self, job: GenerationJob):
        """Chunks from the first replica that answers; a replica failing before the first token
        hands the request to the next, one failing after it ends the answer as cut."""
        tried: set[str] = set()
        waited = 0.0
        last: tuple[str, ReplicaFailed] | None = None  # the latest failure and where, for the user's message
        while True:
            replica = await self._next_replica(tried)
            if replica is None:
                pause = self.pool.soonest_retry_after(tried)
                if pause is not None and waited + pause <= MAX_RATE_LIMIT_WAIT:
                    await asyncio.sleep(pause)  # every replica asked us to slow down: do as told
                    waited += pause
                    continue
                raise self._unavailable(last)
            sent_any = False
            replica.in_flight += 1
            try:
                model = await self._model_id(replica)
                async for chunk in stream_chunks(self._clients[replica.url], job, model, self.options):
                    sent_any = sent_any or bool(chunk.text)
                    yield chunk
                replica.served += 1
                return
            except ReplicaFailed as exc:
                last = (replica.url, exc)
                if sent_any:
                    self.pool.mark_failed(replica, str(exc))
                    raise AnswerCut(f"the model's server ({replica.url}) stopped answering midway ({exc}); "
                                    "the answer above is incomplete, please ask again") from None
                if exc.retry_after is not None:
                    self.pool.rate_limited(replica, exc.retry_after)
                    tried.discard(replica.url)
                else:
                    self.pool.mark_failed(replica, str(exc))
                    tried.add(replica.url)
            except RequestRejected as exc:
                raise self._rejected(replica, exc) from None
            finally:
                replica.in_flight -= 1

    async def _next_replica(self, tried: set[str]) -> Replica | None:
        replica = self.pool.pick(tried)
        if replica is None and all(not r.healthy for r in self.pool.replicas):
            # every replica is down: check them now rather than fail a request a restarted server could serve
            if await self.pool.revive():
                replica = self.pool.pick(tried)  # one that failed this request already is not asked twice
        return replica

    async def _model_id(self, replica: Replica) -> str:
        if self._served_model is None:
            try:
                served = await check_health(self._clients[replica.url])
            except Exception as exc:  # noqa: BLE001
                raise classify(exc) from None
            if not served:
                raise RequestRejected("the server lists no models at GET /models; set served_model", 404)
            self._served_model = served[0]
        return self._served_model

    async def _health_check(self, url: str) -> None:
        await check_health(self._clients[url])

    def _unavailable(self, last: tuple[str, ReplicaFailed] | None) -> GenerationFailed:
        """No replica took the request: busy, too slow, or down (what the replicas said)."""
        why = f"{last[0]}: {last[1]}" if last is not None else self.pool.failures()
        failure = last[1] if last is not None else None
        if failure is not None and failure.retry_after is not None:
            return EngineUnavailable(f"{self.spec.name}'s server is busy (it answered 429 for "
                                     f"{MAX_RATE_LIMIT_WAIT:g} s); please try again in a minute")
        if failure is not None and failure.timed_out:
            return GenerationTimedOut(f"{self.spec.name}'s server did not answer in time ({why}); please try again")
        return EngineUnavailable(f"{self.spec.name}'s server cannot be reached ({why}); please try again later")

    def _rejected(self, replica: Replica, exc: RequestRejected) -> GenerationFailed:
        if exc.status in (401, 403):
            return EngineUnavailable(
                f"{replica.url} refused modelbot's credentials ({exc.status}): check the api_key setting of "
                f"model {self.spec.name} in the config")
        return EngineUnavailable(f"{replica.url} refused the request for {self.spec.name} ({exc})")
