"""Continuous batching for one loaded model, through transformers' own manager.

`init_continuous_batching` gives a manager with a paged KV cache and a background thread
that runs the batch; requests join and leave it at any step. This wrapper sizes the KV
cache from our memory budget (by default the manager takes ~90% of free GPU memory),
turns on per-token log-probabilities so a NaN shows up per request, and reports whether
the manager died so the engine can start a fresh one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger(__name__)

# Generation settings the manager applies per request; anything else must be equal for all
# requests in a batch (it is part of GenerationJob.batch_key).
_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k")


def kv_bytes_per_token(model: Any) -> int:
    config = model.config.get_text_config()
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype_bytes = getattr(model.dtype, "itemsize", 2)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def generation_config_for(model: Any, settings: dict[str, Any]) -> Any:
    """The model's generation config, with the job's settings on top (as generate() would)."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.update(**{k: v for k, v in settings.items() if k != "max_new_tokens"})
    if not config.do_sample:
        config.temperature, config.top_p, config.top_k = None, None, None
    return config


def unbatchable_reason(model: Any, settings: dict[str, Any]) -> str | None:
    """Why these settings cannot run through continuous batching, or None if they can.

    The manager silently drops logits processors it does not support (repetition penalty,
    minimum length, ...), which would change the output: such jobs take plain generate.
    """
    config = generation_config_for(model, settings)
    if (config.num_beams or 1) > 1:
        return "beam search"
    try:
        processors = model._get_logits_processor(config, input_ids_seq_length=1)  # a prompt exists: no warning
    except Exception as exc:  # noqa: BLE001 - a private API: when in doubt, do not batch
        return f"unknown settings ({type(exc).__name__})"
    unsupported = [type(p).__name__ for p in processors if getattr(p, "supports_continuous_batching", None) is False]
    return ", ".join(unsupported) or None


class BatchSession:
    """One running continuous-batching manager for a model and one set of generation settings."""

    def __init__(self, model: Any, settings: dict[str, Any], max_batch: int, kv_tokens: int, device: str):
        from transformers import ContinuousBatchingConfig

        on_gpu = device.startswith("cuda")
        page_size = 256 if on_gpu else 32
        num_blocks = max(max_batch, math.ceil(kv_tokens / page_size))
        self.cache_bytes = num_blocks * page_size * kv_bytes_per_token(model)
        self.settings_key = tuple(sorted((k, repr(v)) for k, v in settings.items() if k != "max_new_tokens"))
        config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=num_blocks,
            max_batch_tokens=2048 if on_gpu else 512,
            max_requests_per_batch=max_batch,
            max_memory_percent=0.9,  # only used where num_blocks does not decide
            return_logprobs=True,  # a NaN logprob marks a broken request without failing the batch
            per_request_processors=True,
            allow_block_sharing=False,  # prefix sharing needs identical prompts; chat prompts rarely are
        )
        self.manager = model.init_continuous_batching(
            generation_config=generation_config_for(model, settings), continuous_batching_config=config
        )
        self.manager.start()

    def add(self, input_ids: list[int], max_new_tokens: int, stop_token_ids: list[int], request_id: str) -> None:
        self.manager.add_request(
            input_ids=input_ids, request_id=request_id, max_new_tokens=max_new_tokens, streaming=True,
            eos_token_id=list(stop_token_ids),
        )

    def cancel(self, request_id: str) -> None:
        self.manager.cancel_request(request_id)

    def poll(self, timeout: float) -> list[Any]:
        """Every output available now, waiting up to `timeout` for the first one."""
        outputs = []
        first = self.manager.get_result(timeout=timeout)
        while first is not None:
            outputs.append(first)
            first = self.manager.get_result(timeout=0)
        return outputs

    @property
    def changes_attention(self) -> bool:
        """The manager switched the model to a paged attention that plain generate cannot use."""
        return getattr(self.manager, "_original_attn_impl", None) is not None

    @property
    def fatal_error(self) -> Exception | None:
        status = self.manager.background_thread_status
        return getattr(status, "fatal_error", None)

    @property
    def alive(self) -> bool:
        return self.manager.is_running() and self.fatal_error is None

    def close(self) -> None:
        """Stop the manager's thread at once. Whatever it still holds was cancelled or failed
        (the worker closes a batch only when idle, unloading, failing or shutting down):
        the default stop (flush) would first generate those requests to the end, which
        held a shutdown for 10 s and more."""
        try:
            self.manager.stop(block=True, timeout=30, hard_stop=True)
        except Exception:  # noqa: BLE001 - a dead manager may fail to stop; it is dropped either way
            log.exception("stopping the batching manager failed")
        self.manager = None
