"""A recording reverse proxy for tests: put it between a client and a real server.

    with RecordingProxy("http://127.0.0.1:8001") as proxy:
        client = AsyncOpenAI(base_url=proxy.api_base, api_key="x")
        ...
        assert proxy.max_in_flight == 3
        proxy.wait_idle()                # the proxy's bookkeeping runs in its own thread
        assert proxy.disconnects == 1

It forwards every request (any method, path and query) to the upstream base URL and streams
the answer back chunk by chunk as it arrives, so server-sent events stay streaming. It records
each request (method, path, JSON body, status, whether it completed), how many requests are in
flight now and the most that ever were at once, and how many the client closed before the
upstream had finished. When a client goes away, the upstream request is closed too (the
upstream connection is not pooled: closing it is a real TCP close), so the server behind sees
the disconnect just as it would without the proxy.

The proxy runs an aiohttp server on 127.0.0.1 in a background thread with its own event loop,
so it serves equally a synchronous test and one that runs its own loop with asyncio.run. Its
counters are guarded by a condition variable: read them from any thread, or wait on them.

When the upstream cannot be reached (its process was killed), the client gets 502 with a JSON
error body; when the upstream dies after the response started, the client's connection is
aborted mid-body, as it would be with no proxy in between.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself for the new connection.
_SKIP_REQUEST_HEADERS = {
    "host", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length",
}
_SKIP_RESPONSE_HEADERS = _SKIP_REQUEST_HEADERS | {"server", "date"}


@dataclass
class RecordedRequest:
    method: str
    path: str                    # path only, e.g. /v1/completions
    query: str                   # the raw query string, "" if none
    body: bytes
    json: Any = None             # the parsed JSON body, None when it was not JSON
    headers: dict[str, str] = field(default_factory=dict)  # as the client sent them
    status: int | None = None    # the upstream's status (502 when unreachable)
    completed: bool = False      # the whole upstream answer reached the client
    disconnected: bool = False   # the client went away before the upstream had finished
    error: str | None = None     # an upstream failure (unreachable, died mid-answer)
    chunks: int = 0              # body chunks relayed to the client
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None


class RecordingProxy:
    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream.rstrip("/")
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._faults: list[dict] = []  # what the next requests to /v1/completions get instead (fail_next, stall_next)

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's base URL (no trailing slash)."""
        if self.port is None:
            raise RuntimeError("the proxy is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """The base URL for an OpenAI client (ends with /v1)."""
        return f"{self.url}/v1"

    def start(self) -> "RecordingProxy":
        if self._thread is not None:
            return self
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"recording-proxy->{self.upstream}", daemon=True)
        self._thread.start()
        started.wait(30)
        if failure:
            self._thread = None
            raise RuntimeError(f"the recording proxy could not start: {failure[0]!r}") from failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = None

    def __enter__(self) -> "RecordingProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> "RecordingProxy":
        # Starting binds a socket and spins up the thread: quick, but do it off the caller's loop.
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)

    async def _start(self) -> None:
        # force_close: one upstream connection per request, never pooled, so that closing it
        # when the client leaves is a TCP close the server notices. auto_decompress off: the
        # bytes go through as the upstream sent them, with its Content-Encoding.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that disconnects cancels its handler at once, even
        # while the handler is waiting on the upstream with nothing to write.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ---- reading the record --------------------------------------------------------------

    def reset(self) -> None:
        """Forget the recorded requests and counters (requests in flight stay counted)."""
        with self._cond:
            self.requests = []
            self.max_in_flight = self.in_flight
            self.disconnects = 0

    def paths(self) -> list[str]:
        with self._cond:
            return [r.path for r in self.requests]

    def bodies(self, path: str | None = None) -> list[Any]:
        """The JSON bodies of the recorded requests (to one path if given), oldest first."""
        with self._cond:
            return [r.json for r in self.requests if path is None or r.path == path]

    def wait_for(self, predicate: Callable[["RecordingProxy"], bool], timeout: float = 30.0) -> None:
        """Block until predicate(proxy) holds (checked whenever the record changes)."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(
                    f"proxy condition not met within {timeout}s: in_flight={self.in_flight} "
                    f"max_in_flight={self.max_in_flight} disconnects={self.disconnects} "
                    f"requests={[(r.method, r.path, r.status) for r in self.requests]}"
                )

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until no request is in flight (the proxy has finished its bookkeeping)."""
        self.wait_for(lambda p: p.in_flight == 0, timeout)

    async def wait_for_async(self, predicate: Callable[["RecordingProxy"], bool], timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.wait_for, predicate, timeout)

    async def wait_idle_async(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.wait_idle, timeout)

    # ---- faults ----------------------------------------------------------------------------

    def fail_next(self, status: int, *, headers: dict[str, str] | None = None, times: int = 1) -> None:
        """The next `times` generation requests get `status` (with `headers`, e.g. Retry-After)
        from the proxy, as an overloaded or failing server would answer; nothing is forwarded."""
        with self._cond:
            self._faults.extend([{"status": status, "headers": headers or {}}] * times)

    def stall_next(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` generation requests wait `seconds` before they are forwarded (a hung server)."""
        with self._cond:
            self._faults.extend([{"stall": seconds}] * times)

    def _take_fault(self, path: str) -> dict | None:
        if not path.endswith("completions"):
            return None  # health checks (GET /v1/models) pass through untouched
        with self._cond:
            return self._faults.pop(0) if self._faults else None

    # ---- the proxy -----------------------------------------------------------------------

    def _begin(self, record: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()

    def _end(self, record: RecordedRequest) -> None:
        with self._cond:
            record.finished = time.monotonic()
            if record.disconnected:
                self.disconnects += 1
            self.in_flight -= 1
            self._cond.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        record = RecordedRequest(request.method, request.path, request.query_string, body, parsed,
                                 headers=dict(request.headers))
        self._begin(record)
        try:
            fault = self._take_fault(request.path)
            if fault is not None and "status" in fault:
                record.status, record.completed = fault["status"], True
                return web.json_response({"error": {"message": "injected fault", "code": fault["status"]}},
                                         status=fault["status"], headers=fault["headers"])
            if fault is not None:
                try:
                    await asyncio.sleep(fault["stall"])
                except asyncio.CancelledError:
                    record.disconnected = True
                    raise
            return await self._forward(request, record)
        finally:
            self._end(record)

    async def _forward(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST_HEADERS}
        try:
            upstream = await self._session.request(
                request.method, self.upstream + request.path_qs, data=record.body or None, headers=headers
            )
        except asyncio.CancelledError:
            record.disconnected = True
            raise
        except aiohttp.ClientError as exc:
            record.status = 502
            record.error = f"upstream unreachable: {exc!r}"
            record.completed = True
            return web.json_response(
                {"error": {"message": f"bad gateway: {exc}", "type": "proxy_error", "code": 502}}, status=502
            )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _SKIP_RESPONSE_HEADERS:
                response.headers.add(name, value)
        record.status = upstream.status
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                record.chunks += 1
            await response.write_eof()
            record.completed = True
            return response
        except (asyncio.CancelledError, ConnectionResetError, aiohttp.ClientConnectionResetError):
            # The client went away (the handler was cancelled, or a write found the socket
            # closed): close the upstream request so the server sees the disconnect too.
            record.disconnected = True
            upstream.close()
            raise
        except aiohttp.ClientError as exc:
            # The upstream died mid-answer: abort the client's connection the same way, so the
            # client sees a truncated body rather than a clean end.
            record.error = f"upstream failed mid-answer: {exc!r}"
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            upstream.release()
