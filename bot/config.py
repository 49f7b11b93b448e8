"""config.yaml -> typed settings.

Every problem is reported as one ConfigError naming the key (``models[1].quantization``)
and what is wrong with it; ``${VAR}`` in any string value reads the environment.
Frontend sections (``discord:``, ``slack:``, and any registered frontend's) are kept as
plain mappings here and validated by their own frontends (bot/frontends/registry.py).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.backend import QUANTIZATION_MODES

DEFAULT_CONFIG_NAME = "config.yaml"
CONFIG_ENV = "MODELBOT_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GENERATION_KEYS = {
    "max_new_tokens": int,
    "do_sample": bool,
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": int,
    "repetition_penalty": (int, float),
}
# What transformers accepts, checked at load so that a typo is a config error, not a traceback at the first message
_GENERATION_RANGES = {
    "max_new_tokens": (lambda v: v >= 1, "a whole number >= 1"),
    "temperature": (lambda v: v > 0, "a number > 0 (for greedy decoding set do_sample: false)"),
    "top_p": (lambda v: 0 < v <= 1, "a number with 0 < top_p <= 1"),
    "top_k": (lambda v: v >= 0, "a whole number >= 0 (0: no top-k filtering)"),
    "repetition_penalty": (lambda v: v > 0, "a number > 0 (1.0: no penalty)"),
}


class ConfigError(Exception):
    """A config problem a user can fix; str() is the one-line message to show."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    quantization: str = "auto"
    family: str | None = None  # overrides plugin detection
    model_type: str | None = None  # overrides config.json's model_type
    trust_remote_code: bool = False
    generation: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    context_length: int | None = None  # prompt + reply tokens; None: config.json's (8192 without a source)
    engine: str = "local"  # which engine runs it (bot/engines/): local, openai, or a plugin's
    engine_options: Any = None  # what the engine type parsed from its own keys of the entry
    keep_alive: float | None = None  # seconds idle before unloading; None: worker.keep_alive; inf: never
    show_thinking: bool = False  # a reasoning model's <think> text shown collapsed above the answer


@dataclass(frozen=True)
class WorkerSettings:
    """The shared worker's limits (config section ``worker:``)."""

    memory_budget: int | None = None  # bytes for models + KV cache; None: what the device has
    memory_budget_fraction: float | None = None  # "80%" of the device, resolved by the worker
    max_batch: int = 16  # jobs of one model generating together
    max_pending_per_user: int = 4  # waiting + running jobs one user may have
    max_pending: int = 64  # waiting jobs in total
    idle_timeout: float = 60.0  # seconds without a new token before a job is ended
    max_new_tokens: int = 2048  # hard cap on any one reply
    batching: str = "auto"  # auto: a lone job runs plain generate, concurrent ones batch; always; off
    kv_cache_tokens: int | None = None  # continuous-batching KV cache size; None: sized from the budget
    keep_alive: float = math.inf  # seconds a model may stay loaded unused (Ollama's keep_alive); inf: never unload
    swap_after: float = 30.0  # seconds a job for another model waits while the loaded model's jobs go first


@dataclass(frozen=True)
class MetricsSettings:
    """The optional HTTP endpoint (config section ``metrics:``): /metrics, /healthz, /readyz."""

    host: str = "127.0.0.1"
    port: int = 9464


BATCHING_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class Settings:
    models: list[ModelSpec]
    default_model: str
    device: str = "auto"
    cache_dir: Path = Path("~/.cache/modelbot").expanduser()
    store_path: Path = Path("modelbot.sqlite3")
    max_resident_models: int = 1
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # each frontend's (discord:, slack:, ...)
    path: Path | None = None
    preload: tuple[str, ...] = ()  # models loaded at start, before the frontends connect
    metrics: MetricsSettings | None = None  # None: no HTTP endpoint
    shutdown_timeout: float = 10.0  # seconds from SIGTERM to exit

    def keep_alive(self, model: str) -> float:
        """Seconds `model` may stay loaded unused (math.inf: never unloaded for being idle)."""
        spec = self.model(model)
        return spec.keep_alive if spec is not None and spec.keep_alive is not None else self.worker.keep_alive

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


