"""`modelbot bench`: the bot's own worker against plain `generate`, as one Markdown table.

The method is docs/benchmarks.md's (and the project's PERFORMANCE notes'): prompts of
random token ids, greedy decoding, EOS ignored, a warm-up before anything is timed, and
every figure measured in the same run on the same loaded model:

- model load time (the first load, through the worker) and memory footprint;
- plain `model.generate`, one request at a time (batch 1), run on the worker's thread;
  N users served that way one after another get the same total rate, and the k-th user's
  first token comes after k whole requests, which gives the plain first-token percentiles;
- the worker with 1 and N concurrent users (one user id each): total tok/s = all new
  tokens / wall time of the whole run, first token = submit -> first text delta; and one
  user again after the concurrent runs (does batching leave the worker slower?);
- the bot's overhead: raw `generate` against the full pipeline (host.run_model -> worker
  -> a streamed reply that rebuilds its message at most once per --edit-interval), on the
  same chat prompt and settings, so both produce the same tokens; measured before any
  concurrent run.

Heavy imports (torch, transformers, the app) happen inside functions: the CLI imports
this module at startup.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TextIO

from bot.bench_shapes import SHAPES, SMOKE_SHAPE, ensure_shape

if TYPE_CHECKING:
    from bot.app import App
    from bot.worker.loading import LoadedModel
    from bot.config import Settings

DEFAULT_USERS = "1,16,64"
DEFAULT_NULL_REPLIES = "1,16,64,256"
DEFAULT_CACHE_DIR = "~/.cache/modelbot"
# --smoke: seconds on a CPU, for CI; explicit options still win.
SMOKE_DEFAULTS = {"prompt_tokens": 16, "new_tokens": 8, "users": "1,4", "repeats": 5}
FULL_DEFAULTS = {"prompt_tokens": 64, "new_tokens": 128, "users": DEFAULT_USERS, "repeats": 3}
# The worker section of a shape's settings; a configured model keeps its own max_batch and
# gets at least these queue limits, so that every concurrent user's job is accepted at once.
BENCH_WORKER_LIMITS = {"max_pending_per_user": 64, "max_pending": 256, "max_batch": 64}
WARMUP_TOKENS = 8
OVERHEAD_PROMPT = (
    "Tell me a long story about a lighthouse keeper who finds a message in a bottle, "
    "with every detail of the storm, the boat trip and the people she meets."
)
OVERHEAD_TARGET = 0.95
# Other processes' share of the CPU above which a figure is flagged as unreliable.
OTHER_CPU_WARNING = 0.10


# -- options ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench's options (the CLI adds --config itself)."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", help="a configured model (default: the config's default model)")
    what.add_argument("--shape", choices=[s for s in SHAPES if s != SMOKE_SHAPE],
                      help="a random-weight model of a family's real shape; no config or download needed")
    what.add_argument("--smoke", action="store_true",
                      help="a seconds-long CPU run on a tiny shape with small user counts (CI)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's, else auto)")
    parser.add_argument("--quantization", choices=["auto", "nf4", "int8", "none"],
                        help="override the model's quantization (shapes default to auto: NF4 on a GPU)")
    parser.add_argument("--cache-dir", help=f"where shapes are built (default: the config's cache_dir, else {DEFAULT_CACHE_DIR})")
    parser.add_argument("--prompt-tokens", type=_positive_int, help="random prompt ids per request (default 64)")
    parser.add_argument("--new-tokens", type=_positive_int, help="new tokens per request (default 128)")
    parser.add_argument("--users", type=_user_counts, help=f"concurrent user counts (default {DEFAULT_USERS})")
    parser.add_argument("--repeats", type=_positive_int,
                        help="runs of each one-user measurement (plain generate, the worker, the overhead pair); "
                             "the best counts (default 3, 5 with --smoke)")
    parser.add_argument("--edit-interval", type=float, default=1.0,
                        help="seconds between a streamed reply's edits in the overhead row (default 1.0)")
    parser.add_argument("--null-replies", type=_reply_counts, default=None,
                        help=f"concurrent replies of the null-model rows, the bot's own cost per token "
                             f"(default {DEFAULT_NULL_REPLIES}; 0 leaves them out)")
    parser.add_argument("--cpu-baselines", action="store_true",
                        help="also measure plain generate in float32 and llama.cpp on the same GGUF (CPU only; bot/bench_cpu.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


def _user_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, like {DEFAULT_USERS} (got {text!r})") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"user counts must be >= 1 (got {text!r})")
    return counts


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int
    new_tokens: int
    users: list[int]  # always includes 1: the single-user row
    repeats: int
    edit_interval: float
    seed: int
    json_path: Path | None
    null_replies: list[int] = field(default_factory=list)  # empty: no null-model rows
    cpu_baselines: bool = False  # --cpu-baselines: bot/bench_cpu.py's rows


def resolve_options(args: argparse.Namespace) -> BenchOptions:
    defaults = SMOKE_DEFAULTS if getattr(args, "smoke", False) else FULL_DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    users = pick("users")
    users = _user_counts(users) if isinstance(users, str) else users
    return BenchOptions(
        prompt_tokens=pick("prompt_tokens"),
        new_tokens=pick("new_tokens"),
        users=sorted({1, *users}),
        repeats=pick("repeats"),
        edit_interval=getattr(args, "edit_interval", 1.0),
        seed=getattr(args, "seed", 0),
        json_path=Path(args.json) if getattr(args, "json", None) else None,
        null_replies=_null_replies(getattr(args, "null_replies", None)),
        cpu_baselines=bool(getattr(args, "cpu_baselines", False)),
    )


def _reply_counts(text: str) -> list[int]:
    """--null-replies: counts as --users takes them, or 0 for none."""
    return [] if text.strip() == "0" else _user_counts(text)


def _null_replies(chosen: list[int] | None) -> list[int]:
    return _user_counts(DEFAULT_NULL_REPLIES) if chosen is None else chosen


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What is benchmarked: the settings to build the app from, and which model."""

    settings: Settings
    model: str
    description: str


