"""The worker's snapshot as text: for /stats in a chat and `modelbot stats` in a terminal."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bot.text import human_bytes


def format_stats(snapshot: dict[str, Any]) -> str:
    """The local engine's figures (when a local model is configured), then each other engine's."""
    lines = _local_lines(snapshot) if "device" in snapshot else []
    for engine in snapshot.get("engines", []):
        lines.extend(_remote_lines(engine))
    return "\n".join(lines)


def _remote_lines(engine: dict[str, Any]) -> list[str]:
    """Another engine (a remote server's): where it is (never a key), what is in flight, recent
    speed; a third-party engine shows what its snapshot has of these."""
    lines = [f"{engine['kind']} engine for {', '.join(engine.get('models', []))}: {engine.get('where', '')}"]
    for replica in engine.get("replicas", []):
        health = "ok" if replica["healthy"] else f"failing ({replica['last_error']})"
        lines.append(f"  {replica['url']}: {health}, {replica['in_flight']} in flight")
    if "running" in engine:
        lines.append(f"  queue: {engine['running']} in flight of {engine['max_concurrency']}, "
                     f"{engine['queued']} waiting")
    if "recent_jobs" in engine:
        lines.append("  " + _recent_line(engine))
    return lines


def _recent_line(snapshot: dict[str, Any]) -> str:
    if not snapshot["recent_jobs"]:
        return "last 10 min: no replies"
    speed = snapshot["recent_tokens_per_second"]
    p50, p95 = snapshot["recent_first_token_p50"], snapshot["recent_first_token_p95"]
    return (f"last 10 min: {snapshot['recent_jobs']} replies"
            + (f", {speed:.1f} tok/s per reply" if speed is not None else "")
            + (f", first token p50 {p50:.2f} s / p95 {p95:.2f} s" if p50 is not None else ""))


def _local_lines(snapshot: dict[str, Any]) -> list[str]:
    lines = [f"device {snapshot['device']} · memory {human_bytes(snapshot['used_bytes'])} of "
             f"{human_bytes(snapshot['budget_bytes'])} budget · batching {snapshot['batching']}"]
    models = snapshot["models"]
    if models:
        lines.append("loaded models:")
        for model in models:
            cache = f" + {human_bytes(model['cache_bytes'])} KV cache" if model["cache_bytes"] else ""
            jobs = model.get("jobs", 0)
            lines.append(f"  {model['name']}: {human_bytes(model['footprint_bytes'])}{cache}"
                         + (f", {jobs} generating" if jobs else ", idle"))
    else:
        lines.append("loaded models: none")
    lines.append(f"queue: {snapshot['running']} generating, {snapshot['queued']} waiting")
    lines.append(_recent_line(snapshot))
    if snapshot.get("loads_by_model"):
        lines.append(_loads_line(snapshot))
    eviction = snapshot.get("last_eviction")
    if eviction:
        lines.append(f"last unload: {eviction['model']}, {human_bytes(max(eviction['freed_bytes'], 0))} of "
                     f"{human_bytes(eviction['expected_bytes'])} given back")
    return lines


def _loads_line(snapshot: dict[str, Any]) -> str:
    """Loads and unloads per model since start: "loads: smollm2 3, gemma 2 · unloads: smollm2 2"."""
    def counts(by_model: dict[str, int]) -> str:
        return ", ".join(f"{name} {count}" for name, count in by_model.items())

    unloads = snapshot.get("evictions_by_model") or {}
    return f"loads: {counts(snapshot['loads_by_model'])}" + (f" · unloads: {counts(unloads)}" if unloads else "")


def read_running_stats(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The snapshot a running bot left at `path`, or None and why there is none."""
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no running bot found (a running bot writes {path})"
    except (OSError, ValueError) as exc:
        return None, f"could not read {path}: {exc}"
    age = time.time() - snapshot.get("updated", 0)
    if snapshot.get("stopped") or not _process_alive(snapshot.get("pid")):
        return None, f"the bot is not running (it stopped {age:.0f} s ago)"
    return snapshot, f"updated {age:.0f} s ago"


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
