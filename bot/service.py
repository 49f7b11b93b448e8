"""Running the bot until it is told to stop, and stopping it in order.

systemd, Docker and Kubernetes stop a service with SIGTERM (Ctrl-C sends SIGINT). Either one
starts an orderly stop:
  1. every frontend stops taking questions and ends each answer in progress (waiting or
     streaming) with its text so far and "stopped: the bot is shutting down";
  2. the engines close (the worker thread ends, remote requests are closed);
  3. the frontends disconnect from their platforms;
  4. the caller closes the store;
all within `shutdown_timeout` seconds. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopRequest:
    """Set by the first SIGTERM/SIGINT; a second one ends the process at once."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    signal_name: str = ""
    requested_at: float = 0.0  # time.monotonic() of the first signal

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for number in STOP_SIGNALS:
            loop.add_signal_handler(number, self._received, number)

    def _received(self, number: int) -> None:
        name = signal.Signals(number).name
        if self.event.is_set():
            sys.stderr.write(f"modelbot: {name} again: stopped at once\n")
            sys.stderr.flush()
            os._exit(128 + number)
        self.signal_name = name
        self.requested_at = time.monotonic()
        self.event.set()


@dataclass
class StopReport:
    """How the orderly stop went, for the one line the CLI prints."""

    signal_name: str = ""
    late: list[str] = field(default_factory=list)  # steps that ran out of time

    def line(self, seconds: float) -> str:
        why = f"{self.signal_name}: " if self.signal_name else ""
        if self.late:
            return f"modelbot: {why}stopped in {seconds:.1f} s; ran out of time for: {', '.join(self.late)}"
        return f"modelbot: {why}stopped cleanly in {seconds:.1f} s"


async def unless_stopped(work, stop: StopRequest) -> None:
    """Await `work` (a preload), giving it up when a stop signal comes first."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.event.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()  # the engines' close ends what it started
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        task.result()  # its own failure, as if awaited directly


async def serve(app: Any, frontends: list[Any], stop: StopRequest, timeout: float) -> StopReport:
    """Run the frontends until a stop signal or until one of them ends (a failure to connect:
    re-raised once the others are stopped in order), then stop everything in order."""
    running = {asyncio.create_task(frontend.run(), name=f"frontend-{i}"): frontend
               for i, frontend in enumerate(frontends)}
    stopping = asyncio.create_task(stop.event.wait())
    try:
        done, _ = await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # whoever runs us is stopping (a test, an embedding app): same order
        await stop_in_order(app, frontends, list(running), timeout, StopReport())
        raise
    finally:
        stopping.cancel()
    failure = next((task.exception() for task in done if task in running and not task.cancelled()
                    and task.exception() is not None), None)
    report = StopReport(signal_name=stop.signal_name)
    await stop_in_order(app, frontends, list(running), timeout, report)
    if failure is not None:
        raise failure
    return report


async def stop_in_order(app: Any, frontends: list[Any], runs: list[asyncio.Task], timeout: float,
                        report: StopReport) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def step(name: str, work) -> None:
        began = loop.time()
        remaining = max(deadline - began, 0.05)
        try:
            await asyncio.wait_for(work, remaining)
            log.info("shutdown: %s took %.2f s", name, loop.time() - began)
        except asyncio.TimeoutError:
            report.late.append(name)
            log.info("shutdown: %s ran out of time (%.1f s)", name, remaining)
        except Exception as exc:  # noqa: BLE001 - one failing step must not keep the rest from running
            log.warning("shutdown: %s failed: %s", name, exc, exc_info=log.isEnabledFor(logging.DEBUG))

    # the answers get most of the time (a busy Discord channel allows 5 writes per 5 s, so their
    # last edits may queue); closing the engines and the connections takes a second or two
    share = max(timeout * 0.6, timeout - 3.0, 0.1)

    async def end_answers() -> None:
        late = sum(await asyncio.gather(*(_drain(frontend, share) for frontend in frontends)))
        if late:
            report.late.append(f"the notices of {late} answers")

    await step("ending answers", end_answers())
    await step("closing engines", app.engines.close())
    for frontend in frontends:
        await step(f"disconnecting {type(frontend).__name__}", frontend.close())
    for task in runs:
        task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)


async def _drain(frontend: Any, timeout: float) -> int:
    """A frontend's own orderly end of its answers, where it has one (third-party frontends
    may only have close()); how many answers it could not end in time."""
    drain = getattr(frontend, "drain", None)
    return (await drain(timeout) or 0) if drain is not None else 0