def bench_target(settings: Settings | None, args: argparse.Namespace, scratch: Path, users: int) -> Target:
    """Settings for the bench: a shape's own, or the user's config with the bench's limits.

    The store always goes to `scratch`: the bench never touches a deployment's sqlite file.
    `users` is the most concurrent jobs the bench submits: the worker must accept them all.
    """
    shape = SMOKE_SHAPE if getattr(args, "smoke", False) else getattr(args, "shape", None)
    if shape:
        cache_dir = Path(args.cache_dir or (settings.cache_dir if settings else DEFAULT_CACHE_DIR)).expanduser()
        source = ensure_shape(shape, cache_dir, progress)
        entry = {"name": shape, "source": str(source), "quantization": args.quantization or "auto"}
        device = args.device or ("cpu" if args.smoke else "auto")
        raw = {"device": device, "cache_dir": str(cache_dir), "store": str(scratch / "bench.sqlite3"), "models": [entry],
               "worker": {"max_batch": BENCH_WORKER_LIMITS["max_batch"]}}
        return Target(_parse_with_worker_limits(raw, scratch, users), shape, f"{shape} shape, random weights")
    if settings is None:
        raise ValueError("bench needs --model NAME (with a config), --shape SHAPE or --smoke")
    model = getattr(args, "model", None) or settings.default_model
    if settings.model(model) is None:
        raise ValueError(f"unknown model {model!r}; configured models: {', '.join(settings.model_names)}")
    return Target(_configured_settings(settings, model, args, scratch, users), model, f"configured model {model}")


