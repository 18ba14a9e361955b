"""Extension declarations (core0/boot/extensions.py): what a table may say, how values fill
the argument templates."""

from __future__ import annotations

from typing import Any

import pytest

from core0.boot.extensions import argv_of, check, text_of
from core0.errors import BadRequest
from core0.schema import parse


def _argv(table: dict[str, Any], args: dict[str, Any]) -> list[str]:
    ext = check("t.x", table)
    a = parse(ext.schema, args)
    return argv_of(ext, {k: getattr(a, k) for k in ext.keys})


def test_placeholders_and_literal_braces() -> None:
    table = {"binary": "p", "args": ["{a}", "x={a},{b}", '{"json": 1}', "{not-a-key}"]}
    assert _argv(table, {"a": "1", "b": 2}) == ["p", "1", "x=1,2", '{"json": 1}', "{not-a-key}"]
    assert check("t.x", table).keys == ("a", "b")


def test_values_as_0core_wrote_them() -> None:
    assert [text_of(v) for v in (True, False, 3, 2.0, 2.5, "s")] == [
        "true", "false", "3", "2", "2.5", "s"]


@pytest.mark.parametrize("args", [
    {"a": "-x", "b": "y"},  # begins an element
    {"a": "", "b": "-y"},  # begins it after an empty value
    {"a": "x\0", "b": "y"},
])
def test_refused_values(args: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        _argv({"binary": "p", "args": ["{a}{b}"]}, args)


def test_a_dash_of_the_template_or_inside_an_element_is_fine() -> None:
    assert _argv({"binary": "p", "args": ["--{a}", "x{b}"]}, {"a": "-v", "b": "-y"}) == [
        "p", "---v", "x-y"]


@pytest.mark.parametrize("name, table", [
    ("bad name", {"binary": "p"}),
    ("../x", {"binary": "p"}),
    ("t.x", {"binary": ""}),
    ("t.x", {"binary": "p", "nope": 1}),
    ("t.x", {"binary": "p", "args": "{a}"}),
    ("t.x", {"binary": "p", "args": ["{stdin}"]}),
    ("t.x", {"binary": "p", "env": {"A-B": "x"}}),
    ("t.x", {"binary": "p", "role": "root"}),
    ("t.x", {"binary": "p", "args": ["{a}"], "patterns": {"b": "x"}}),
    ("t.x", {"binary": "p", "args": ["{a}"], "patterns": {"a": "("}}),
    ("t.x", {"binary": "p", "args": ["{from}"]}),  # a Python keyword
    ("t.x", {"binary": "p", "args": ["{__init__}"]}),
    ("t.x", {"binary": "p", "args": ["{parse}"]}),  # Schema's own
])
def test_refused_declarations(name: str, table: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        check(name, table)


def test_patterns_apply_to_the_text() -> None:
    table = {"binary": "p", "args": ["{n}"], "patterns": {"n": "[0-9]+"}}
    assert _argv(table, {"n": 12}) == ["p", "12"]
    with pytest.raises(BadRequest, match="arguments.n"):
        _argv(table, {"n": "1;x"})
