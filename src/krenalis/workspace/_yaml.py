"""YAML loading that remembers line numbers, rejects duplicate keys and expands ``${VAR}``.

PyYAML's plain loaders return dicts and lists without positions, and they silently keep the
last of two equal keys. The workspace file needs both fixed: every error must name its line,
and a duplicated pipeline id must not quietly replace the first one. So mappings load as
:class:`LineDict` (the line of the mapping and of each key) and sequences as :class:`LineList`
(the line of each item). Lines are 1-based.

``${VAR}`` in string values (never in keys) is replaced by the environment variable, so secrets
can stay out of the file; ``$$`` is a literal ``$``. An unset variable is an error. Such a value
may be a secret, so it must never be shown: each LineDict and LineList knows which of its values
came from which variables (``variables_of``), and error messages name those instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

__all__ = ["LineDict", "LineList", "UnsetVariable", "YamlError", "load_yaml"]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(Exception):
    """A problem found while reading the YAML text, at a 1-based line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class LineDict(dict[str, Any]):
    """A mapping that knows its own line, the line of each of its keys, and the environment
    variables each of its string values took."""

    line: int
    key_lines: dict[str, int]
    key_variables: Mapping[str, tuple[str, ...]] = MappingProxyType({})

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def variables_of(self, key: str) -> tuple[str, ...]:
        """The variables the value of ``key`` was made with; () when written in the file."""
        return self.key_variables.get(key, ())


class LineList(list[Any]):
    """A sequence that knows its own line, the line of each item, and the environment variables
    each of its string items took."""

    line: int
    item_lines: list[int]
    item_variables: tuple[tuple[str, ...], ...] = ()

    def variables_of(self, index: int) -> tuple[str, ...]:
        """The variables item ``index`` was made with; () when written in the file."""
        return self.item_variables[index] if index < len(self.item_variables) else ()


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _FromEnvironment(str):
    """A string value made with environment variables, named in ``variables``. It lives only
    while the document is built: a LineDict or LineList keeps the names and a plain string."""

    variables: tuple[str, ...]


class UnsetVariable(_FromEnvironment):
    """A string value that uses environment variables this process does not have, kept as
    written. Only a reader that asked for it (`unset=`) gets one: `krenalis workspace apply`
    checks a file without the secrets that only the processes using them have."""


def _expand(text: str, line: int, environ: Mapping[str, str], unset: set[str] | None) -> str:
    missing = False
    used: dict[str, None] = {}  # the variables used, in order

    def replace(match: re.Match[str]) -> str:
        nonlocal missing
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if not _VAR_NAME.fullmatch(name):
            raise YamlError(line, f'invalid environment variable reference "${{{name}}}"')
        used[name] = None
        if name in environ:
            return environ[name]
        if unset is None:
            raise YamlError(line, f'environment variable "{name}" is not set')
        unset.add(name)
        missing = True
        return match.group(0)

    if "$" not in text:
        return text
    expanded = _REFERENCE.sub(replace, text)
    if not used:
        return expanded
    marked = (UnsetVariable if missing else _FromEnvironment)(expanded)
    marked.variables = tuple(used)
    return marked


def _unmarked(value: Any) -> tuple[Any, tuple[str, ...]]:
    """A constructed value as its container keeps it, and the variables it was made with.
    An UnsetVariable stays one (the checks tell it apart); other strings become plain."""
    if not isinstance(value, _FromEnvironment):
        return value, ()
    kept = value if isinstance(value, UnsetVariable) else str.__str__(value)
    return kept, value.variables


def _own_and_merged_pairs(loader: Any, node: MappingNode) -> tuple[list[Any], list[Any]]:
    # `<<: *anchor` merges are legal YAML; keys they bring in may be overridden by the mapping's
    # own keys, so only the mapping's own keys are checked for duplicates.
    own = [(k, v) for k, v in node.value if k.tag != _MERGE_TAG]
    loader.flatten_mapping(node)
    merged = node.value[: len(node.value) - len(own)]
    return own, merged


def _construct_mapping(loader: Any, node: MappingNode) -> LineDict:
    own, merged = _own_and_merged_pairs(loader, node)
    data = LineDict()
    data.line = _line(node)
    data.key_lines = {}
    variables: dict[str, tuple[str, ...]] = {}
    for key_node, value_node in merged:
        key = _key(key_node)
        variables[key] = _put(loader, data, key, key_node, value_node)
    seen: set[Any] = set()
    for key_node, value_node in own:
        key = _key(key_node)
        if key in seen:
            raise YamlError(_line(key_node), f'duplicate key "{key}"')
        seen.add(key)
        variables[key] = _put(loader, data, key, key_node, value_node)
    data.key_variables = variables
    return data


def _put(
    loader: Any, data: LineDict, key: Any, key_node: Node, value_node: Node
) -> tuple[str, ...]:
    """Set ``key`` and its line; return the environment variables its value was made with."""
    data[key], variables = _unmarked(loader.construct_object(value_node, deep=True))
    data.key_lines[key] = _line(key_node)
    return variables


def _key(node: Node) -> Any:
    if not isinstance(node, ScalarNode):
        raise YamlError(_line(node), "mapping keys must be plain values, not lists or mappings")
    # Keys are taken as written (no ${VAR} expansion): ids are part of the file's structure.
    return node.value


def _construct_sequence(loader: Any, node: Node) -> LineList:
    items = [_unmarked(loader.construct_object(item, deep=True)) for item in node.value]
    data = LineList(value for value, _ in items)
    data.line = _line(node)
    data.item_lines = [_line(item) for item in node.value]
    data.item_variables = tuple(variables for _, variables in items)
    return data


def _loader_class(environ: Mapping[str, str], unset: set[str] | None) -> type[yaml.SafeLoader]:
    def construct_str(loader: Any, node: ScalarNode) -> str:
        return _expand(loader.construct_scalar(node), _line(node), environ, unset)

    class Loader(_BaseLoader):  # type: ignore[valid-type,misc]
        pass

    Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
    Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
    Loader.add_constructor(_STR_TAG, construct_str)
    return Loader


def load_yaml(text: str, environ: Mapping[str, str], unset: set[str] | None = None) -> Any:
    """Load one YAML document; raise :class:`YamlError` (with its line) for any problem.

    With `unset`, a variable missing from `environ` is not an error: its name is added there
    and the value keeps the reference, as an :class:`UnsetVariable`.
    """
    try:
        return yaml.load(text, Loader=_loader_class(environ, unset))  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlError(line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(1, f"invalid YAML: {exc}") from None
