"""Show a model's layers: a readable `print(model)` for a chat message.

`inspect_model` walks a loaded (or meta-device) transformers model once and returns a
`LayerReport`: a compact summary that fits one chat message, and a full tree for a text
attachment. Both collapse runs of identical blocks the way `print(model)` does
("(0-31): 32 x LlamaDecoderLayer") and add parameter counts.

torch is imported lazily inside functions so that importing this module (for `--help`,
listing commands) stays fast; bitsandbytes is never imported: quantized layers are
recognised by class name so the module works where bitsandbytes is not installed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bot.text import human_bytes

# Discord caps a message at 2000 characters; keep room for a mention and a footer.
SUMMARY_LIMIT = 1800

# bitsandbytes layer classes, matched by name anywhere in the MRO so subclasses such as
# LinearNF4 / LinearFP4 count too, without importing bitsandbytes.
_4BIT_CLASSES = frozenset({"Linear4bit"})
_8BIT_CLASSES = frozenset({"Linear8bitLt"})

_INDENT = "  "
_MAX_PATTERNS_SHOWN = 12  # a mixture-of-experts model can have many linear names

# How a block's parameters are stored, for the picture's colours (Block.storage).
STORAGE_4BIT, STORAGE_8BIT, STORAGE_FULL = "4-bit", "8-bit", "16/32-bit"


@dataclass(frozen=True)
class Block:
    """One of a model's top-level blocks, in order: embeddings, each decoder layer, the final
    norm, the head (what /layers draws as one bar each)."""

    name: str  # its path in the model, e.g. "model.layers.3"
    type_name: str  # e.g. "LlamaDecoderLayer"
    params: int  # logical count (4-bit unpacked); a tied block: the size of the weights it shares
    storage: str  # STORAGE_4BIT / STORAGE_8BIT / STORAGE_FULL: what holds most of its parameters
    tied: bool = False  # its weights are another block's (lm_head tied to embed_tokens)


@dataclass(frozen=True)
class LayerReport:
    model_name: str
    summary: str  # compact text for a chat message, under SUMMARY_LIMIT characters
    full_tree: str  # the full readable tree, sent as a text attachment
    total_params: int  # logical count: 4-bit weights count as their unpacked shape
    footprint_bytes: int  # model.get_memory_footprint(), or a parameter/buffer estimate
    quantized_linears: int  # bitsandbytes Linear4bit / Linear8bitLt modules
    full_precision_linears: int  # plain nn.Linear modules (e.g. lm_head)
    dtype: str  # storage types by share of parameters, e.g. "nf4, bfloat16"
    device: str  # e.g. "cuda:0", or "cuda:0 (92%), cpu (8%)" when offloaded
    blocks: tuple[Block, ...] = ()  # the top-level blocks in order, for the picture


# --------------------------------------------------------------------------- formatting


def human_count(n: int) -> str:
    """134_500_000 -> '134.5M', 8_030_261_248 -> '8.03B'."""
    units = ((10**12, "T", 2), (10**9, "B", 2), (10**6, "M", 1), (10**3, "K", 1))
    for i, (div, suffix, digits) in enumerate(units):
        if n >= div:
            text = f"{n / div:.{digits}f}"
            # 999.96M would print as "1000.0M": step up to the next unit instead.
            if float(text) >= 1000 and i > 0:
                up_div, up_suffix, up_digits = units[i - 1]
                return f"{n / up_div:.{up_digits}f}{up_suffix}"
            return f"{text}{suffix}"
    return str(n)


def _percent_list(counter: Counter) -> str:
    """'cuda:0' for one key; 'cuda:0 (92%), cpu (8%)' when parameters are split."""
    items = counter.most_common()
    if len(items) <= 1:
        return items[0][0] if items else "unknown"
    total = sum(counter.values()) or 1
    return ", ".join(f"{key} ({100 * value / total:.0f}%)" for key, value in items)


# ---------------------------------------------------------------------- classification


def _linear_kind(module: Any) -> str | None:
    """'4bit', '8bit', 'full' (a plain nn.Linear), or None for anything else."""
    names = {cls.__name__ for cls in type(module).__mro__}
    if names & _4BIT_CLASSES:
        return "4bit"
    if names & _8BIT_CLASSES:
        return "8bit"
    import torch.nn as nn  # lazy: keep module import cheap

    if isinstance(module, nn.Linear):
        return "full"
    return None


def _logical_numel(module: Any, kind: str | None, param_name: str, param: Any) -> int:
    """Parameter count as the model sees it, not as it is stored.

    bitsandbytes packs two 4-bit values per uint8 byte, so a quantized Params4bit has
    half the logical numel(); its quant_state keeps the original shape.
    """
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(shape)
    if kind == "4bit" and param_name == "weight" and str(param.dtype) == "torch.uint8":
        # Packed but without a quant_state (unusual): the layer still knows its shape.
        return int(module.in_features) * int(module.out_features)
    return int(param.numel())


def _storage_label(param: Any) -> str:
    """'nf4' / 'fp4' for quantized 4-bit weights, otherwise the torch dtype name."""
    quant_type = getattr(getattr(param, "quant_state", None), "quant_type", None)
    if quant_type:
        return str(quant_type)
    return str(param.dtype).removeprefix("torch.")


def _storage_kind(kind: str | None, param_name: str, label: str) -> str:
    """STORAGE_4BIT / STORAGE_8BIT / STORAGE_FULL for one parameter. A quantized layer's weight
    counts as quantized even on the meta device, where its dtype does not say so yet."""
    if label in ("nf4", "fp4") or (kind == "4bit" and param_name == "weight"):
        return STORAGE_4BIT
    if label == "int8" or (kind == "8bit" and param_name == "weight"):
        return STORAGE_8BIT
    return STORAGE_FULL


def _path_pattern(path: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'model.layers.*.mlp.up_proj'."""
    return ".".join("*" if part.isdigit() else part for part in path.split("."))


