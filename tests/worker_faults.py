"""A family plugin that misbehaves on purpose, for the worker's fault tests.

It serves SmolLM2 like the llama plugin does, and its `prepare_model` hook (which every
plugin may implement) installs a fault on the loaded model: an exception, an injected
out-of-memory error, NaN scores, or a stall, once, at a chosen forward pass. Only the
fault is artificial; the model, the worker and the plugin machinery are the real ones.
"""

from __future__ import annotations

import time

from bot.hookspecs import hookimpl
from bot.plugins import load_plugins
from plugins.llama import LlamaBackend


class Fault:
    def __init__(self, kind: str, at_call: int = 3, nan_rows: int | None = None, stall_seconds: float = 0.0):
        self.kind = kind  # raise | oom | nan | stall
        self.at_call = at_call  # forward passes before the fault
        self.nan_rows = nan_rows  # nan: how many of the batch's token rows (None: all)
        self.stall_seconds = stall_seconds
        self.calls = 0
        self.fired = 0


class FaultyBackend(LlamaBackend):
    name = "faulty"
    model_types = ()
    name_patterns = ()

    def __init__(self, fault: Fault):
        self.fault = fault

    def prepare_model(self, model, model_type=None):
        fault = self.fault

        def before_forward(module, args, kwargs):
            fault.calls += 1
            if fault.fired or fault.calls != fault.at_call:
                return None
            if fault.kind == "raise":
                fault.fired += 1
                raise RuntimeError("the faulty plugin exploded")
            if fault.kind == "oom":
                import torch

                fault.fired += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            if fault.kind == "stall":
                fault.fired += 1
                time.sleep(fault.stall_seconds)
            return None

        def after_lm_head(module, args, output):
            if fault.kind != "nan" or fault.fired or fault.calls < fault.at_call:
                return None
            fault.fired += 1
            poisoned = output.clone()
            rows = poisoned.shape[-2] if fault.nan_rows is None else fault.nan_rows
            poisoned[..., :rows, :] = float("nan")
            return poisoned

        model.register_forward_pre_hook(before_forward, with_kwargs=True)
        model.lm_head.register_forward_hook(after_lm_head)


class FaultyPlugin:
    def __init__(self, fault: Fault):
        self.backend = FaultyBackend(fault)

    @hookimpl
    def register_backends(self, register):
        register(self.backend)


def registry_with_fault(fault: Fault):
    return load_plugins({"faulty-test-plugin": lambda: FaultyPlugin(fault)}, use_entry_points=False)


class ForcedText:
    """Not a fault: makes the model say `text` (greedy), whatever it is asked. After each token
    of `text` the scores favour the next one, and the prompt's last token leads to the first;
    so every request of a batch says it, however the steps fall. The ids of `text` must be
    distinct (each has one successor) and differ from `after` (the prompt's last token)."""

    def __init__(self, tokenizer, text: str, after: int):
        self.ids = tokenizer.encode(text, add_special_tokens=False)
        if len(set(self.ids)) != len(self.ids) or after in self.ids:
            raise ValueError(f"{text!r} repeats a token: it cannot be forced this way")
        self.successor = dict(zip([after, *self.ids], self.ids))


class ForcingBackend(FaultyBackend):
    """The faulty plugin's machinery, forcing text instead of breaking."""

    def __init__(self, forced: ForcedText):
        self.forced = forced

    def prepare_model(self, model, model_type=None):
        import torch

        forced, seen = self.forced, {}

        def remember_ids(module, args, kwargs):
            ids = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).reshape(-1)
            keep = kwargs.get("logits_to_keep")
            # continuous batching keeps the rows at these indices (each request's last position)
            seen["ids"] = ids[keep] if isinstance(keep, torch.Tensor) else ids

        def force(module, args, output):
            ids = seen["ids"][-output.shape[-2]:]  # generate keeps the last row(s)
            forced_scores = torch.full_like(output, -1e4)
            for row, last in enumerate(ids.tolist()):
                following = forced.successor.get(last)
                if following is not None:
                    forced_scores[..., row, following] = 0.0
            return forced_scores

        model.register_forward_pre_hook(remember_ids, with_kwargs=True)
        model.lm_head.register_forward_hook(force)


def registry_forcing(forced: ForcedText):
    class ForcingPlugin:
        @hookimpl
        def register_backends(self, register):
            register(ForcingBackend(forced))

    return load_plugins({"forcing-test-plugin": ForcingPlugin}, use_entry_points=False)