def _configured_settings(settings: Settings, model: str, args: argparse.Namespace, scratch: Path,
                         users: int) -> Settings:
    """The user's config file again, with the bench's queue limits, store and overrides."""
    if settings.path is None:  # built in memory (tests): nothing to re-read
        return _replace_in_memory(settings, args, scratch, users)
    import yaml

    raw = yaml.safe_load(settings.path.read_text(encoding="utf-8")) or {}
    raw["store"] = str(scratch / "bench.sqlite3")
    if args.device:
        raw["device"] = args.device
    if args.quantization:
        for entry in raw.get("models") or []:
            if isinstance(entry, dict) and entry.get("name") == model:
                entry["quantization"] = args.quantization
    return _parse_with_worker_limits(raw, settings.path.resolve().parent, users, settings.path)


def _replace_in_memory(settings: Settings, args: argparse.Namespace, scratch: Path, users: int) -> Settings:
    import dataclasses

    changes: dict[str, Any] = {"device": args.device or settings.device, "store_path": scratch / "bench.sqlite3"}
    worker = getattr(settings, "worker", None)
    if worker is not None:
        limits = _queue_limits(dataclasses.asdict(worker), users)
        changes["worker"] = dataclasses.replace(worker, **{k: limits[k] for k in ("max_pending_per_user", "max_pending")})
    return dataclasses.replace(settings, **changes)


def _queue_limits(worker: dict, users: int) -> dict:
    """The worker section with room in the queue for every bench job; batching is left as it is."""
    worker = dict(worker)
    for key, needed in (("max_pending_per_user", BENCH_WORKER_LIMITS["max_pending_per_user"]),
                        ("max_pending", max(BENCH_WORKER_LIMITS["max_pending"], users))):
        current = worker.get(key, needed)
        if isinstance(current, int) and not isinstance(current, bool):  # else parse_settings reports it
            worker[key] = max(current, needed)
    return worker


def _parse_with_worker_limits(raw: dict, base_dir: Path, users: int, path: Path | None = None) -> Settings:
    from bot.config import ConfigError, parse_settings

    worker = _queue_limits(raw.get("worker") or {}, users)
    try:
        return parse_settings({**raw, "worker": worker}, base_dir, path)
    except ConfigError as exc:
        # Shim for a config.py from before the worker rewrite, which has no `worker:` section
        # (and a worker without limits): leave it out. Drop once every config accepts it.
        if not str(exc).startswith("worker: unknown key"):
            raise
        return parse_settings({k: v for k, v in raw.items() if k != "worker"}, base_dir, path)


# -- figures ----------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    tokens_per_second: float
    first_token_p50_s: float | None = None
    first_token_p95_s: float | None = None
    ratio: float | None = None  # against the row it is compared with (see ratio_to)
    ratio_to: str | None = None
    tokens: int = 0
    seconds: float = 0.0
    other_cpu_share: float | None = None  # of the machine's CPU, used by other processes meanwhile
    microseconds_per_token: float | None = None  # null-model rows: the bot's own time per token


@dataclass
class BenchResult:
    date: str
    device: str
    versions: dict[str, str]
    model: str
    description: str
    quantization: str
    dtype: str
    prompt_tokens: int
    new_tokens: int
    load_seconds: float = 0.0
    footprint_bytes: int = 0
    rows: list[Row] = field(default_factory=list)
    overhead_ratio: float | None = None
    reply_edits: int = 0


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def sequential_first_tokens(users: int, request_seconds: float, first_token_seconds: float) -> list[float]:
    """First-token latency of each of `users` requests served one after another."""
    return [k * request_seconds + first_token_seconds for k in range(users)]


