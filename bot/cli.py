"""The `modelbot` command: console | ask | prompt | layers | models | stats | bench | run | doctor.

Every failure ends as one line on stderr and a nonzero exit, never a traceback
(run with -v for logs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from pathlib import Path

from bot.config import ConfigError, Settings, config_path, load_settings
from bot.doctor import cmd_doctor

log = logging.getLogger("modelbot")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelbot", description="Open-weights LLMs in your chat, on your GPU.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", help="config file (default: $MODELBOT_CONFIG, else ./config.yaml)")
        return command

    console = add("console", "chat in the terminal, like in a channel")
    console.add_argument("--model", help="model for this session (default: the console channel's model)")

    ask = add("ask", "answer one prompt, streaming the reply to stdout")
    ask.add_argument("--model")
    ask.add_argument("--max-new-tokens", type=int)
    ask.add_argument("prompt", nargs="+")

    prompt = add("prompt", "print the exact prompt a model is fed for a list of messages")
    prompt.add_argument("--model")
    prompt.add_argument("--json", action="store_true", help="print model, family, text, input_ids, stop_token_ids")
    prompt.add_argument("--messages", required=True, help="JSON file with [{role, content}, ...] ('-' for stdin)")
    prompt.add_argument("--channel", help="apply this channel's /settings from the store (its system prompt, "
                                          "history length) and its model, as the bot does there")

    layers = add("layers", "show a model's layers, 4-bit layers and memory footprint")
    layers.add_argument("--model")
    layers.add_argument("--full", action="store_true", help="also print the full module tree")
    layers.add_argument("--picture", metavar="FILE", help="also write the layers as a PNG picture to FILE")

    add("models", "list the configured models")

    add("stats", "show a running bot's loaded models, memory, queue and recent speed")

    add("doctor", "check the setup: Python, torch/CUDA, bitsandbytes, GPU memory, each model's files, "
                  "remote servers, the Discord and Slack tokens")

    from bot.bench import add_arguments as add_bench_arguments

    add_bench_arguments(add("bench", "benchmark the worker: one user, many users, and plain generate, in one table"))

    run = add("run", "start the chat frontends enabled in the config")
    run.add_argument("frontends", nargs="*", help="only these (e.g. discord, slack)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "bench" and (args.shape or args.smoke):
            settings = _optional_settings(args.config)  # a built shape needs no config file
        else:
            settings = load_settings(config_path(args.config))
        return _leave(asyncio.run(COMMANDS[args.command](settings, args)))
    except ConfigError as exc:
        print(f"modelbot: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        log.debug("failed", exc_info=True)
        print(f"modelbot: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _leave(code: int) -> int:
    """The exit code; where a stop ran out of time with the worker thread still inside torch,
    exit now: finalizing the interpreter under a running torch thread aborts the process."""
    if any(thread.name == "modelbot-worker" and thread.is_alive() for thread in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _optional_settings(explicit: str | None) -> Settings | None:
    path = config_path(explicit)
    return load_settings(path) if explicit or path.is_file() else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _NoTracebacks(logging.Formatter):
    """Without -v a log record is one line: its traceback is for `-v`."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return super().format(record)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    line_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(line_format) if verbose else _NoTracebacks(line_format))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if not verbose:
        # transformers' per-weight progress bars would bury the conversation
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


async def _with_app(settings: Settings, body, service: bool = False):
    from bot.app import build_app

    app = build_app(settings, service=service)
    try:
        return await body(app)
    finally:
        await app.close()


async def cmd_console(settings: Settings, args) -> int:
    from bot.frontends.console import CHANNEL, ConsoleFrontend

    async def body(app):
        if args.model:
            app.host.set_channel_model(CHANNEL, args.model, persist=False)
        stop = _stop_on_signals()
        await _preload(app, stop)
        return await _serve(app, [ConsoleFrontend(app.host)], stop)

    return await _with_app(settings, body, service=True)


async def cmd_ask(settings: Settings, args) -> int:
    from bot.frontends.console import ConsoleReply
    from bot.events import ChatEvent

    async def body(app):
        channel = "cli-ask"
        if args.model:
            app.host.set_channel_model(channel, args.model, persist=False)
        overrides = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
        event = ChatEvent(channel=channel, user="cli", text=" ".join(args.prompt), history=[], frontend="cli")
        result = await app.host.chat(event, ConsoleReply(sys.stdout, sys.stderr, show_footer=False, show_errors=False), overrides=overrides)
        if result.error:
            raise RuntimeError(result.error)
        if result.stats:
            print(f"[{result.stats.model} · {result.stats.tokens_per_second:.1f} tok/s]", file=sys.stderr)
        return 0

    return await _with_app(settings, body)


async def cmd_prompt(settings: Settings, args) -> int:
    from bot.catalog import ModelCatalog
    from bot.plugins import load_plugins

    raw = sys.stdin.read() if args.messages == "-" else Path(args.messages).read_text(encoding="utf-8")
    try:
        messages = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.messages}: not valid JSON ({exc})") from None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"{args.messages}: expected a JSON list of {{role, content}} objects")
    catalog = ModelCatalog(settings, load_plugins())
    spec = catalog.spec(args.model)
    if args.channel:
        spec, messages = _as_in_channel(settings, catalog, args.channel, args.model, messages)
    prompt = await asyncio.to_thread(catalog.prompt, spec, messages)
    if args.json:
        family = catalog.backend_for(spec, catalog.tokenizer(spec).model_type).name
        print(json.dumps({
            "model": spec.name, "family": family, "text": prompt.text,
            "input_ids": prompt.input_ids, "stop_token_ids": prompt.stop_token_ids,
        }, ensure_ascii=False))
    else:
        sys.stdout.write(prompt.text)
        if not prompt.text.endswith("\n"):
            sys.stdout.write("\n")
    return 0


