"""Third-party family plugins arrive through the `modelbot.plugins` entry-point group, like
an installed package's would; broken ones are logged and skipped, never fatal."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import cli, cli_env, write_config

GOOD_PLUGIN = '''
from bot.backend import FamilyBackend
from bot.hookspecs import hookimpl

class ToyBackend(FamilyBackend):
    name = "toy"
    model_types = ("toy",)
    name_patterns = (r"toy-",)

@hookimpl
def register_backends(register):
    register(ToyBackend())
'''
BROKEN_AT_IMPORT = "raise ImportError('this plugin needs a library that is not installed')\n"
BROKEN_IN_HOOK = '''
from bot.hookspecs import hookimpl

@hookimpl
def register_backends(register):
    raise RuntimeError("plugin bug")
'''
DUPLICATE_NAME = '''
from bot.hookspecs import hookimpl
from plugins.llama import LlamaBackend

@hookimpl
def register_backends(register):
    register(LlamaBackend())
'''


def install_fake_distribution(site: Path, modules: dict[str, str]) -> None:
    """What `pip install some-plugin` leaves behind: modules plus a dist-info with entry points."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    dist = site / "modelbot_test_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: modelbot-test-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[modelbot.plugins]\n" + "".join(f"{name} = {name}\n" for name in modules)
    )


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    install_fake_distribution(site, {
        "toy_family": GOOD_PLUGIN,
        "broken_import": BROKEN_AT_IMPORT,
        "broken_hook": BROKEN_IN_HOOK,
        "duplicate_llama": DUPLICATE_NAME,
    })
    return site


def test_entry_point_plugins_load_like_builtins(plugin_site, monkeypatch):
    from bot.plugins import load_plugins

    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_plugins()
    assert list(registry.backends) == ["llama", "phi3", "gemma", "mistral", "qwen2", "toy"]
    assert registry.owners["toy"] == "toy_family (toy_family)"
    assert registry.find("toy", "anything").name == "toy"
    assert registry.find(None, "someone/toy-7b").name == "toy"
    failed = {f.plugin.split()[0]: f.reason for f in registry.failures}
    assert set(failed) == {"broken_import", "broken_hook", "duplicate_llama"}
    assert "needs a library that is not installed" in failed["broken_import"]
    assert "plugin bug" in failed["broken_hook"]
    assert "already registered by plugins.llama" in failed["duplicate_llama"]


def test_models_command_survives_broken_plugins(plugin_site, tmp_path):
    config = write_config(tmp_path, [{"name": "toy-chat", "source": "someone/toy-7b"}])
    env = cli_env()
    env["PYTHONPATH"] = str(plugin_site) + ":" + env["PYTHONPATH"]
    done = subprocess.run(cli("models", "--config", str(config)), capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "toy (toy_family (toy_family))" in done.stdout  # which plugin serves the model
    assert "broken_import" in done.stderr and "skipped" in done.stderr
    assert "Traceback" not in done.stderr


ECHO_ENGINE = '''
import asyncio

from bot.config import ConfigError
from bot.engines import EngineType
from bot.generation import GenerationStats, GenerationStream
from bot.hookspecs import hookimpl


class EchoEngine:
    """Answers with the user's last message, `times` times: an engine with no model at all."""

    kind = "echo"

    def __init__(self, specs):
        self.times = {spec.name: spec.engine_options for spec in specs}
        self.tasks = set()

    def submit(self, job, progress=None, on_position=None):
        stream = GenerationStream(job, progress, on_position)

        async def answer():
            words = job.messages[-1]["content"].split() * self.times[job.model]
            for word in words:
                stream.emit(word + " ")
            stream.finish(GenerationStats(job.model, len(job.input_ids), new_tokens=len(words),
                                          generation_seconds=0.01))

        task = asyncio.get_running_loop().create_task(answer())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return stream

    def active_jobs(self, channel=None):
        return []

    def generating(self):
        return bool(self.tasks)

    def ready_models(self):
        return list(self.times)

    def where(self, spec):
        return "echo (no model)"

    async def inspect(self, spec, progress):
        raise NotImplementedError

    def snapshot(self):
        return {"kind": "echo", "models": list(self.times), "where": "echo (no model)"}

    async def close(self):
        pass


def parse_options(entry, where):
    times = entry.get("times", 1)
    if not isinstance(times, int) or times < 1:
        raise ConfigError(f"{where}.times: must be a whole number >= 1")
    return times


@hookimpl
def register_engines(register):
    register(EngineType(name="echo", parse_options=parse_options, option_keys=frozenset({"times"}),
                        create=lambda context, specs: {spec.name: EchoEngine(specs) for spec in specs},
                        needs_source=lambda options: False))
'''


def test_a_third_party_engine_arrives_through_its_entry_point_and_answers(tmp_path):
    site = tmp_path / "engine-site"
    site.mkdir()
    install_fake_distribution(site, {"echo_engine": ECHO_ENGINE})
    env = cli_env()
    env["PYTHONPATH"] = str(site) + ":" + env["PYTHONPATH"]
    config = write_config(tmp_path, [{"name": "parrot", "engine": "echo", "times": 2, "family": "llama"}])
    asked = subprocess.run(cli("ask", "--config", str(config), "polly", "wants", "a", "cracker"), capture_output=True,
                           text=True, env=env, timeout=60)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.split() == ["polly", "wants", "a", "cracker"] * 2
    models = subprocess.run(cli("models", "--config", str(config)), capture_output=True, text=True, env=env,
                            timeout=60)
    assert "echo (no model)" in models.stdout, models.stderr
    (tmp_path / "bad").mkdir()
    bad = write_config(tmp_path / "bad", [{"name": "parrot", "engine": "echo", "times": 0, "family": "llama"}])
    refused = subprocess.run(cli("models", "--config", str(bad)), capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "models[0].times: must be a whole number >= 1" in refused.stderr