# ---------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    """Everything one walk over the model collects; rendering only reads it."""

    own_params: dict[int, int] = field(default_factory=dict)  # id(module) -> logical count
    own_labels: dict[int, Counter] = field(default_factory=dict)  # id(module) -> label counts
    own_storage: dict[int, Counter] = field(default_factory=dict)  # id(module) -> STORAGE_* counts
    tied_storage: dict[int, Counter] = field(default_factory=dict)  # id(module) -> tied weights' STORAGE_* counts
    tied_to: dict[int, list[str]] = field(default_factory=dict)  # id(module) -> first owners
    kinds: dict[int, str] = field(default_factory=dict)  # id(module) -> linear kind
    linear_paths: dict[str, list[str]] = field(default_factory=dict)  # kind -> paths
    labels: Counter = field(default_factory=Counter)  # storage label -> logical params
    devices: Counter = field(default_factory=Counter)  # device -> logical params
    full_precision_dtypes: Counter = field(default_factory=Counter)
    quant_details: dict[str, str] = field(default_factory=dict)  # kind -> "nf4, double quant…"
    total: int = 0
    on_meta: bool = False
    subtree: dict[int, int] = field(default_factory=dict)  # memo for _subtree_params


def _analyse(model: Any) -> _Analysis:
    a = _Analysis(linear_paths={"4bit": [], "8bit": [], "full": []})
    owner_of: dict[int, str] = {}  # id(param) -> path of the first module that holds it
    for path, module in model.named_modules():
        kind = _linear_kind(module)
        if kind:
            a.kinds[id(module)] = kind
            a.linear_paths[kind].append(path)
            if kind in ("4bit", "8bit") and kind not in a.quant_details:
                a.quant_details[kind] = _quant_detail(module, kind)
        own = 0
        labels: Counter = Counter()
        storage: Counter = Counter()
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{path}.{name}" if path else name
            count = _logical_numel(module, kind, name, param)
            if id(param) in owner_of:
                # Tied weight (lm_head sharing embed_tokens): count it once, say where.
                a.tied_to.setdefault(id(module), []).append(owner_of[id(param)])
                kind_of_tied = _storage_kind(kind, name, _storage_label(param))
                a.tied_storage.setdefault(id(module), Counter())[kind_of_tied] += count
                continue
            owner_of[id(param)] = full_name
            label = _storage_label(param)
            own += count
            labels[label] += count
            storage[_storage_kind(kind, name, label)] += count
            a.labels[label] += count
            a.devices[str(param.device)] += count
            if kind == "full" and name == "weight":
                a.full_precision_dtypes[label] += 1
            if param.device.type == "meta":
                a.on_meta = True
        a.own_params[id(module)] = own
        a.own_labels[id(module)] = labels
        a.own_storage[id(module)] = storage
        a.total += own
    return a


