"""Reading config.yaml within bounds: a config file is a few kilobytes, and a mistaken or
hostile one (a 600-byte alias bomb, a 10 MB file) must end in one line, not hang the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.config import ConfigError


def read_bounded_yaml(path: Path) -> Any:
    """The file's one YAML document, refused in one line when too large, not UTF-8, not YAML,
    or shaped like an alias bomb."""
    with path.open("rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a config file is a few kilobytes "
                          "(is this the right file?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return _load_yaml(text, path)


# A config file is a few kilobytes; these bounds keep a hostile or mistaken one from hanging the CLI.
MAX_CONFIG_BYTES = 512 * 1024  # thousands of models; the densest file that passes (17,800 models) loads in ~1.2 s
MAX_YAML_ALIASES = 500  # *alias references in the whole file
MAX_ALIAS_EXPANSION = 10_000  # values aliases may add once expanded (a "billion laughs" adds 9**9)
MAX_YAML_DEPTH = 64  # nested mappings and lists


def _load_yaml(text: str, path: Path) -> Any:
    """libyaml's parser where installed (PyYAML's pure-Python one is ~10x slower); the node graph is
    checked for alias bombs and deep nesting before any value is built."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node_graph(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = (str(getattr(exc, "problem", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:  # the pure-Python composer on deep nesting
        raise ConfigError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _check_node_graph(root: Any, path: Path) -> None:
    """Count alias references, the values they expand to, and the nesting depth: one pass over the
    composed nodes (an alias is the same node object reached again), memoised, so a 600-byte alias
    bomb is refused in microseconds instead of being expanded."""
    import yaml

    scalars: set[int] = set()  # most nodes: checked where their parent is, never pushed
    expanded: dict[int, int] = {}  # id(collection) -> values it stands for once aliases are expanded
    on_path: set[int] = set()
    aliases = 0
    scalar = yaml.ScalarNode

    def alias() -> None:
        nonlocal aliases
        aliases += 1
        if aliases > MAX_YAML_ALIASES:
            raise ConfigError(f"{path}: more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values out")

    if isinstance(root, scalar):
        return
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = [item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else node.value
        if finished:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded.get(id(child), 1) for child in children)
            continue
        if key in expanded:
            alias()
            continue
        if key in on_path:
            raise ConfigError(f"{path}: a YAML alias refers to its own anchor (line {node.start_mark.line + 1})")
        if len(on_path) >= MAX_YAML_DEPTH:
            raise ConfigError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep "
                              f"(line {node.start_mark.line + 1})")
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if type(child) is scalar:
                if id(child) in scalars:
                    alias()
                scalars.add(id(child))
            else:
                stack.append((child, False))
    added = expanded.get(id(root), 1) - len(expanded) - len(scalars)
    if added > MAX_ALIAS_EXPANSION:
        raise ConfigError(f"{path}: YAML aliases expand to {added:,} more values (at most {MAX_ALIAS_EXPANSION:,}); "
                          "an alias bomb? write the values out")
