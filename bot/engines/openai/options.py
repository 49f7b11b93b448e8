"""A remote model's config keys (engine: openai), checked at start with errors that name the key."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bot.config import ConfigError

APIS = ("completions", "chat")
OPTION_KEYS = frozenset({"base_url", "api_key", "served_model", "api", "max_concurrency", "request_timeout"})


@dataclass(frozen=True)
class OpenAIOptions:
    base_urls: tuple[str, ...]  # one per replica, each ending in /v1 (or the server's own API root)
    api: str = "completions"
    served_model: str | None = None  # None: the first id the server lists at GET /models
    max_concurrency: int = 64
    request_timeout: float = 120.0  # seconds without a byte from the server
    api_key: str | None = field(default=None, repr=False)  # never printed, logged or shown

    @property
    def sends_ids(self) -> bool:
        return self.api == "completions"


def parse_options(entry: dict[str, Any], where: str) -> OpenAIOptions:
    raw_urls = entry.get("base_url")
    if raw_urls is None or raw_urls == [] or raw_urls == "":
        raise ConfigError(f"{where}.base_url: missing (the server's OpenAI API, e.g. http://gpu-1:8000/v1; "
                          "a list for replicas)")
    urls = raw_urls if isinstance(raw_urls, list) else [raw_urls]
    base_urls = tuple(_base_url(url, f"{where}.base_url" + (f"[{i}]" if isinstance(raw_urls, list) else ""))
                      for i, url in enumerate(urls))
    if len(set(base_urls)) != len(base_urls):
        raise ConfigError(f"{where}.base_url: a replica is listed twice")
    api = entry.get("api", "completions")
    if api not in APIS:
        raise ConfigError(f"{where}.api: must be completions (token ids, for vLLM, SGLang, llama.cpp) or chat "
                          f"(messages, any OpenAI-compatible server) (got {api!r})")
    if api == "completions" and not entry.get("source"):
        raise ConfigError(f"{where}.source: missing; api: completions sends the family's token ids, so modelbot "
                          "needs the model's tokenizer (a hub id, a local folder or a GGUF file)")
    if api == "chat" and not entry.get("source") and not entry.get("family"):
        raise ConfigError(f"{where}.family: missing; without a source, name the model's family "
                          "(llama, phi3, gemma, mistral, qwen2, ...) so its message rules apply")
    api_key = entry.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ConfigError(f"{where}.api_key: must be text, e.g. ${{VLLM_API_KEY}} from the environment")
    served = entry.get("served_model")
    if served is not None and (not isinstance(served, str) or not served.strip()):
        raise ConfigError(f"{where}.served_model: must be the server's model id (text)")
    concurrency = entry.get("max_concurrency", 64)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"{where}.max_concurrency: must be a whole number >= 1 (got {concurrency!r})")
    timeout = entry.get("request_timeout", 120.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ConfigError(f"{where}.request_timeout: must be a number of seconds > 0 (got {timeout!r})")
    return OpenAIOptions(base_urls=base_urls, api=api, served_model=served, max_concurrency=concurrency,
                         request_timeout=float(timeout), api_key=api_key)


def _base_url(value: Any, key: str) -> str:
    """'http://host:8000' -> 'http://host:8000/v1'; a URL with a path is kept as it is."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a URL such as http://gpu-1:8000/v1 (got {type(value).__name__})")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http(s) URL such as http://gpu-1:8000/v1")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ConfigError(f"{key}: {value!r} has an invalid port") from None
    if parts.username or parts.password:
        raise ConfigError(f"{key}: put credentials in api_key, not in the URL")
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"
