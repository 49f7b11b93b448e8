"""/layers for a remote model: the architecture from its config.json, built on the meta device
(no weights read, nothing allocated), with parameter counts and an estimated footprint."""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.config import ModelSpec
from bot.errors import UserFacingError
from bot.inspect import LayerReport, inspect_model
from bot.text import human_bytes
from bot.worker.residency import BYTES_PER_PARAMETER  # the local engine's measured sizes


class NoArchitecture(UserFacingError):
    """A remote model without a source: there is no config.json to build it from."""


def inspect_remote(catalog: Any, spec: ModelSpec, serving: str) -> LayerReport:
    """Worker-thread safe: reads only the tokenizer and config files (cached by the catalog)."""
    if not spec.source:
        raise NoArchitecture(f"{spec.name} is {serving}; add `source:` (its hub id or config folder) to its "
                             "config entry to see its layers")
    import torch
    from transformers import AutoModelForCausalLM

    info = catalog.tokenizer(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(info.config, trust_remote_code=spec.trust_remote_code)
    report = inspect_model(model, spec.name)
    footprint, storage = report.footprint_bytes, report.dtype
    per_parameter = BYTES_PER_PARAMETER.get(spec.quantization)
    if per_parameter is not None:
        footprint, storage = int(report.total_params * per_parameter), spec.quantization
    note = (f"{spec.name} is {serving}. Built from its config on the meta device (no weights read): "
            f"about {human_bytes(footprint)} at {storage} on the server.\n")
    return dataclasses.replace(report, summary=note + report.summary, full_tree=note + report.full_tree,
                               footprint_bytes=footprint)