def _quant_detail(module: Any, kind: str) -> str:
    """'nf4, double quant, compute bfloat16' for the first quantized layer seen."""
    weight = getattr(module, "weight", None)
    if kind == "8bit":
        threshold = getattr(getattr(module, "state", None), "threshold", None)
        return f"int8, outlier threshold {threshold:g}" if threshold else "int8"
    state = getattr(weight, "quant_state", None)
    quant_type = getattr(weight, "quant_type", None) or getattr(state, "quant_type", None)
    parts = [str(quant_type)] if quant_type else []
    nested = getattr(state, "nested", None) if state is not None else None
    if nested is None:
        nested = getattr(weight, "compress_statistics", None)
    if nested:
        parts.append("double quant")
    compute = getattr(module, "compute_dtype", None)
    if compute is not None:
        parts.append(f"compute {str(compute).removeprefix('torch.')}")
    return ", ".join(parts)


def _subtree_params(module: Any, a: _Analysis) -> int:
    key = id(module)
    if key not in a.subtree:
        a.subtree[key] = a.own_params.get(key, 0) + sum(
            _subtree_params(child, a) for _, child in module.named_children()
        )
    return a.subtree[key]


def _blocks(model: Any, a: _Analysis) -> tuple[Block, ...]:
    """The top-level blocks in order. A container without parameters of its own (LlamaModel)
    is opened into its children, a ModuleList into its items, which are blocks whatever they
    hold (a decoder layer); modules without parameters (rotary_emb, dropout) are left out."""
    import torch.nn as nn  # lazy: keep module import cheap

    memo: dict[int, tuple[Counter, Counter]] = {}

    def counts(module: Any) -> tuple[Counter, Counter]:
        """(own storage counts, tied storage counts) of a whole subtree."""
        key = id(module)
        if key not in memo:
            own = Counter(a.own_storage.get(key, Counter()))
            tied = Counter(a.tied_storage.get(key, Counter()))
            for child in module.children():
                child_own, child_tied = counts(child)
                own.update(child_own)
                tied.update(child_tied)
            memo[key] = (own, tied)
        return memo[key]

    def has_own(module: Any) -> bool:
        return bool(a.own_params.get(id(module)) or a.tied_storage.get(id(module)))

    def block(module: Any, path: str) -> Block:
        own, tied = counts(module)
        own_size, tied_size = sum(own.values()), sum(tied.values())
        is_tied = tied_size > own_size
        storage = (tied if is_tied else own).most_common(1)[0][0]
        return Block(path or type(module).__name__, type(module).__name__, own_size + tied_size, storage, is_tied)

    found: list[Block] = []

    def visit(module: Any, path: str, open_containers: bool) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            own, tied = counts(child)
            if not own and not tied:
                continue  # no parameters at all: nothing to draw
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                visit(child, child_path, open_containers=False)
            elif open_containers and not has_own(child) and next(iter(child.children()), None) is not None:
                visit(child, child_path, open_containers=True)
            else:
                found.append(block(child, child_path))

    if next(iter(model.children()), None) is None:  # a single layer: one bar
        own, tied = counts(model)
        return (block(model, ""),) if own or tied else ()
    visit(model, "", open_containers=not isinstance(model, (nn.ModuleList, nn.ModuleDict)))
    return tuple(found)


def _footprint(model: Any) -> int:
    try:
        return int(model.get_memory_footprint())
    except Exception:  # noqa: BLE001 - a plain nn.Module or an odd device: estimate instead
        tensors = list(model.parameters()) + list(model.buffers())
        return sum(int(t.numel()) * int(t.element_size()) for t in tensors)


# ---------------------------------------------------------------------------- rendering