def config_path(explicit: str | None) -> Path:
    """--config, else $MODELBOT_CONFIG, else ./config.yaml."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME)


def load_settings(path: Path) -> Settings:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (pass --config PATH or set {CONFIG_ENV})")
    from bot.config_yaml import read_bounded_yaml

    return parse_settings(read_bounded_yaml(path), base_dir=path.resolve().parent, path=path)


def parse_settings(raw: Any, base_dir: Path, path: Path | None = None) -> Settings:
    if raw is None:
        raw = {}
    _expect(raw, dict, "top level", "a mapping")
    raw = _interpolate(raw, "")
    from bot.frontends.registry import frontend_names

    frontends = ["console", *frontend_names()]
    known = {"models", "default_model", "device", "cache_dir", "store", "max_resident_models", "worker",
             "preload", "metrics", "shutdown_timeout", *frontends}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (known keys: {', '.join(sorted(known))})")

    models_raw = raw.get("models")
    if not models_raw:
        raise ConfigError("models: at least one model must be configured")
    _expect(models_raw, list, "models", "a list of model entries")
    models = [_parse_model(entry, f"models[{i}]", base_dir) for i, entry in enumerate(models_raw)]
    seen: set[str] = set()
    for i, model in enumerate(models):
        if model.name in seen:
            raise ConfigError(f"models[{i}].name: {model.name!r} is used twice")
        seen.add(model.name)

    default_model = raw.get("default_model", models[0].name)
    if default_model not in seen:
        raise ConfigError(f"default_model: {default_model!r} is not a configured model ({', '.join(sorted(seen))})")

    device = str(raw.get("device", "auto"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N (got {device!r})")

    max_resident = raw.get("max_resident_models", 1)
    if not isinstance(max_resident, int) or isinstance(max_resident, bool) or max_resident < 1:
        raise ConfigError(f"max_resident_models: must be a whole number >= 1 (got {max_resident!r})")

    preload = raw.get("preload") or []
    _expect(preload, list, "preload", "a list of model names")
    for i, name in enumerate(preload):
        if name not in seen:
            raise ConfigError(f"preload[{i}]: {name!r} is not a configured model ({', '.join(sorted(seen))})")

    sections = {}
    for name in frontends:
        section = raw.get(name) or {}
        _expect(section, dict, name, "a mapping")
        sections[name] = section

    return Settings(
        models=models,
        default_model=default_model,
        device=device,
        cache_dir=_path(raw.get("cache_dir", "~/.cache/modelbot"), "cache_dir", base_dir),
        store_path=_path(raw.get("store", "modelbot.sqlite3"), "store", base_dir),
        max_resident_models=max_resident,
        worker=_parse_worker(raw.get("worker") or {}),
        sections=sections,
        path=path,
        preload=tuple(dict.fromkeys(preload)),
        metrics=_parse_metrics(raw.get("metrics")),
        shutdown_timeout=_positive_seconds(raw.get("shutdown_timeout", 10.0), "shutdown_timeout"),
    )


def _parse_metrics(raw: Any) -> MetricsSettings | None:
    if raw is None or raw is False:
        return None
    _expect(raw, dict, "metrics", "a mapping with host and port")
    for key in raw:
        if key not in ("host", "port"):
            raise ConfigError(f"metrics.{key}: unknown key (known: host, port)")
    host = raw.get("host", MetricsSettings.host)
    _expect(host, str, "metrics.host", "an address such as 127.0.0.1 or 0.0.0.0")
    port = raw.get("port", MetricsSettings.port)
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)  # from an environment variable
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics.port: must be a port number from 0 to 65535 (got {port!r})")
    return MetricsSettings(host=host, port=port)


def _finite(value: int | float) -> bool:
    """nan and inf never pass a range check (an int of any size is finite)."""
    return isinstance(value, int) or math.isfinite(value)


def _positive_seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{key}: must be a number of seconds > 0 (got {value!r})")  # nan and inf too
    return float(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_keep_alive(value: Any, key: str) -> float:
    """Ollama's keep_alive: seconds, or "30s" / "5m" / "1h"; 0 unloads right after each answer;
    "never" or a negative number keeps the model loaded (math.inf)."""
    if isinstance(value, str) and value.strip().lower() in ("never", "forever", "-1"):
        return math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            return math.inf
        if value < math.inf:  # nan fails this too
            return float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    raise ConfigError(f"{key}: must be a duration such as 300, 30s, 5m or 1h, or never (got {value!r})")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _parse_worker(raw: Any) -> WorkerSettings:
    _expect(raw, dict, "worker", "a mapping")
    defaults = WorkerSettings()
    known = {"memory_budget", "max_batch", "max_pending_per_user", "max_pending", "idle_timeout",
             "max_new_tokens", "batching", "kv_cache_tokens", "keep_alive", "swap_after"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"worker.{key}: unknown key (known: {', '.join(sorted(known))})")

    def whole(key: str, default: int | None, minimum: int = 1) -> int | None:
        value = raw.get(key, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"worker.{key}: must be a whole number >= {minimum} (got {value!r})")
        return value

    budget, fraction = _parse_budget(raw.get("memory_budget", "auto"))
    idle = _positive_seconds(raw.get("idle_timeout", defaults.idle_timeout), "worker.idle_timeout")
    batching = str(raw.get("batching", defaults.batching)).lower()
    if batching not in BATCHING_MODES:
        raise ConfigError(f"worker.batching: must be one of {', '.join(BATCHING_MODES)} (got {batching!r})")
    return WorkerSettings(
        memory_budget=budget,
        memory_budget_fraction=fraction,
        max_batch=whole("max_batch", defaults.max_batch),
        max_pending_per_user=whole("max_pending_per_user", defaults.max_pending_per_user),
        max_pending=whole("max_pending", defaults.max_pending),
        idle_timeout=idle,
        max_new_tokens=whole("max_new_tokens", defaults.max_new_tokens),
        batching=batching,
        kv_cache_tokens=whole("kv_cache_tokens", None, minimum=16),
        keep_alive=parse_keep_alive(raw.get("keep_alive", "never"), "worker.keep_alive"),
        swap_after=_positive_seconds(raw.get("swap_after", defaults.swap_after), "worker.swap_after"),
    )


def _parse_budget(value: Any) -> tuple[int | None, float | None]:
    """'auto', a byte count, '6GB' / '6GiB', or '80%' of the device."""
    if value in (None, "auto"):
        return None, None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, None
    text = str(value).strip()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = -1.0
        if 0 < percent <= 100:
            return None, percent / 100
    else:
        match = _SIZE.match(text)
        size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()] if match else 0.0
        if 1 <= size < math.inf:  # 0 would leave no room for any model
            return int(size), None
    raise ConfigError(f"worker.memory_budget: must be auto, a size such as 6GB or 512MiB, or a percentage such as 80% "
                      f"(got {value!r})")


def _engine_type(entry: dict, key: str):
    from bot.plugins import default_registry

    name = entry.get("engine", "local")
    engines = default_registry().engines
    if not isinstance(name, str) or name not in engines:
        raise ConfigError(f"{key}.engine: unknown engine {name!r} (known: {', '.join(sorted(engines))})")
    return engines[name]


def _parse_model(entry: Any, key: str, base_dir: Path) -> ModelSpec:
    _expect(entry, dict, key, "a mapping with at least name and source")
    engine = _engine_type(entry, key)
    allowed = {"name", "source", "quantization", "family", "model_type", "trust_remote_code",
               "generation", "system_prompt", "context_length", "engine", "keep_alive", "show_thinking",
               *engine.option_keys}
    for field_name in entry:
        if field_name not in allowed:
            raise ConfigError(f"{key}.{field_name}: unknown key (allowed: {', '.join(sorted(allowed))})")
    if not entry.get("name"):
        raise ConfigError(f"{key}.name: missing")
    options = engine.parse_options(entry, key)
    if engine.needs_source(options) and not entry.get("source"):
        raise ConfigError(f"{key}.source: missing")
    name = str(entry["name"])
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"{key}.name: {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    quantization = str(entry.get("quantization", "auto")).lower()
    if quantization not in QUANTIZATION_MODES:
        raise ConfigError(f"{key}.quantization: must be one of {', '.join(QUANTIZATION_MODES)} (got {quantization!r})")
    trust = entry.get("trust_remote_code", False)
    _expect(trust, bool, f"{key}.trust_remote_code", "true or false")
    show_thinking = entry.get("show_thinking", False)
    _expect(show_thinking, bool, f"{key}.show_thinking", "true or false")
    generation = entry.get("generation") or {}
    _expect(generation, dict, f"{key}.generation", "a mapping")
    for gen_key, value in generation.items():
        expected = _GENERATION_KEYS.get(gen_key)
        if expected is None:
            raise ConfigError(f"{key}.generation.{gen_key}: unknown setting (known: {', '.join(_GENERATION_KEYS)})")
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise ConfigError(f"{key}.generation.{gen_key}: wrong type {type(value).__name__} ({value!r})")
        check = _GENERATION_RANGES.get(gen_key)
        if check is not None and not (_finite(value) and check[0](value)):
            raise ConfigError(f"{key}.generation.{gen_key}: must be {check[1]} (got {value!r})")
    context_length = entry.get("context_length")
    if context_length is not None and (not isinstance(context_length, int) or isinstance(context_length, bool)
                                       or context_length < 16):
        raise ConfigError(f"{key}.context_length: must be a whole number of tokens >= 16 (got {context_length!r})")
    return ModelSpec(
        name=name,
        source=_resolve_source(str(entry["source"]), base_dir) if entry.get("source") else "",
        quantization=quantization,
        family=entry.get("family"),
        model_type=entry.get("model_type"),
        trust_remote_code=trust,
        generation=dict(generation),
        system_prompt=entry.get("system_prompt"),
        context_length=context_length,
        engine=engine.name,
        engine_options=options,
        keep_alive=parse_keep_alive(entry["keep_alive"], f"{key}.keep_alive") if "keep_alive" in entry else None,
        show_thinking=show_thinking,
    )


def _resolve_source(source: str, base_dir: Path) -> str:
    """Relative local paths are relative to the config file; hub ids and package: stay as they are."""
    if source.startswith("package:"):
        return source
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    looks_local = source.startswith(("./", "../", "~", "/")) or source.endswith(".gguf")
    return str(path.resolve()) if looks_local or path.exists() else source


def _path(value: Any, key: str, base_dir: Path) -> Path:
    _expect(value, str, key, "a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _interpolate(value: Any, key: str) -> Any:
    """Replace ${VAR} (or ${VAR:-default}) in every string, naming the key when VAR is unset."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{key}: environment variable {name} is not set")

    return _ENV_REF.sub(replace, value)


def _expect(value: Any, kind: type | tuple, key: str, what: str) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: must be {what} (got {type(value).__name__})")
