"""docs/deploy/: the systemd unit, the compose file and its config agree with each other and
with the bot (stop timeouts above shutdown_timeout, the served model's name, the store where
the service may write). Docker is not available here, so the compose file is checked as data."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import REPO

from bot.config import load_settings

DEPLOY = REPO / "docs" / "deploy"


@pytest.fixture
def example_settings(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "a-key")
    for variable in ("DISCORD_ENABLED", "SLACK_ENABLED", "DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    return load_settings(DEPLOY / "config.yaml")


def _unit() -> dict[str, list[str]]:
    """Key -> values (systemd allows a key more than once), comments left out."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / "modelbot.service").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_systemd_unit_stops_cleanly_and_writes_only_its_own_paths(example_settings):
    unit = _unit()
    assert unit["ExecStart"] == ["/opt/modelbot/.venv/bin/modelbot run"]
    assert unit["Type"][0] in ("simple", "exec")
    assert unit["KillSignal"] == ["SIGTERM"]
    assert _seconds(unit["TimeoutStopSec"][0]) > example_settings.shutdown_timeout
    assert unit["Restart"] == ["on-failure"] and unit["RestartPreventExitStatus"] == ["2"]  # 2: a config error
    assert unit["User"] == ["modelbot"] and unit["EnvironmentFile"] == ["/etc/modelbot/modelbot.env"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    writable = unit["ReadWritePaths"][0].split()
    assert any(str(example_settings.store_path).startswith(path + "/") for path in writable)
    assert any(str(example_settings.cache_dir).startswith(path) for path in writable)
    assert "PrivateDevices" not in unit  # it would hide the GPU


def test_compose_runs_the_bot_against_the_vllm_service_its_config_names(example_settings):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    vllm, bot = compose["services"]["vllm"], compose["services"]["bot"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    arguments = dict(argument.removeprefix("--").split("=", 1) for argument in vllm["command"])
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

    (model,) = example_settings.models
    assert model.engine == "openai" and model.engine_options.served_model == arguments["served-model-name"]
    assert urlsplit(model.engine_options.base_urls[0]).hostname == "vllm"
    assert model.context_length == int(arguments["max-model-len"])
    assert model.source == arguments["model"]  # the tokenizer the server's weights come with

    assert _seconds(bot["stop_grace_period"]) > example_settings.shutdown_timeout
    assert bot["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert "./config.yaml:/etc/modelbot/config.yaml:ro" in bot["volumes"]
    assert any(volume.endswith(":" + str(example_settings.store_path.parent)) for volume in bot["volumes"])
    hf_cache = [volume for volume in vllm["volumes"] if volume.startswith("hf-cache:")]
    assert hf_cache and any(volume.startswith("hf-cache:") for volume in bot["volumes"])
    assert "modelbot.env" in bot["env_file"] and "modelbot.env" not in vllm["env_file"]  # no chat tokens there


def test_env_examples_hold_no_secrets():
    for name in ("modelbot.env.example", "vllm.env.example"):
        for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                assert value in ("", "false"), f"{name}: {key} has a value"
