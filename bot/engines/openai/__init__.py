"""The built-in `openai` engine: models served by OpenAI-compatible servers (vLLM, SGLang,
llama.cpp, TGI, Ollama), registered through the same hook as any third-party engine.
Nothing heavy is imported here: the client loads when an engine is made."""

from __future__ import annotations

from bot.engines import Engine, EngineContext, EngineType
from bot.engines.openai.options import OPTION_KEYS, OpenAIOptions, parse_options
from bot.hookspecs import hookimpl


def _create(context: EngineContext, specs: list) -> dict[str, Engine]:
    from bot.engines.openai.engine import OpenAIEngine

    # one engine per model entry: each has its own servers, concurrency limit and queue
    return {spec.name: OpenAIEngine(spec, spec.engine_options, context.settings.worker, context.catalog)
            for spec in specs}


def _needs_source(options: OpenAIOptions) -> bool:
    return False  # parse_options says when it does (api: completions), naming the key


OPENAI = EngineType(name="openai", parse_options=parse_options, option_keys=OPTION_KEYS, create=_create,
                    needs_source=_needs_source)


@hookimpl
def register_engines(register):
    register(OPENAI)
