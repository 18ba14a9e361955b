"""YAML for cloud-config user-data: PyYAML's pure-Python SafeLoader, made stricter.

Refused with :class:`YAMLError` (line number included): anchors and aliases, explicit tags
(``!!python/…``, ``!!binary``, ``!foo``…), duplicate keys, several documents, non-scalar
keys, nesting deeper than :data:`MAX_DEPTH`. Plain scalars resolve as YAML 1.1 does in PyYAML
(null/~, true/false/yes/no/on/off, ``0644`` octal, floats), except that timestamps, sexagesimal
numbers (``1:20``), ``.nan``, ``=`` and the merge key ``<<`` stay plain strings. Nothing is
constructed beyond dict/list/str/int/float/bool/None.

The C loader (libyaml) is not used: the image ships PyYAML's pure-Python part only.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode

__all__ = ["MAX_DEPTH", "YAMLError", "loads"]

#: deepest nesting of sequences and mappings accepted
MAX_DEPTH = 64

_INT = re.compile(r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF))$""", re.X)
_DROPPED = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value", "tag:yaml.org,2002:merge",
            "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


class YAMLError(ValueError):
    """The text is not YAML, or uses something this loader refuses."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}: " if mark is not None else ""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases, explicit tags, duplicate keys or deep nesting."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise YAMLError(f"{_where(event.start_mark)}aliases are not supported")
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise YAMLError(f"{_where(event.start_mark)}anchors are not supported")
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag is not None:
            raise YAMLError(f"{_where(event.start_mark)}tags are not supported: {event.tag}")
        if isinstance(event, CollectionStartEvent):
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise YAMLError(f"{_where(event.start_mark)}nested deeper than {MAX_DEPTH}")
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                raise YAMLError(f"{_where(key_node.start_mark)}complex keys are not supported")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise YAMLError(f"{_where(key_node.start_mark)}duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def loads(text: str) -> Any:
    """Parse one YAML document (YAMLError when it is not YAML or uses a refused feature)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YAMLError(str(e).replace("\n", " ")) from None
    except RecursionError:
        raise YAMLError(f"nested deeper than {MAX_DEPTH}") from None
