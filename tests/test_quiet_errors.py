"""Failures a new user meets first end as one clear line, quickly, without a traceback (that
is what -v is for): a hub model when the hub cannot be reached, a damaged weights file."""

from __future__ import annotations

import socket
import subprocess
import time

from helpers import cli, cli_env, smollm2, write_config


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def test_a_hub_model_without_network_fails_at_once_in_one_line(tmp_path):
    config = write_config(tmp_path, [{"name": "llama", "source": "meta-llama/Llama-3.1-8B-Instruct"}])
    env = {**cli_env(), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    done = subprocess.run(cli("ask", "--config", str(config), "hello"), capture_output=True, text=True, env=env,
                          timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 1
    # five retries per file used to print 45 lines over 50 s
    assert done.stderr.splitlines() == [
        "modelbot: could not load model llama: the Hugging Face hub cannot be reached and "
        "meta-llama/Llama-3.1-8B-Instruct is not in the local cache (download it on a machine with network, "
        "or use a local path as source)"], done.stderr
    assert seconds < 30, seconds


def test_damaged_weights_are_one_warning_and_one_error_without_a_traceback(tmp_path):
    from helpers import TEST_CACHE

    converted = next((TEST_CACHE / "gguf").glob("SmolLM2-135M-Instruct*"), None)
    if converted is None:  # the converted checkpoint comes from the SmolLM2 tests; make it here
        subprocess.run(cli("ask", "--config", str(write_config(tmp_path, [smollm2()])), "hi"), env=cli_env(),
                       capture_output=True, timeout=300, check=True)
        converted = next((TEST_CACHE / "gguf").glob("SmolLM2-135M-Instruct*"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in converted.iterdir():
        if path.name == "modelbot-converted.json":
            continue
        data = b"\x00" * 8 + b"not a safetensors header" if path.suffix == ".safetensors" else path.read_bytes()
        (damaged / path.name).write_bytes(data)
    config = write_config(tmp_path, [{"name": "damaged", "source": str(damaged)}])
    done = subprocess.run(cli("ask", "--config", str(config), "hello"), capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "  File " not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith(f"modelbot: could not load model damaged from {damaged}: its weights cannot be read"), last
    verbose = subprocess.run(cli("-v", "ask", "--config", str(config), "hello"), capture_output=True, text=True,
                             env=cli_env(), timeout=300)
    assert "Traceback" in verbose.stderr  # -v keeps the details