def _describe(module: Any, a: _Analysis, compact: bool) -> str:
    """'Linear4bit(4096→4096)' in the summary, print(model)'s own text in the full tree."""
    cls = type(module).__name__
    kind = a.kinds.get(id(module))
    if compact and kind and hasattr(module, "in_features"):
        bias = ", bias" if getattr(module, "bias", None) is not None else ""
        return f"{cls}({module.in_features}→{module.out_features}{bias})"
    try:
        extra = module.extra_repr()
    except Exception:  # noqa: BLE001 - a broken extra_repr must not break the report
        extra = ""
    extra = extra.splitlines()[0] if extra else ""
    if not extra and next(iter(module.children()), None) is not None:
        return cls  # a container: its children below say what it holds
    if compact and len(extra) > 40:
        extra = extra[:39] + "…"
    return f"{cls}({extra})"


def _annotation(module: Any, a: _Analysis, compact: bool, repeat: int) -> str:
    count = _subtree_params(module, a)
    parts: list[str] = []
    if count:
        if compact:
            text = human_count(count)
        else:
            text = f"{count:,} params ({human_count(count)})"
        if repeat > 1:
            text += f" each, {human_count(count * repeat)} total"
        parts.append(text)
        if not compact:
            labels = a.own_labels.get(id(module))
            if labels:
                parts.append("/".join(label for label, _ in labels.most_common()))
    tied = a.tied_to.get(id(module))
    if tied:
        parts.append(f"tied to {', '.join(tied)}")
    if not parts:
        return ""
    return ("  · " if compact else "  # ") + " · ".join(parts)


def _group_children(module: Any, a: _Analysis, cache: dict[int, tuple[str, ...]]) -> list[tuple[str, Any, int]]:
    """Collapse consecutive numbered children with identical subtrees, as print(model) does.

    Returns (display name, representative module, repeat count) in order.
    """
    groups: list[tuple[str, Any, int]] = []
    run: list[tuple[str, Any]] = []

    def flush() -> None:
        if not run:
            return
        first, last = run[0][0], run[-1][0]
        name = first if len(run) == 1 else f"{first}-{last}"
        groups.append((name, run[0][1], len(run)))
        run.clear()

    for name, child in module.named_children():
        if name.isdigit() and run and run[-1][0].isdigit():
            prev_name, prev = run[-1]
            if int(name) == int(prev_name) + 1 and _signature(child, a, cache) == _signature(prev, a, cache):
                run.append((name, child))
                continue
        flush()
        run.append((name, child))
    flush()
    return groups


def _signature(module: Any, a: _Analysis, cache: dict[int, tuple[str, ...]]) -> tuple[str, ...]:
    """The full rendering of a subtree: equal signatures mean blocks are interchangeable."""
    key = id(module)
    if key not in cache:
        cache[key] = tuple(_render(module, "", 0, a, compact=False, max_depth=None, repeat=1, cache=cache))
    return cache[key]


def _render(
    module: Any,
    name: str,
    depth: int,
    a: _Analysis,
    *,
    compact: bool,
    max_depth: int | None,
    repeat: int,
    cache: dict[int, tuple[str, ...]],
) -> list[str]:
    indent = _INDENT * depth
    label = f"({name}): " if name else ""
    if repeat > 1:
        head = f"{indent}{label}{repeat} x {type(module).__name__}"
    else:
        head = f"{indent}{label}{_describe(module, a, compact)}"
    head += _annotation(module, a, compact, repeat)
    groups = _group_children(module, a, cache)
    if not groups:
        return [head]
    if max_depth is not None and depth >= max_depth:
        # Out of room: name the children on one line instead of expanding them.
        names = " ".join(child_name for child_name, _, _ in groups)
        if len(names) > 60:
            names = names[:59] + "…"
        return [f"{head}  [{names}]"]
    lines = [head]
    for child_name, child, count in groups:
        lines.extend(
            _render(child, child_name, depth + 1, a, compact=compact, max_depth=max_depth, repeat=count, cache=cache)
        )
    return lines


def _tree_depth(module: Any) -> int:
    children = list(module.children())
    return 0 if not children else 1 + max(_tree_depth(child) for child in children)