def _as_in_channel(settings: Settings, catalog, channel: str, model: str | None, messages: list[dict]):
    """The model and messages as the bot would use them in `channel` (its /model and /settings)."""
    from bot.channel_settings import ChannelSettingsStore
    from bot.host import MODEL_KEY
    from bot.store import Store

    store = Store(settings.store_path)
    try:
        chosen = ChannelSettingsStore(store).get(channel)
        saved = store.get(channel, MODEL_KEY)
        spec = catalog.spec(model or (saved if saved and settings.model(saved) else None))
    finally:
        store.close()
    *history, last = messages or [{"role": "user", "content": ""}]
    return spec, chosen.with_system([*chosen.trimmed_history(history), last])


async def cmd_layers(settings: Settings, args) -> int:
    from bot.inspect import FULL_TREE_NOTE

    async def body(app):
        spec = app.catalog.spec(args.model)
        report = await app.engines.for_model(spec.name).inspect(spec, lambda message: print(message, file=sys.stderr))
        if args.full:
            print(report.full_tree)
        else:
            print(report.summary.replace(FULL_TREE_NOTE, "(--full prints the whole tree)"))
        if args.picture:
            from bot.layers_picture import render_layers_png

            path = Path(args.picture)
            path.write_bytes(await asyncio.to_thread(render_layers_png, [report]))
            print(f"modelbot: layers picture saved to {path}", file=sys.stderr)
        return 0

    return await _with_app(settings, body)


async def cmd_models(settings: Settings, args) -> int:
    from bot.frontends.console import ConsoleReply
    from bot.events import ChatEvent

    async def body(app):
        # plugins that failed to load were already logged by the plugin manager
        await app.host.handle(ChatEvent(channel="cli", user="cli", text="/models"), ConsoleReply())
        return 0

    return await _with_app(settings, body)


async def cmd_stats(settings: Settings, args) -> int:
    from bot.app import stats_path
    from bot.stats import format_stats, read_running_stats

    snapshot, status = read_running_stats(stats_path(settings))
    if snapshot is None:
        print(f"modelbot stats: {status}", file=sys.stderr)
        return EXIT_FAILURE
    print(format_stats(snapshot))
    print(f"({status}; pid {snapshot['pid']})")
    return 0


async def cmd_bench(settings: Settings | None, args) -> int:
    from bot.bench import run_bench

    return await run_bench(settings, args, sys.stdout)


async def cmd_run(settings: Settings, args) -> int:
    from bot.frontends.registry import frontend_names, load_frontend

    known = frontend_names()
    unknown = [name for name in args.frontends if name not in known]
    if unknown:
        print(f"modelbot run: no frontend called {', '.join(unknown)} (there are: {', '.join(known)})",
              file=sys.stderr)
        return EXIT_FAILURE
    types = {name: load_frontend(name) for name in args.frontends or known}
    if not args.frontends:
        types = {name: kind for name, kind in types.items() if kind.enabled(settings.sections.get(name, {}))}
    if not types:
        print(f"modelbot run: no frontend is enabled in the config ({' / '.join(f'{n}.enabled' for n in known)}); "
              "use `modelbot console` to chat in the terminal", file=sys.stderr)
        return EXIT_FAILURE
    parsed = {}
    for name, kind in types.items():  # every config error before anything loads or connects
        parsed[name] = kind.parse_settings(settings.sections.get(name, {}))
        kind.check_ready(parsed[name])

    async def body(app):
        stop = _stop_on_signals()  # from here on, a SIGTERM during a long preload stops cleanly too
        if app.settings.metrics is not None:  # before the preload: probes get answers during a long load
            from bot.health_server import start_health_server
            app.health_server = await start_health_server(app, app.settings.metrics, frontends=list(types))
        await _preload(app, stop)
        frontends = [kind.create(app.host, parsed[name]) for name, kind in types.items()]
        return await _serve(app, frontends, stop)

    return await _with_app(settings, body, service=True)


def _stop_on_signals():
    from bot.service import StopRequest

    stop = StopRequest()
    stop.install()
    return stop


async def _preload(app, stop) -> None:
    """The config's `preload:` models, one stderr line each; a stop signal cuts it short."""
    from bot.service import unless_stopped

    await unless_stopped(app.engines.preload(app.settings.preload,
                                             lambda line: print(f"modelbot: {line}", file=sys.stderr)), stop)


async def _serve(app, frontends: list, stop) -> int:
    """Answer until SIGTERM/SIGINT (or until the frontends end), then stop in order
    (bot/service.py) and say how it went in one line."""
    import time

    from bot.service import serve

    report = await serve(app, frontends, stop, app.settings.shutdown_timeout)
    if report.signal_name:
        print(report.line(time.monotonic() - stop.requested_at), file=sys.stderr)
    return 0


COMMANDS = {
    "console": cmd_console,
    "ask": cmd_ask,
    "prompt": cmd_prompt,
    "layers": cmd_layers,
    "models": cmd_models,
    "stats": cmd_stats,
    "bench": cmd_bench,
    "run": cmd_run,
    "doctor": cmd_doctor,
}
