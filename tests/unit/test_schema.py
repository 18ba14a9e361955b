"""Strict argument schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest

from core0.errors import BadRequest
from core0.schema import (
    Doc,
    Len,
    NoArgs,
    Pattern,
    Range,
    Schema,
    Secret,
    check_field,
    json_schema,
    parse,
)


@dataclass(frozen=True)
class Inner(Schema):
    port: Annotated[int, Range(1, 65535)]


@dataclass(frozen=True)
class Args(Schema):
    name: Annotated[str, Doc("a name"), Pattern(r"[a-z]+")]
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    items: Annotated[list[str], Len(0, 3)] = field(default_factory=list)
    env: dict[str, str] | None = None
    inner: Inner | None = None
    anything: Any = None


def test_defaults_and_null_means_unset() -> None:
    a = parse(Args, {"name": "x", "count": None, "env": None})
    assert a.count == 1 and a.env is None


@dataclass(frozen=True)
class AllDefaults(Schema):
    count: int = 1
    items: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count > 5:
            raise ValueError("count above 5")


@dataclass(frozen=True)
class LateDefault(Schema):
    count: int = 9  # its default breaks its own rule: the empty form is checked too

    def __post_init__(self) -> None:
        if self.count > 5:
            raise ValueError("count above 5")


def test_empty_arguments_take_the_defaults_and_keep_every_check() -> None:
    """No arguments (absent, null or {}) build the defaults without walking the fields; what
    the fields require still holds, and only an object is an object."""
    for empty in (None, {}):
        assert parse(AllDefaults, empty) == AllDefaults() == parse(AllDefaults, {"count": None})
        assert parse(NoArgs, empty) == NoArgs()
    with pytest.raises(BadRequest, match="arguments.name: required"):
        parse(Args, {})
    with pytest.raises(BadRequest, match="count above 5"):
        parse(LateDefault, {})
    for not_object in ([], "", 0, False):
        with pytest.raises(BadRequest, match="expected an object"):
            parse(AllDefaults, not_object)


@pytest.mark.parametrize("data,path", [
    ({}, "arguments.name"),
    ({"name": "x", "bogus": 1}, "arguments.bogus"),
    ({"name": 5}, "arguments.name"),
    ({"name": "X"}, "arguments.name"),
    ({"name": "x", "count": "1"}, "arguments.count"),
    ({"name": "x", "count": True}, "arguments.count"),
    ({"name": "x", "count": 1.0}, "arguments.count"),
    ({"name": "x", "flag": 1}, "arguments.flag"),
    ({"name": "x", "ratio": "0.1"}, "arguments.ratio"),
    ({"name": "x", "mode": "c"}, "arguments.mode"),
    ({"name": "x", "items": "a"}, "arguments.items"),
    ({"name": "x", "items": [1]}, "arguments.items[0]"),
    ({"name": "x", "items": ["a"] * 4}, "arguments.items"),
    ({"name": "x", "env": {"a": 1}}, "arguments.env.a"),
    ({"name": "x", "inner": {"port": 0}}, "arguments.inner.port"),
    ({"name": "x", "inner": {"port": 1, "x": 2}}, "arguments.inner.x"),
])
def test_strict_errors_name_the_field(data: dict, path: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse(Args, data)
    assert path in str(e.value)


def test_int_accepted_for_float_and_nested() -> None:
    a = parse(Args, {"name": "x", "ratio": 1, "inner": {"port": 80}, "anything": [1, {"a": 2}]})
    assert a.ratio == 1.0 and a.inner == Inner(80)


def test_json_schema() -> None:
    s = json_schema(Args)
    assert s["required"] == ["name"] and s["additionalProperties"] is False
    assert s["properties"]["name"]["pattern"] == "[a-z]+"
    assert s["properties"]["mode"]["enum"] == ["a", "b"]
    assert s["properties"]["inner"]["properties"]["port"]["maximum"] == 65535


def test_every_command_has_docstring_and_schema() -> None:
    from core0 import registry

    registry.load_all()
    specs = registry.all_commands()
    assert len(specs) > 20
    for spec in specs:
        assert spec.doc and json_schema(spec.args)["type"] == "object"


@dataclass(frozen=True)
class TextArgs(Schema):
    flag: bool = False
    count: Annotated[int, Range(0, 10)] = 0
    ratio: float = 0.0
    names: list[str] = field(default_factory=list)
    caps: dict[str, int] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"
    level: Literal[1, 2] = 1
    maybe: int | None = None
    name: str = ""
    inner: Inner | None = None


def test_text_values_are_converted_then_checked() -> None:
    a = parse(TextArgs, {"flag": "yes", "count": "0x5", "ratio": "1.5", "names": "x,,y",
                         "caps": "a:1,b:2", "mode": "b", "level": "2", "maybe": "7",
                         "name": "0x5"}, text=True)
    assert a == TextArgs(flag=True, count=5, ratio=1.5, names=["x", "y"], caps={"a": 1, "b": 2},
                         mode="b", level=2, maybe=7, name="0x5")
    assert parse(TextArgs, {"flag": ""}, text=True).flag is True  # a bare flag
    assert parse(TextArgs, {"flag": "Off"}, text=True).flag is False
    assert TextArgs.parse({"count": "3"}, text=True).count == 3


@pytest.mark.parametrize("data,message", [
    ({"flag": "maybe"}, "arguments.flag: expected a boolean, got 'maybe'"),
    ({"count": "ten"}, "arguments.count: expected an integer, got 'ten'"),
    ({"count": "11"}, "arguments.count: must be <= 10"),
    ({"ratio": "fast"}, "arguments.ratio: expected a number"),
    ({"caps": "a:1,b"}, "arguments.caps: expected key:value items, got 'b'"),
    ({"caps": "a:x"}, "arguments.caps.a: expected an integer, got 'x'"),
    ({"mode": "c"}, "arguments.mode: must be one of"),
    ({"level": "3"}, "arguments.level: must be one of"),
    ({"inner": "x"}, "arguments.inner: cannot be set from text"),
    ({"nosuch": "1"}, "arguments.nosuch: unknown argument"),
])
def test_text_errors_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse(TextArgs, data, text=True)


def test_strings_are_not_converted_without_text() -> None:
    with pytest.raises(BadRequest, match="expected an integer, got string"):
        parse(TextArgs, {"count": "3"})
    with pytest.raises(BadRequest, match="expected a boolean"):
        parse(TextArgs, {"flag": "yes"})


@dataclass(frozen=True)
class Ids(Schema):
    ids: list[Annotated[str, Pattern(r"[a-z]+", what="an id")]] | Annotated[
        str, Pattern(r"[a-z]+", what="an id")] = "x"
    port: int | str | None = None


@pytest.mark.parametrize("data,message", [
    ({"ids": "a b"}, "arguments.ids: 'a b' is not an id"),
    ({"ids": ["a", "B"]}, "arguments.ids[1]: 'B' is not an id"),
    ({"ids": 3}, "no variant matches: arguments.ids: expected an array, got integer; "
                 "arguments.ids: expected a string, got integer"),
    ({"port": 1.5}, "no variant matches"),
])
def test_union_errors_come_from_the_variant_of_the_values_kind(data: dict[str, Any],
                                                               message: str) -> None:
    """``list[T] | T``: a string is judged as T, a list as list[T]; a value of neither kind
    gets every variant's complaint. A Pattern's ``what`` names the rule in the message."""
    with pytest.raises(BadRequest) as e:
        parse(Ids, data)
    assert message in e.value.message
    assert parse(Ids, {"ids": ["a", "b"]}).ids == ["a", "b"]
    assert parse(Ids, {"ids": "ab"}).ids == "ab"


@dataclass(frozen=True)
class Login(Schema):
    password: Annotated[str, Len(8), Pattern(r"[^\n]*", what="one line"), Secret()]


def test_secret_values_are_never_quoted() -> None:
    with pytest.raises(BadRequest) as e:
        parse(Login, {"password": "hunter2-long\nsecond"})
    assert e.value.message == "arguments.password: the value is not one line"
    with pytest.raises(BadRequest) as e:
        check_field(Login, "password", "hunter2")
    assert e.value.message == "password: length must be >= 8"
    assert check_field(Login, "password", "long enough") == "long enough"
