"""The optional HTTP endpoint of `modelbot run` (config: `metrics: {host, port}`):

- GET /metrics  Prometheus text (bot/metrics.py)
- GET /healthz  200 while the process runs (a liveness probe)
- GET /readyz   200 once every started frontend is connected and the default model can be
                served; otherwise 503 with what is not ready yet (a readiness probe)

It runs on the bot's event loop (aiohttp, imported only here); nothing it serves blocks
the loop: the one slow check (the default model's files) runs on a thread, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable

from bot.config import MetricsSettings

log = logging.getLogger(__name__)

RECHECK_FAILED_SECONDS = 30.0  # a default model that could not be resolved is tried again after this


class ModelCheck:
    """Whether the default model can be served: loaded or served remotely now, or (local
    engine) its tokenizer and config resolve through the catalog. A success is kept for good;
    a failure is tried again after a while (a hub that was down)."""

    def __init__(self, app: Any):
        self.app = app
        self.model = app.settings.default_model
        self._resolved = False
        self._problem = "not checked yet"
        self._checked_at = -float("inf")
        self._task: asyncio.Task | None = None
        self._warned = False  # probes retry every 30 s: say it once

    def start(self) -> None:
        """Begin the file check in the background, so that a probe never waits for it."""
        if self._resolved or (self._task is not None and not self._task.done()):
            return
        if time.monotonic() - self._checked_at < RECHECK_FAILED_SECONDS:
            return
        self._task = asyncio.get_running_loop().create_task(self._check_files())

    def problem(self) -> str | None:
        """None when the default model can be served, else why not."""
        engine = self.app.engines.by_model.get(self.model)
        if engine is None:
            return f"default model {self.model}: no engine serves it"
        if self.model in engine.ready_models():
            return None
        if engine.kind != "local":
            return f"default model {self.model}: no healthy replica ({engine.where(self.app.catalog.spec(self.model))})"
        if self._resolved:
            return None
        self.start()
        return f"default model {self.model}: {self._problem}"

    async def _check_files(self) -> None:
        self._problem = "checking its files"
        spec = self.app.catalog.spec(self.model)
        try:
            await asyncio.to_thread(self.app.catalog.tokenizer, spec)
        except Exception as exc:  # noqa: BLE001 - any failure: not ready, and why
            self._problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.log(logging.DEBUG if self._warned else logging.WARNING,
                    "readyz: default model %s cannot be resolved: %s", self.model, self._problem)
            self._warned = True
        else:
            self._resolved = True
        self._checked_at = time.monotonic()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class HealthServer:
    def __init__(self, runner: Any, url: str, model_check: ModelCheck):
        self._runner = runner
        self.url = url  # with the port actually bound (the setting may be 0)
        self._model_check = model_check

    async def close(self) -> None:
        self._model_check.close()
        await self._runner.cleanup()


def not_ready(app: Any, model_check: ModelCheck) -> list[str]:
    """What keeps the bot from being ready; empty when it is."""
    problems = [f"frontend {name}: not connected" for name in app.host.readiness.waiting_for()]
    model = model_check.problem()
    if model:
        problems.append(model)
    return problems


async def start_health_server(app: Any, settings: MetricsSettings, frontends: Iterable[str] = ()) -> HealthServer:
    """Serve /metrics, /healthz and /readyz on settings.host:settings.port until close();
    /readyz waits for `frontends` (the ones being started) to report connected."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST

    if app.metrics is None:
        raise ValueError("the app was built without metrics (the config's `metrics:` section)")
    for name in frontends:  # before they exist: not ready while a preload runs
        app.host.readiness.expect(name)
    model_check = ModelCheck(app)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=app.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        problems = not_ready(app, model_check)
        if problems:
            return web.Response(status=503, text="not ready:\n" + "".join(f"- {p}\n" for p in problems))
        return web.Response(text="ready\n")

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    # probes come every few seconds: no log line each; its answers are instant, so closing
    # waits a moment at most (the shutdown has its own deadline)
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"metrics: cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc})") from None
    model_check.start()
    port = runner.addresses[0][1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server = HealthServer(runner, f"http://{host}:{port}", model_check)
    log.info("metrics and health at %s (/metrics /healthz /readyz)", server.url)
    return server