def _linear_lines(a: _Analysis, compact: bool) -> list[str]:
    """'4-bit (Linear4bit: nf4, …): q_proj k_proj … (224 layers)' and friends."""
    patterns: dict[str, list[str]] = {}
    for kind, paths in a.linear_paths.items():
        patterns[kind] = list(dict.fromkeys(_path_pattern(p) for p in paths))
    # A leaf name alone is enough unless it means two different places (a skipped layer).
    leaf_owners: dict[str, set[str]] = {}
    for kind_patterns in patterns.values():
        for pattern in kind_patterns:
            leaf_owners.setdefault(pattern.rsplit(".", 1)[-1], set()).add(pattern)

    def shown(kind: str) -> str:
        names = []
        for pattern in patterns[kind]:
            leaf = pattern.rsplit(".", 1)[-1]
            names.append(leaf if len(leaf_owners[leaf]) == 1 else pattern)
        names = list(dict.fromkeys(names))
        if compact and len(names) > _MAX_PATTERNS_SHOWN:
            extra = len(names) - _MAX_PATTERNS_SHOWN
            names = names[:_MAX_PATTERNS_SHOWN] + [f"… +{extra} more"]
        count = len(a.linear_paths[kind])
        return f"{' '.join(names)} ({count} layer{'s' if count != 1 else ''})"

    lines = []
    titles = {"4bit": ("4-bit", "Linear4bit"), "8bit": ("8-bit", "Linear8bitLt")}
    for kind, (title, cls) in titles.items():
        if a.linear_paths[kind]:
            detail = a.quant_details.get(kind)
            lines.append(f"{title} ({cls}{': ' + detail if detail else ''}): {shown(kind)}")
    if a.linear_paths["full"]:
        dtypes = ", ".join(d for d, _ in a.full_precision_dtypes.most_common())
        lines.append(f"Full precision ({dtypes or 'Linear'}): {shown('full')}")
    if not any(a.linear_paths.values()):
        lines.append("No linear layers found.")
    return lines


def _header(model: Any, model_name: str, a: _Analysis, footprint: int, dtype: str, device: str, compact: bool) -> list[str]:
    memory = human_bytes(footprint)
    if not compact:
        memory += f" ({footprint:,} bytes)"
    if a.on_meta:
        memory += " (estimated: meta device, nothing allocated)"
    total = human_count(a.total) if compact else f"{human_count(a.total)} ({a.total:,})"
    return [
        f"`{model_name}` · {type(model).__name__}",
        f"Parameters: {total} · memory: {memory}",
        f"dtype: {dtype} · device: {device}",
        *_linear_lines(a, compact),
    ]


def _fit_summary(header: list[str], trees: list[list[str]], footer: str) -> str:
    """The most detailed summary that fits SUMMARY_LIMIT; trees go from most to least detail."""
    head = "\n".join(header)
    for tree in trees:
        text = f"{head}\n```\n" + "\n".join(tree) + f"\n```\n{footer}"
        if len(text) < SUMMARY_LIMIT:
            return text
    text = f"{head}\n{footer}"
    if len(text) < SUMMARY_LIMIT:
        return text
    return text[: SUMMARY_LIMIT - 2] + "…"  # pathological header (huge name): hard cut


# --------------------------------------------------------------------------------- API

FULL_TREE_NOTE = "Full tree attached."


def inspect_model(model: Any, model_name: str) -> LayerReport:
    """Describe `model`'s layers for a chat reply; works on meta-device models too."""
    a = _analyse(model)
    footprint = _footprint(model)
    dtype = ", ".join(label for label, _ in a.labels.most_common()) or "unknown"
    device = _percent_list(a.devices)
    cache: dict[int, tuple[str, ...]] = {}

    depth = _tree_depth(model)
    # Full detail first, then shallower trees until the message fits.
    trees = [
        _render(model, "", 0, a, compact=True, max_depth=limit, repeat=1, cache=cache)
        for limit in [None, *range(depth - 1, 0, -1)]
    ]
    summary = _fit_summary(_header(model, model_name, a, footprint, dtype, device, True), trees, FULL_TREE_NOTE)

    full_lines = _header(model, model_name, a, footprint, dtype, device, False)
    full_lines.append("")
    full_lines.extend(_render(model, "", 0, a, compact=False, max_depth=None, repeat=1, cache=cache))
    return LayerReport(
        model_name=model_name,
        summary=summary,
        full_tree="\n".join(full_lines) + "\n",
        total_params=a.total,
        footprint_bytes=footprint,
        quantized_linears=len(a.linear_paths["4bit"]) + len(a.linear_paths["8bit"]),
        full_precision_linears=len(a.linear_paths["full"]),
        dtype=dtype,
        device=device,
        blocks=_blocks(model, a),
    )
