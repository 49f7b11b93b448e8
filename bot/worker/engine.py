"""The worker: one thread owns the device and runs every job; the asyncio loop never runs torch.

The loop (`_run`) serves one model at a time. It takes jobs from the fair queue, makes
sure their model is loaded (residency), and runs them:
- a lone job through plain `generate` (fastest for one user); when a second job for the
  same model arrives, the first one stops at the next token and both continue together;
- concurrent jobs through one continuous batch, joining and leaving it at any step, up to
  `max_batch` at once.
While a job for another model is next, the running batch takes no new jobs, so it drains
and the other model gets its turn. Which job is next is the fair queue's order, except that
a model that must be swapped in (no room beside the loaded ones) waits while the loaded
models have jobs waiting, for at most `swap_after` seconds (from its job's queuing, or from
the last swap if that came later): two busy channels on two models take turns of about
`swap_after` seconds instead of reloading for every answer (bot/worker/turns.py). A model nobody used
for its `keep_alive` is unloaded (`_unload_idle`). Tokens reach the event loop through each
job's stream, decoded a few tokens at a time (`TEXT_EVERY`), a batch step's text for all
replies in one wake-up (bot/handoff.py); a failing job ends with a message and the loop
carries on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from bot.catalog import ModelCatalog
from bot.config import ModelSpec, WorkerSettings
from bot.errors import UserFacingError
from bot.fair_queue import FairQueue
from bot.handoff import handing_off
from bot.generation import (
    GenerationFailed, GenerationJob, GenerationStream, GenerationTimedOut, InvalidScores, OutOfMemory,
    RecentAnswers, WorkerBusy, open_stream,
)
from bot.text import human_bytes
from bot.worker.batching import BatchSession, kv_bytes_per_token, unbatchable_reason
from bot.worker.loading import LoadedModel, ModelLoader
from bot.worker.memory import device_total_bytes, is_out_of_memory, release_freed_memory
from bot.worker.plain import NonFiniteLogits, run_plain
from bot.worker.residency import NoRoomYet, Residency
from bot.worker.running import RunningJob
from bot.worker.turns import next_job

if TYPE_CHECKING:
    from bot.inspect import LayerReport

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02  # how long a batch step waits for tokens before checking cancels and newcomers
IDLE_BATCH_SECONDS = 1.0  # CPU only: how long a drained batch waits for new jobs before it stops
RECENT_JOBS = 200
# how often a reply's new tokens are decoded and handed to the loop (bot/worker/running.py), and a
# lone reply's generate looks at the queue: well below any frontend's edit interval (a second or
# more), while a model slower than 10 tok/s still sends token by token. Each hand-off wakes the
# loop, whose work then holds the GIL against generation: every 20 ms instead cost a small model
# ~2% of its speed on a CPU (measured with the smoke bench).
TEXT_EVERY = 0.1


class _Call:
    """fn(loaded_model) to run on the worker thread, answered through an asyncio future."""

    def __init__(self, model: str, fn: Callable[[LoadedModel], Any], progress: Callable[[str], None]):
        self.model, self.fn, self.progress = model, fn, progress
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future = self.loop.create_future()

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


class Worker:
    kind = "local"
    #: how tokens are made, alone and in a batch (the bench's null model swaps both: bot/bench_null.py)
    generate_alone = staticmethod(run_plain)
    batch_session_type = BatchSession

    def __init__(self, catalog: ModelCatalog, settings: WorkerSettings | None = None, max_resident: int = 1):
        self.catalog = catalog
        self.loader = ModelLoader(catalog)
        self.settings = settings or WorkerSettings()
        self.max_resident = max_resident
        self.queue = FairQueue(self.settings.max_pending, self.settings.max_pending_per_user)
        self.residency: Residency | None = None  # made on the worker thread (sizing the budget imports torch)
        self.budget = 0
        self.recent = RecentAnswers(RECENT_JOBS)
        self._streams: dict[int, GenerationStream] = {}  # waiting and running, for /stop and caps
        self._streams_lock = threading.Lock()
        self._running: dict[int, RunningJob] = {}  # worker thread only
        self._session: BatchSession | None = None
        self._session_model: str | None = None
        self._session_key: tuple = ()
        self._calls: deque[_Call] = deque()
        self._drained_at = 0.0  # when the running batch last ran out of jobs
        self._starting = False  # between a model being ready and its first job running
        self._loading: dict[str, str] = {}  # model -> its latest load progress, for jobs that arrive mid-load
        self._last_used: dict[str, float] = {}  # model -> when its last job or call ended (keep_alive)
        # the models that may be unloaded for being idle, once: the check runs between tokens
        self._keep_alive = {spec.name: seconds for spec in catalog.settings.models
                            if (seconds := catalog.settings.keep_alive(spec.name)) != math.inf}
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="modelbot-worker", daemon=True)
        self._thread.start()

    # -- event-loop side ------------------------------------------------------------------------
    def submit(self, job: GenerationJob, progress: Callable[[str], None] | None = None,
               on_position: Callable[[int], None] | None = None) -> GenerationStream:
        """Queue a job; raises WorkerBusy (a GenerationFailed) when the queue is full."""
        if self._closing:
            raise GenerationFailed("the bot is shutting down")
        stream = open_stream(job, self.settings.max_new_tokens, progress, on_position)
        stream.wake = self._wake.set
        with self._streams_lock:  # known before the worker can see it, so that its end is booked
            self._streams[job.id] = stream
        try:
            self.queue.push(stream)
        except WorkerBusy:
            with self._streams_lock:
                self._streams.pop(job.id, None)
            raise
        if (loading := self._loading.get(job.model)) is not None:
            stream.report_progress(loading)  # it arrived mid-load: say what the others already saw
        self._wake.set()
        return stream

    async def call(self, model: str, fn: Callable[[LoadedModel], Any], progress: Callable[[str], None] = log.info) -> Any:
        """Run fn(loaded_model) on the worker thread, loading the model first if needed."""
        if self._closing:
            raise GenerationFailed("the bot is shutting down")
        call = _Call(model, fn, progress)
        self._calls.append(call)
        self._wake.set()
        return await call.future

    async def preload(self, model: str) -> None:
        """Load `model` now (at start), through the worker thread like any job."""
        await self.call(model, lambda loaded: None)

    def reserve(self, user: str) -> None:
        """A command running models in turn (/compare, /layers) counts as one request of `user`
        until release(); raises WorkerBusy when the user is at the cap."""
        self.queue.reserve(user)

    def release(self, user: str) -> None:
        self.queue.release(user)

    def loaded_names(self) -> list[str]:
        return self.residency.names() if self.residency else []

    def ready_models(self) -> list[str]:
        return self.loaded_names()

    def where(self, spec: ModelSpec) -> str:
        return f"local ({self.loader.device if self.residency else self.catalog.settings.device})"

    async def inspect(self, spec: ModelSpec, progress: Callable[[str], None]) -> LayerReport:
        from bot.inspect import inspect_model

        if spec.name not in self.loaded_names():
            progress(f"loading {spec.name}…")
        return await self.call(spec.name, lambda loaded: inspect_model(loaded.model, spec.name))

    def generating(self) -> bool:
        """Whether any job is generating (or starting to) right now (any thread)."""
        return bool(self._running) or self._starting

    def active_jobs(self, channel: str | None = None) -> list[GenerationStream]:
        with self._streams_lock:
            return [s for s in self._streams.values() if channel is None or s.job.channel == channel]

    async def close(self) -> None:
        self._closing = True
        for stream in self.active_jobs():
            stream.cancel()
        self._wake.set()
        # polled, not joined in an executor thread: a caller's timeout must be able to give up
        # on a model still loading without leaving a thread that the interpreter's exit waits for
        while self._thread.is_alive():
            await asyncio.sleep(0.02)

    def snapshot(self) -> dict[str, Any]:
        """What /stats shows: models and memory, queue, recent speed (any thread)."""
        active = self.active_jobs()
        running = [s for s in active if s.position == 0]
        models = self.residency.snapshot() if self.residency else []
        for entry in models:
            entry["jobs"] = sum(1 for s in running if s.job.model == entry["name"])
        eviction = self.residency.last_eviction if self.residency else None
        return {
            "kind": self.kind,
            "device": self.loader.device if self.residency else "starting",
            "budget_bytes": self.budget,
            "used_bytes": sum(m["footprint_bytes"] + m["cache_bytes"] for m in models),
            "models": models,
            "running": len(running),
            "queued": len(self.queue),
            "batching": self.settings.batching,
            **self.recent.summary(),
            "last_eviction": None if eviction is None else {
                "model": eviction.name, "expected_bytes": eviction.expected_bytes, "freed_bytes": eviction.freed_bytes,
            },
            "loads_by_model": self.residency.loads_by_model() if self.residency else {},
            "evictions_by_model": self.residency.evictions_by_model() if self.residency else {},
        }

    # -- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._set_up()
            while not self._closing:
                if not self._running:  # a running batch waits in its poll instead: for its next tokens
                    self._wake.wait(timeout=0.5)
                self._wake.clear()
                if self._closing:
                    break
                try:
                    self._serve_once()
                except Exception as exc:  # a bug here must not take the bot down: end what ran, go on
                    log.exception("the worker loop failed; ending the running replies and carrying on")
                    for running in list(self._running.values()):
                        self._fail(running, exc)
                    self._close_session()
        except Exception:
            log.exception("the worker could not start")
        finally:
            self._shut_down()

    def _serve_once(self) -> None:
        self._end_cancelled_waiting()
        self._run_calls()
        if self._running:
            self._step_batch()
        elif (head := self._next_job()) is not None:
            self._start(head)
        else:
            self._close_idle_batch()
        self._unload_idle()

    def _next_job(self) -> GenerationStream | None:
        """The job to serve next: the fair queue's, with swap turns (bot/worker/turns.py)."""
        order = self.queue.waiting()
        if self.residency is None:
            return order[0] if order else None
        return next_job(order, set(self.residency.names()), self.residency.has_room_for,
                        self.residency.last_load_at, self.settings.swap_after, time.monotonic())

    def _close_idle_batch(self) -> None:
        """On a CPU, stop a drained batch once the worker has been idle for a moment: its idle
        thread keeps a second OpenMP team alive, which slows every later plain generate by ~40%
        (measured), and stopping it stalls the thread ~0.4 s (its gc.collect), best spent idle.
        On a GPU it stays warm: rebuilding it would redo its CUDA-graph warm-up."""
        if self._session is None or self._on_gpu():
            return
        if time.monotonic() - self._drained_at >= IDLE_BATCH_SECONDS:
            self._close_session()

    def _housekeeping(self) -> None:
        """While plain generate holds the thread: end jobs cancelled in the queue, unload idle
        models. run_plain calls it when the job's text goes out (every TEXT_EVERY), not after
        every token: it scans the queue."""
        self._end_cancelled_waiting()
        self._unload_idle()

    def _set_up(self) -> None:
        device = self.loader.device
        total = device_total_bytes(device)
        chosen = self.settings.memory_budget
        if chosen is None and self.settings.memory_budget_fraction is not None:
            chosen = int(total * self.settings.memory_budget_fraction)
        self.budget = chosen or total
        self.residency = Residency(self.loader, self.budget, self.max_resident, on_evict=self._before_evict)
        log.info("worker on %s, memory budget %s", device, human_bytes(self.budget))

    def _shut_down(self) -> None:
        self._closing = True
        for stream in self.queue.drain():
            self._end_waiting(stream, error="the bot is shutting down")
        for running in list(self._running.values()):
            self._finish(running, stopped_by="cancelled")
        for call in list(self._calls):
            call.resolve(error=GenerationFailed("the bot is shutting down"))
        self._calls.clear()
        self._close_session()
        if self.residency is not None:
            self.residency.evict_all()

    # jobs ---------------------------------------------------------------------------------
    def _start(self, head: GenerationStream) -> None:
        """Nothing is running: load the head job's model and start it (and its batch mates)."""
        model = head.job.model
        loaded = self._load(model)
        if loaded is None:
            return
        self._starting = True  # set before take() reports the others' new positions
        try:
            self._start_on(loaded, head)
        finally:
            self._starting = False

    def _start_on(self, loaded: LoadedModel, head: GenerationStream) -> None:
        model = loaded.spec.name
        key = head.job.batch_key()
        same_batch = lambda s: s.job.batch_key() == key  # noqa: E731
        reason = None if self.settings.batching == "off" else unbatchable_reason(loaded.model, head.job.settings)
        if self.settings.batching == "off" or reason:
            if reason:
                log.debug("%s runs one job at a time: %s", model, reason)
            self._run_plain(loaded, self.queue.take(lambda s: s is head), hand_off=None)
            return
        if self.settings.batching == "auto" and len(self.queue.waiting(same_batch)) == 1:
            self._run_plain(loaded, self.queue.take(lambda s: s is head), hand_off=same_batch)
            return
        if self._open_session(loaded, head.job.settings):
            self._admit(loaded)
        else:
            self._run_plain(loaded, self.queue.take(lambda s: s is head), hand_off=None)

    def _run_plain(self, loaded: LoadedModel, stream: GenerationStream | None,
                   hand_off: Callable[[GenerationStream], bool] | None) -> None:
        if stream is None:
            return
        running = self._begin(stream, loaded)
        if self._session is not None and (self._session.changes_attention or not self._on_gpu()):
            # The batch switched the model to paged attention, which generate cannot use; or, on a
            # CPU, its idle thread would slow this reply by ~40% (see _close_idle_batch).
            self._close_session()
        pad = loaded.tokenizer.pad_token_id
        wants_handoff = (lambda: self.queue.has(hand_off)) if hand_off else (lambda: False)
        while True:
            try:
                outcome = self.generate_alone(loaded.model, pad, running, self.settings.idle_timeout, wants_handoff,
                                              between_tokens=self._housekeeping)
            except Exception as exc:  # only this job fails; the worker lives on
                self._fail(running, exc)
                return
            if outcome != "handoff" or running.finished:
                break
            if self._open_session(loaded, stream.job.settings):
                self._join_batch(running)
                self._admit(loaded)
                return
            wants_handoff = lambda: False  # noqa: E731 - no batch possible: finish alone, then the others
        if outcome == "timeout":
            self._finish(running, error=self._timeout_message())
        else:
            self._finish(running, stopped_by="cancelled" if outcome == "cancelled" else None)

    def _admit(self, loaded: LoadedModel) -> None:
        """Fill free batch slots with waiting jobs of the same batch, in fair order."""
        if self._session is None:
            return
        head = self._next_job()
        if head is not None and head.job.batch_key() != self._session_key:
            return  # someone else is next: let this batch drain
        if any(call.model != self._session_model for call in self._calls):
            return  # a /layers for another model waits for this batch to drain, too
        key = self._session_key
        while len(self._running) < self.settings.max_batch:
            stream = self.queue.take(lambda s: s.job.batch_key() == key)
            if stream is None:
                return
            self._join_batch(self._begin(stream, loaded))

    def _begin(self, stream: GenerationStream, loaded: LoadedModel) -> RunningJob:
        stream.report_position(0)
        running = RunningJob(stream, loaded.tokenizer, stream.job.settings["max_new_tokens"], loaded.footprint_bytes(),
                             text_every=TEXT_EVERY)
        self._running[stream.job.id] = running
        return running

    def _join_batch(self, running: RunningJob) -> None:
        running.request_id = f"job-{running.job.id}-{len(running.tokens)}"
        running.batch_offset = 0
        running.stats.batched = True
        try:
            self._session.add(running.continuation_ids(), running.remaining, running.job.stop_token_ids,
                              running.request_id)
        except Exception as exc:  # noqa: BLE001
            self._fail(running, exc)

    def _step_batch(self) -> None:
        """One look at the running batch: cancels, timeouts, newcomers, then new tokens; what
        it hands to the loop goes in one wake-up (bot/handoff.py)."""
        with handing_off():
            self._step_batch_now()

    def _step_batch_now(self) -> None:
        session = self._session
        if session is None:  # defensive: running jobs without a batch cannot progress
            for running in list(self._running.values()):
                self._finish(running, error="the batch this reply was in stopped; please ask again")
            return
        for running in list(self._running.values()):
            if running.job.cancelled.is_set():
                session.cancel(running.request_id)
                self._finish(running, stopped_by="cancelled")
            elif running.idle_for() > self.settings.idle_timeout:
                session.cancel(running.request_id)
                self._finish(running, error=self._timeout_message())
        loaded = self.residency.get(self._session_model)
        if loaded is not None:
            self._admit(loaded)
        by_request = {r.request_id: r for r in self._running.values()}
        for output in session.poll(POLL_SECONDS):
            running = by_request.get(output.request_id)
            if running is None or running.done:
                continue  # cancelled or failed a moment ago
            if output.error is not None or output.status.name == "FAILED":
                self._finish(running, error=_describe_failure_text(output.error or "generation failed"))
                continue
            fresh = output.generated_tokens[running.batch_offset:]
            logprobs = output.logprobs[running.batch_offset:] if output.logprobs else []
            running.batch_offset = len(output.generated_tokens)
            if any(isinstance(p, float) and math.isnan(p) for p in logprobs):
                session.cancel(running.request_id)
                self._fail(running, NonFiniteLogits("the model produced NaN scores"))
                continue
            running.push(fresh)
            if output.is_finished() or running.finished:
                if not output.is_finished():
                    session.cancel(running.request_id)
                self._finish(running)
        if not session.alive:
            error = session.fatal_error
            log.error("the batch for %s stopped: %s", self._session_model, error)
            for running in list(self._running.values()):
                self._fail(running, error or RuntimeError("the batch stopped"))
            self._close_session()
        elif not self._running:
            self._drained_at = time.monotonic()

    # endings ------------------------------------------------------------------------------
    def _finish(self, running: RunningJob, stopped_by: str | None = None,
                error: str | GenerationFailed | None = None) -> None:
        # the books first, then the stream's end: a /stats right after a reply must count it
        self._running.pop(running.job.id, None)
        self._last_used[running.job.model] = time.monotonic()
        self.queue.job_ended(running.job.user, running.job.reserved)
        with self._streams_lock:
            self._streams.pop(running.job.id, None)
        if error is not None:
            running.fail(error)
            return
        self.recent.add(running.settle(stopped_by))
        running.close()

    def _fail(self, running: RunningJob, exc: BaseException) -> None:
        log.error("job %s on %s failed: %s: %s", running.job.id, running.job.model, type(exc).__name__, exc,
                  exc_info=not isinstance(exc, (NonFiniteLogits, GenerationFailed)) and not is_out_of_memory(exc))
        if is_out_of_memory(exc):
            release_freed_memory()
        self._finish(running, error=_describe_failure(exc))

    def _end_waiting(self, stream: GenerationStream, error: str | GenerationFailed | None = None) -> None:
        """A job that never started: cancelled while queued, its model failed, or shutdown."""
        with self._streams_lock:
            self._streams.pop(stream.job.id, None)
        stream.end_unstarted(error)

    def _end_cancelled_waiting(self) -> None:
        for stream in self.queue.remove_cancelled():
            self._end_waiting(stream)

    def _timeout_message(self) -> GenerationTimedOut:
        return GenerationTimedOut(f"timed out: no new token for {self.settings.idle_timeout:g} s; the reply was ended "
                                  "(the GPU may be overloaded; please try again)")

    # models -------------------------------------------------------------------------------
    def _load(self, model: str) -> LoadedModel | None:
        """The model, loaded once for every job waiting on it; on failure all of them are told."""
        waiting_for_it = lambda s: s.job.model == model  # noqa: E731

        def progress(message: str) -> None:
            self._loading[model] = message
            for stream in self.queue.waiting(waiting_for_it):
                stream.report_progress(message)

        try:
            return self.residency.ensure(model, progress, busy=self._busy_models())
        except NoRoomYet:
            return None  # the models in use finish first; the job stays queued
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails its jobs, not the bot
            message = _describe_failure(exc)
            # a warning: every job waiting for it is told; the traceback is for -v
            log.warning("loading %s failed: %s", model, message, exc_info=not isinstance(exc, GenerationFailed))
            if is_out_of_memory(exc):
                release_freed_memory()
            while (stream := self.queue.take(waiting_for_it)) is not None:
                self.queue.job_ended(stream.job.user, stream.job.reserved)
                self._end_waiting(stream, error=message)
            return None
        finally:
            self._loading.pop(model, None)

    def _unload_idle(self) -> None:
        """keep_alive: unload a model unused (no job running or waiting, no call) for its
        keep_alive seconds, through the same eviction that checks the memory came back."""
        if self.residency is None or not self._keep_alive:
            return
        now = time.monotonic()
        for name in self.residency.names():
            keep_alive = self._keep_alive.get(name)
            if keep_alive is None:
                continue
            idle = now - self._last_used.setdefault(name, now)
            if idle < keep_alive or name in self._busy_models() or name in {c.model for c in list(self._calls)}:
                continue
            if self.queue.has(lambda s: s.job.model == name):
                continue
            log.info("unloading %s: unused for %.1f s (keep_alive %g s)", name, idle, keep_alive)
            self.residency.evict(name)
            self._last_used.pop(name, None)

    def _busy_models(self) -> set[str]:
        return {r.job.model for r in self._running.values()}

    def _run_calls(self) -> None:
        for _ in range(len(self._calls)):
            call = self._calls.popleft()
            busy = self._busy_models()
            if busy and call.model not in busy:
                self._calls.append(call)  # wait until the running model's jobs are done
                continue
            try:
                loaded = self.residency.ensure(call.model, call.progress, busy=busy)
                call.resolve(call.fn(loaded))
                self._last_used[call.model] = time.monotonic()
            except NoRoomYet:
                self._calls.append(call)
            except Exception as exc:  # noqa: BLE001 - the caller gets the error
                call.resolve(error=exc)

    def _open_session(self, loaded: LoadedModel, settings: dict[str, Any]) -> bool:
        """A running continuous batch for this model and settings (reused when it matches)."""
        key = GenerationJob(loaded.spec.name, [], [], settings).batch_key()
        if self._session is not None and self._session_key == key and self._session.alive:
            return True
        self._close_session()
        per_token = kv_bytes_per_token(loaded.model)
        kv_tokens = self.settings.kv_cache_tokens
        if kv_tokens is None:
            room = int(0.9 * (self.budget - self.residency.used())) // per_token
            kv_tokens = min(room, self.settings.max_batch * 1024)
        if kv_tokens < 256:
            log.warning("a batch KV cache for %s would hold only %d tokens (worker.memory_budget, kv_cache_tokens): "
                        "its jobs run one at a time", loaded.spec.name, max(kv_tokens, 0))
            return False
        try:
            self._session = self.batch_session_type(loaded.model, settings, self.settings.max_batch, kv_tokens,
                                                    self.loader.device)
        except Exception:  # noqa: BLE001 - batching is an optimisation: without it jobs run one by one
            log.exception("continuous batching could not start for %s", loaded.spec.name)
            release_freed_memory()
            return False
        self._session_model, self._session_key = loaded.spec.name, key
        self.residency.set_extra(loaded.spec.name, self._session.cache_bytes)
        return True

    def _on_gpu(self) -> bool:
        return self.loader.device.startswith("cuda")

    def _close_session(self) -> None:
        if self._session is None:
            return
        session, self._session = self._session, None
        session.close()
        if self.residency is not None and self._session_model is not None:
            self.residency.set_extra(self._session_model, 0)
        self._session_model = None

    def _before_evict(self, loaded: LoadedModel) -> None:
        if self._session_model == loaded.spec.name:
            self._close_session()


_OUT_OF_MEMORY = "the model ran out of memory; try a shorter conversation or a smaller model"


def _describe_failure(exc: BaseException) -> GenerationFailed:
    """Any failure of a job -> the typed error its user is shown."""
    if is_out_of_memory(exc):
        return OutOfMemory(_OUT_OF_MEMORY)
    if isinstance(exc, NonFiniteLogits):
        return InvalidScores("the model produced invalid numbers (NaN) and the reply was stopped; please try again")
    if isinstance(exc, GenerationFailed):
        return exc
    if isinstance(exc, UserFacingError):  # already says what and why (a model's files, ...)
        return GenerationFailed(str(exc))
    return GenerationFailed(f"generation failed ({type(exc).__name__}: {exc})")


def _describe_failure_text(error: str) -> GenerationFailed:
    """A failure the batch reports as text (transformers' continuous batching) -> a typed error."""
    if "out of memory" in error.lower():
        return OutOfMemory(_OUT_OF_MEMORY)
    return GenerationFailed(f"generation failed ({error})")