def random_prompts(count: int, length: int, vocab_size: int, special_ids: set[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    ordinary = [i for i in range(vocab_size) if i not in special_ids]
    return [[rng.choice(ordinary) for _ in range(length)] for _ in range(count)]


def versions() -> dict[str, str]:
    return {package: package_version(package) for package in ("torch", "transformers", "bitsandbytes")}


def package_version(package: str, missing: str = "not installed") -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return missing


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({os.cpu_count()} cores)"


class OtherCpuUse:
    """The share of the machine's CPU time that other processes used while a phase ran.

    A CPU benchmark on a shared machine is only as good as this is small (a test run beside
    it can make torch's threads fight and cut a rate tenfold). Linux /proc/stat counts in
    ticks of 10 ms, so phases under a second stay None, as does any other system.
    """

    def __init__(self):
        self.share: float | None = None

    def __enter__(self) -> Self:
        self._start = _cpu_snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        end = _cpu_snapshot()
        if self._start is None or end is None or end[2] - self._start[2] < 1.0:
            return
        busy, own, wall = (after - before for after, before in zip(end, self._start))
        self.share = max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(seconds all CPUs were busy, seconds this process used, monotonic time)."""
    try:
        first_line = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0]
        ticks = [int(v) for v in first_line.split()[1:9]]  # user nice system idle iowait irq softirq steal
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy = (sum(ticks) - ticks[3] - ticks[4]) / per_second
    return busy, usage.ru_utime + usage.ru_stime, time.monotonic()


# -- measuring: plain generate ----------------------------------------------------------------
@dataclass
class PlainRun:
    tokens: int
    seconds: float
    first_token_seconds: float


def _synchronize(model: Any) -> None:
    import torch

    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def _timed_generate(loaded: LoadedModel, input_ids: list[int], **settings: Any) -> tuple[int, float]:
    """(new tokens, seconds) of one plain `generate` call, no streamer."""
    import torch

    model = loaded.model
    ids = torch.tensor([input_ids], device=model.device)
    pad = loaded.tokenizer.pad_token_id
    stop = settings.pop("eos_token_id", [])
    with torch.inference_mode():
        _synchronize(model)
        started = time.perf_counter()
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=stop,
            pad_token_id=pad if pad is not None else (stop[0] if stop else 0), **settings,
        )
        _synchronize(model)
        seconds = time.perf_counter() - started
    return output.shape[1] - ids.shape[1], seconds


def plain_generate(loaded: LoadedModel, prompt: list[int], new_tokens: int, repeats: int = 1) -> PlainRun:
    """Warm-up, the fastest of `repeats` timed batch-1 requests, and one timed first token
    (worker thread only)."""
    greedy = {"do_sample": False, "eos_token_id": []}  # an empty eos list: EOS ignored
    _timed_generate(loaded, prompt, max_new_tokens=min(WARMUP_TOKENS, new_tokens), **greedy)
    tokens, seconds = _fastest([_timed_generate(loaded, prompt, max_new_tokens=new_tokens, **greedy)
                                for _ in range(repeats)])
    _, first_token = _timed_generate(loaded, prompt, max_new_tokens=1, **greedy)
    return PlainRun(tokens, seconds, first_token)


# -- measuring: the worker --------------------------------------------------------------------
@dataclass
class WorkerRun:
    tokens: int
    seconds: float
    first_token_seconds: list[float]


async def worker_run(app: App, model: str, prompts: list[list[int]], new_tokens: int) -> WorkerRun:
    """All prompts submitted at once, one user each; wall time of the whole run."""
    from bot.generation import GenerationJob

    async def one(user: int, prompt: list[int]) -> tuple[int, float]:
        job = GenerationJob(
            model=model, input_ids=prompt, stop_token_ids=[],  # empty: EOS ignored
            settings={"do_sample": False, "max_new_tokens": new_tokens}, user=f"u{user}", channel="bench",
        )
        submitted = time.perf_counter()
        stream = app.engines.submit(job)
        first_token = None
        async for _ in stream:
            if first_token is None:
                first_token = time.perf_counter() - submitted
        if first_token is None:  # no visible text at all: the whole reply is the first token
            first_token = time.perf_counter() - submitted
        return stream.stats.new_tokens, first_token

    started = time.perf_counter()
    results = await asyncio.gather(*(one(user, prompt) for user, prompt in enumerate(prompts)))
    seconds = time.perf_counter() - started
    return WorkerRun(sum(tokens for tokens, _ in results), seconds, [first for _, first in results])


# -- measuring: the bot's overhead ------------------------------------------------------------
class ThrottledReplyStream:
    """A streamed reply the way a frontend keeps one: text accumulates, and the message is
    rebuilt for an edit at most once per interval (the platform call itself is left out)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.parts: list[str] = []
        self.message = ""
        self.edits = 0
        self.error: str | None = None
        self._last_edit = -math.inf  # the first text is posted at once

    async def write(self, delta: str) -> None:
        self.parts.append(delta)
        if time.monotonic() - self._last_edit >= self.interval:
            self._edit()

    async def finish(self, footer: str) -> None:
        self._edit(f"\n-# {footer}" if footer else "")

    async def fail(self, message: str) -> None:
        self.error = message
        self._edit(f"\nerror: {message}")

    def _edit(self, tail: str = "") -> None:
        self.message = "".join(self.parts) + tail
        self.edits += 1
        self._last_edit = time.monotonic()


class BenchReply:
    """The minimal Reply the host needs; streams are throttled, the rest is dropped."""

    def __init__(self, edit_interval: float):
        self.edit_interval = edit_interval
        self.streams: list[ThrottledReplyStream] = []

    async def send(self, text: str) -> None:
        pass

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        pass

    async def progress(self, text: str) -> None:
        pass

    def stream(self, header: str = "") -> ThrottledReplyStream:
        stream = ThrottledReplyStream(self.edit_interval)
        self.streams.append(stream)
        return stream


@dataclass
class OverheadRun:
    raw: tuple[int, float]  # best (tokens, seconds) of raw generate
    pipeline: tuple[int, float]  # best of the full pipeline
    edits: int


async def overhead_run(app: App, model: str, options: BenchOptions) -> OverheadRun:
    """Raw generate against host.run_model on the same chat prompt, alternating; best of each."""
    from bot.host import ChatEvent

    spec = app.catalog.spec(model)
    messages = [{"role": "user", "content": OVERHEAD_PROMPT}]
    overrides = {"do_sample": False, "max_new_tokens": options.new_tokens}
    info = await asyncio.to_thread(app.catalog.tokenizer, spec)
    prompt = await asyncio.to_thread(app.catalog.prompt, spec, messages)
    settings = app.catalog.generation_settings(spec, info.model_type, overrides)
    # the host stops at the prompt's stop ids, so raw generate does too: same tokens both ways
    settings["eos_token_id"] = list(prompt.stop_token_ids)

    async def pipeline(max_new_tokens: int) -> tuple[int, float, int]:
        reply = BenchReply(options.edit_interval)
        event = ChatEvent(channel="bench", user="bench", text=OVERHEAD_PROMPT, history=[])
        started = time.perf_counter()
        result = await app.host.run_model(spec, messages, reply.stream(), reply, event, {**overrides, "max_new_tokens": max_new_tokens})
        seconds = time.perf_counter() - started
        if result.error or result.stats is None:
            raise RuntimeError(f"the pipeline run failed: {result.error}")
        return result.stats.new_tokens, seconds, reply.streams[0].edits

    def raw(loaded: LoadedModel) -> tuple[int, float]:
        return _timed_generate(loaded, prompt.input_ids, **dict(settings))

    await pipeline(min(WARMUP_TOKENS, options.new_tokens))  # warms tokenizer, prompt and worker paths
    raws, pipelines, edits = [], [], 0
    for _ in range(options.repeats):
        raws.append(await _on_loaded_model(app, model, raw))
        tokens, seconds, edits = await pipeline(options.new_tokens)
        pipelines.append((tokens, seconds))
    return OverheadRun(_fastest(raws), _fastest(pipelines), edits)


def _fastest(runs: list[tuple[int, float]]) -> tuple[int, float]:
    return max(runs, key=lambda run: _rate(*run))


# -- measuring: the bot's own path, with a null model ----------------------------------------
async def null_rows(cache_dir: Path, scratch: Path, options: BenchOptions) -> list[Row]:
    """The full path (host, worker, streamed replies) with a model that costs nothing."""
    from bot.bench_null import measure_null

    progress(f"null model: the bot's own path, {', '.join(map(str, options.null_replies))} concurrent replies")
    rows = []
    with OtherCpuUse() as cpu:
        runs = await measure_null(cache_dir, scratch / "null", options.null_replies, options.new_tokens,
                                  options.edit_interval, progress)
    for run in runs:
        _warn_if_short(run.tokens, run.replies * options.new_tokens, f"null model, {run.replies} replies")
        rows.append(Row(f"null model, {run.replies} concurrent repl{'ies' if run.replies > 1 else 'y'}: host + "
                        "worker + streamed replies", _rate(run.tokens, run.seconds),
                        percentile(run.first_token_seconds, 50), percentile(run.first_token_seconds, 95),
                        tokens=run.tokens, seconds=run.seconds, other_cpu_share=cpu.share,
                        microseconds_per_token=run.seconds * 1e6 / run.tokens if run.tokens else None))
    return rows


# -- the whole bench --------------------------------------------------------------------------
def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


async def measure(app: App, target: Target, options: BenchOptions) -> BenchResult:
    """Every phase on the one loaded model. The overhead comparison runs before any concurrent
    run, on a worker that has only ever served one job at a time; a lone user is measured
    again after the concurrent runs, to show whether batching leaves the worker slower."""
    model = target.model
    loaded = await _first_load(app, model)
    result = BenchResult(
        date=datetime.date.today().isoformat(), device=loaded["device"], versions=versions(), model=model,
        description=target.description, quantization=loaded["quantization"], dtype=loaded["dtype"],
        prompt_tokens=options.prompt_tokens, new_tokens=options.new_tokens,
        load_seconds=loaded["load_seconds"], footprint_bytes=loaded["footprint_bytes"],
    )
    prompts = random_prompts(max(options.users), options.prompt_tokens, loaded["vocab_size"], loaded["special_ids"], options.seed)

    progress("plain generate, one request at a time")
    plain, plain_share = await _with_cpu_share(
        _on_loaded_model(app, model, lambda m: plain_generate(m, prompts[0], options.new_tokens, options.repeats)))
    plain_rate = _rate(plain.tokens, plain.seconds)

    progress(f"overhead: raw generate against the full pipeline, best of {options.repeats}")
    overhead, overhead_share = await _with_cpu_share(overhead_run(app, model, options))
    overhead_rows = _overhead_rows(overhead, overhead_share)

    for users in options.users:
        result.rows.append(_plain_row(users, plain, plain_rate, plain_share))
        result.rows.append(await _worker_phase(app, model, prompts[:users], options.new_tokens, plain_rate,
                                               options.repeats))
    if max(options.users) > 1:
        result.rows.append(await _worker_phase(app, model, prompts[:1], options.new_tokens, plain_rate,
                                               options.repeats, again=True))
    result.rows.extend(overhead_rows)
    result.overhead_ratio = overhead_rows[-1].ratio
    result.reply_edits = overhead.edits
    _warn_if_shared(result.rows)
    if options.cpu_baselines:
        from bot.bench_cpu import cpu_baseline_rows

        result.rows.extend(await cpu_baseline_rows(app, target, options, prompts[0], plain))
    return result


async def _on_loaded_model(app: App, model: str, fn: Any) -> Any:
    """fn(loaded model) on the local engine's thread: the plain-generate baselines need the weights,
    which only the in-process engine has (every other figure goes through the engine contract)."""
    engine = app.engines.for_model(model)
    call = getattr(engine, "call", None)
    if call is None:
        raise ValueError(f"modelbot bench compares the in-process engine with plain generate; {model} runs on "
                         f"{engine.where(app.catalog.spec(model))}")
    return await call(model, fn)


async def _first_load(app: App, model: str) -> dict[str, Any]:
    from bot.text import human_bytes

    progress(f"loading {model} through the worker")

    def describe(loaded: LoadedModel) -> dict[str, Any]:
        tokenizer = loaded.tokenizer
        return {
            "load_seconds": loaded.load_seconds, "footprint_bytes": loaded.footprint_bytes(),
            "device": device_name(loaded.device), "quantization": loaded.recipe.quantization,
            "dtype": str(loaded.model.dtype).removeprefix("torch."),
            "vocab_size": min(len(tokenizer), loaded.model.config.vocab_size),
            "special_ids": set(tokenizer.all_special_ids),
        }

    figures = await _on_loaded_model(app, model, describe)
    progress(f"loaded in {figures['load_seconds']:.1f} s, {human_bytes(figures['footprint_bytes'])}, on {figures['device']}")
    return figures


async def _runs(measure_once: Any, *args: Any, times: int) -> list[Any]:
    return [await measure_once(*args) for _ in range(times)]


async def _with_cpu_share(awaitable: Any) -> tuple[Any, float | None]:
    with OtherCpuUse() as cpu:
        value = await awaitable
    return value, cpu.share


async def _worker_phase(app: App, model: str, prompts: list[list[int]], new_tokens: int, plain_rate: float,
                        repeats: int, again: bool = False) -> Row:
    """One run of N concurrent users; a lone user gets the fastest of `repeats` runs, measured
    like the plain-generate row it is compared with."""
    users = len(prompts)
    label = f"worker, {users} concurrent user{'s' if users > 1 else ''}"
    if again:
        label = "worker, 1 user again, after the concurrent runs"
    progress(f"{label} (a warm-up run first)")
    await worker_run(app, model, prompts, min(WARMUP_TOKENS, new_tokens))
    runs, share = await _with_cpu_share(_runs(worker_run, app, model, prompts, new_tokens,
                                              times=repeats if users == 1 else 1))
    run = max(runs, key=lambda run: _rate(run.tokens, run.seconds))
    _warn_if_short(run.tokens, users * new_tokens, label)
    rate = _rate(run.tokens, run.seconds)
    return Row(label, rate, percentile(run.first_token_seconds, 50), percentile(run.first_token_seconds, 95),
               rate / plain_rate if plain_rate else None, "plain generate", run.tokens, run.seconds, share)


def _busy_rows(rows: list[Row]) -> list[Row]:
    return [row for row in rows if (row.other_cpu_share or 0.0) > OTHER_CPU_WARNING]


def _warn_if_shared(rows: list[Row]) -> None:
    for row in _busy_rows(rows):
        progress(f"warning: other processes used {row.other_cpu_share:.0%} of the CPU during "
                 f"'{row.label}': that figure is unreliable")


def _warn_if_short(tokens: int, expected: int, what: str) -> None:
    if tokens < expected:
        progress(f"warning: {what} produced {tokens} of {expected} tokens (does the worker ignore EOS for empty stop ids?)")


def _plain_row(users: int, plain: PlainRun, plain_rate: float, share: float | None) -> Row:
    first_tokens = sequential_first_tokens(users, plain.seconds, plain.first_token_seconds)
    label = "plain generate, 1 user (batch 1)" if users == 1 else f"plain generate, {users} users one after another"
    return Row(label, plain_rate, percentile(first_tokens, 50), percentile(first_tokens, 95), 1.0,
               "plain generate", plain.tokens * users, plain.seconds * users, share)


def _overhead_rows(overhead: OverheadRun, share: float | None) -> list[Row]:
    raw_rate, pipeline_rate = _rate(*overhead.raw), _rate(*overhead.pipeline)
    return [
        Row("raw generate, chat prompt (overhead baseline)", raw_rate, tokens=overhead.raw[0],
            seconds=overhead.raw[1], other_cpu_share=share),
        Row("full pipeline: host + worker + streamed reply", pipeline_rate,
            ratio=pipeline_rate / raw_rate if raw_rate else None, ratio_to="raw generate",
            tokens=overhead.pipeline[0], seconds=overhead.pipeline[1], other_cpu_share=share),
    ]


# -- the table --------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


def format_table(result: BenchResult) -> str:
    from bot.text import human_bytes

    v = result.versions
    lines = [
        (f"`modelbot bench` · {result.date} · {result.device} · torch {v['torch']} · "
         f"transformers {v['transformers']} · bitsandbytes {v['bitsandbytes']}"),
        "",
        (f"Model: {result.model} ({result.description}), quantization {result.quantization}, {result.dtype}. "
         f"Prompts of {result.prompt_tokens} random ids, {result.new_tokens} new tokens, greedy, EOS ignored."),
        "",
        _table_line("what", "figure", "first token p50", "first token p95", "ratio"),
        _table_line(*["---"] * 5),
        _table_line("model load (first, through the worker)", f"{result.load_seconds:.2f} s", "", "", ""),
        _table_line("memory footprint", human_bytes(result.footprint_bytes), "", "", ""),
    ]
    for row in result.rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        figure = f"{row.tokens_per_second:.1f} tok/s"
        if row.microseconds_per_token is not None:
            figure += f" ({row.microseconds_per_token:.1f} µs/token)"
        lines.append(_table_line(row.label, figure, _seconds(row.first_token_p50_s),
                                 _seconds(row.first_token_p95_s), ratio))
    lines += [
        "",
        ("ratio: a worker row's total tok/s over plain generate's; the pipeline row's tok/s over raw "
         f"generate's on the same prompt (target >= {OVERHEAD_TARGET}). Plain first-token figures for N users "
         "are derived: user k waits for k whole requests. "
         f"The streamed reply was edited {result.reply_edits} times in its last run."),
    ]
    if any(row.microseconds_per_token is not None for row in result.rows):
        lines += ["", ("null model: the same path with a model that costs nothing (bot/bench_null.py): "
                       "all of the time is the bot's own; µs/token = wall time / tokens.")]
    busy = _busy_rows(result.rows)
    if busy:
        worst = max(row.other_cpu_share for row in busy)
        lines += ["", (f"**Unreliable:** other processes used up to {worst:.0%} of the CPU during "
                       f"{len(busy)} of these rows (see other_cpu_share in the JSON).")]
    return "\n".join(lines) + "\n"


def _table_line(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def result_json(result: BenchResult) -> dict[str, Any]:
    return asdict(result)


async def run_bench(settings: Settings | None, args: argparse.Namespace, out: TextIO) -> int:
    """Build the app for the model, measure, print the table to `out`; 0 on success."""
    from bot.app import build_app

    options = resolve_options(args)
    with tempfile.TemporaryDirectory(prefix="modelbot-bench-") as scratch:
        target = await asyncio.to_thread(bench_target, settings, args, Path(scratch), max(options.users))
        app = build_app(target.settings)
        try:
            result = await measure(app, target, options)
        finally:
            await app.close()
        if options.null_replies:
            cache_dir = Path(getattr(args, "cache_dir", None) or (settings.cache_dir if settings else DEFAULT_CACHE_DIR))
            result.rows.extend(await null_rows(cache_dir.expanduser(), Path(scratch), options))
    out.write(format_table(result))
    out.flush()
    if options.json_path:
        options.json_path.write_text(json.dumps(result_json(result), indent=2) + "\n", encoding="utf-8")
        progress(f"wrote {options.json_path}")
    return 0
