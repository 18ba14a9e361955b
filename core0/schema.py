"""Strict schemas: command arguments, and the files core0 reads (service specs, cloud-config).

A schema is a frozen dataclass deriving from :class:`Schema`. Field types may be ``str``,
``int``, ``float``, ``bool``, ``Any``, ``list[T]``, ``dict[str, T]``, ``Literal[...]``,
``T | None``, a nested Schema, or ``Annotated[T, ...constraints]`` with the constraints below.

Validation is strict: unknown fields are refused, values are never coerced (``"1"`` is not an
int, ``true`` is not an int), and ``null`` means "not set" (the field's default applies, or
the field is reported missing). Every error names the field path, e.g. ``arguments.env.PATH``.

Text sources (a kernel command line, environment variables) give every value as a string:
``parse(cls, data, text=True)`` converts a string to the field's type first — booleans from
``1 true yes on`` / ``0 false no off`` (and ``""``, a bare flag, is true), integers with
``int(s, 0)`` (``0x10`` too), numbers with ``float``, ``list[T]`` from ``a,b,c`` and
``dict[str, T]`` from ``k:v,k2:v2`` (each item converted in turn) — then checks it exactly as
any other value (constraints, literals). Strings that do not convert are errors naming the field.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from core0.errors import BadRequest

__all__ = [
    "Doc",
    "Len",
    "NoArgs",
    "Pattern",
    "Range",
    "Schema",
    "Secret",
    "check",
    "check_field",
    "parse",
    "json_schema",
    "ID",
    "NAME",
    "SAFE_TEXT",
]

S = TypeVar("S", bound="Schema")


@dataclass(frozen=True)
class Doc:
    """Human description of a field (shown in core.commands and docs/commands.md)."""

    text: str


@dataclass(frozen=True)
class Pattern:
    """The string must fully match this regular expression. ``what`` names what it is in
    errors (``'x y' is not a service id``); without it the error quotes the regex."""

    regex: str
    what: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", re.compile(self.regex))

    def check(self, v: str) -> bool:
        return bool(self._re.fullmatch(v))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Secret:
    """The value is a secret (a password): errors never quote it."""


@dataclass(frozen=True)
class Range:
    """Inclusive numeric bounds."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Len:
    """Inclusive length bounds for strings, lists and objects."""

    min: int = 0
    max: int | None = None


#: An object name: letters, digits, ``_ . -``, not starting with ``-`` or ``.``.
NAME = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: A job id (the protocol's id rule).
ID = Pattern(r"[A-Za-z0-9_.:-]{1,128}")
#: Text without NUL bytes (for anything handed to the kernel or a program).
SAFE_TEXT = Pattern(r"[^\x00]*")


class Schema:
    """Base class of argument schemas. Subclasses must be dataclasses."""

    __schema_fields__: ClassVar[dict[str, tuple[Any, tuple[Any, ...], dataclasses.Field[Any]]]]
    #: what an unknown field is called in errors ("argument" of a command, "key" of a file)
    __unknown__: ClassVar[str] = "argument"

    @classmethod
    def parse(cls: type[S], data: Any, path: str = "arguments", *, text: bool = False) -> S:
        return parse(cls, data, path, text=text)


@dataclass(frozen=True)
class NoArgs(Schema):
    """No arguments."""


def _fields(cls: type[Schema]) -> dict[str, tuple[Any, tuple[Any, ...], dataclasses.Field[Any]]]:
    cached = cls.__dict__.get("__schema_fields__")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, tuple[Any, tuple[Any, ...], dataclasses.Field[Any]]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        extras: tuple[Any, ...] = ()
        if get_origin(tp) is typing.Annotated:
            tp, *rest = get_args(tp)
            extras = tuple(rest)
        out[f.name] = (tp, extras, f)
    cls.__schema_fields__ = out
    return out


def _all_defaulted(cls: type[Schema]) -> bool:
    """True when every field of ``cls`` has a default (cached on the class)."""
    cached = cls.__dict__.get("__schema_all_defaulted__")
    if cached is None:
        cached = all(_has_default(f) for _, _, f in _fields(cls).values())
        cls.__schema_all_defaulted__ = cached  # type: ignore[attr-defined]
    return bool(cached)


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def parse(cls: type[S], data: Any, path: str = "arguments", *, text: bool = False) -> S:
    """Check ``data`` against schema ``cls`` and build it. Raises BadRequest naming the field.

    ``text=True``: string values are first converted to their field's type (see the module
    docstring), for values that come from a command line or the environment."""
    if not data:
        if data is None or data == {}:
            data = {}
            if _all_defaulted(cls):  # nothing to check: every field takes its default
                try:
                    return cls()
                except BadRequest:
                    raise
                except (TypeError, ValueError) as e:
                    raise BadRequest(f"{path}: {e}", field=path) from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: expected an object, got {_tname(data)}", field=path)
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise BadRequest(f"{path}.{key}: unknown {cls.__unknown__}", field=f"{path}.{key}")
    kwargs: dict[str, Any] = {}
    for name, (tp, extras, f) in fields.items():
        value = data.get(name)
        fpath = f"{path}.{name}"
        if value is None:
            if _has_default(f) or _is_optional(tp):
                continue
            raise BadRequest(f"{fpath}: required", field=fpath)
        kwargs[name] = _check(tp, extras, value, fpath, text)
    try:
        return cls(**kwargs)
    except BadRequest:
        raise
    except (TypeError, ValueError) as e:
        raise BadRequest(f"{path}: {e}", field=path) from None


def check_field(cls: type[Schema], name: str, value: Any, path: str | None = None) -> Any:
    """Check ``value`` against the field ``name`` of ``cls`` alone, for a document applied key
    by key (a bad key fails only its own part). ``null`` is an error here: the caller holds
    the key. Errors name ``path`` (default: the field's name)."""
    tp, extras, _ = _fields(cls)[name]
    return _check(tp, extras, value, path or name)


def check(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against one field type (``Annotated`` constraints included), for the
    items of a list checked one by one (a bad item fails only itself)."""
    return _check(tp, (), value, path)


def _is_optional(tp: Any) -> bool:
    return _is_union(tp) and type(None) in get_args(tp)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _check(tp: Any, extras: tuple[Any, ...], v: Any, path: str, text: bool = False) -> Any:
    if get_origin(tp) is typing.Annotated:
        tp, *more = get_args(tp)
        extras = extras + tuple(more)
    if text and isinstance(v, str):
        v = _from_text(tp, v, path)
    v = _check_type(tp, v, path, text)
    secret = any(isinstance(c, Secret) for c in extras)
    for c in extras:
        if isinstance(c, Pattern):
            if not isinstance(v, str) or not c.check(v):
                why = f"is not {c.what}" if c.what else f"does not match {c.regex}"
                shown = "the value" if secret else f"{v!r:.80}"
                raise BadRequest(f"{path}: {shown} {why}", field=path)
        elif isinstance(c, Range):
            if c.min is not None and v < c.min:
                raise BadRequest(f"{path}: must be >= {c.min:g}", field=path)
            if c.max is not None and v > c.max:
                raise BadRequest(f"{path}: must be <= {c.max:g}", field=path)
        elif isinstance(c, Len):
            if len(v) < c.min:
                raise BadRequest(f"{path}: length must be >= {c.min}", field=path)
            if c.max is not None and len(v) > c.max:
                raise BadRequest(f"{path}: length must be <= {c.max}", field=path)
    return v


_TRUE = ("1", "true", "yes", "on", "")
_FALSE = ("0", "false", "no", "off")


def _from_text(tp: Any, raw: str, path: str) -> Any:
    """The value a string stands for, by the field's type (unions and literals convert in
    :func:`_check_type`, member by member); a string that does not convert is an error."""
    origin = get_origin(tp)
    if tp is bool:
        low = raw.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise BadRequest(f"{path}: expected a boolean, got {raw!r:.80}", field=path)
    if tp is int:
        try:
            return int(raw.strip(), 0)
        except ValueError:
            raise BadRequest(f"{path}: expected an integer, got {raw!r:.80}", field=path) from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise BadRequest(f"{path}: expected a number, got {raw!r:.80}", field=path) from None
    if origin is list:
        return [x for x in raw.split(",") if x]
    if origin is dict:
        out: dict[str, str] = {}
        for item in raw.split(","):
            if item:
                k, sep, val = item.partition(":")
                if not sep:
                    raise BadRequest(f"{path}: expected key:value items, got {item!r:.80}",
                                     field=path)
                out[k] = val
        return out
    if isinstance(tp, type) and issubclass(tp, Schema):
        raise BadRequest(f"{path}: cannot be set from text", field=path)
    return raw


def _check_type(tp: Any, v: Any, path: str, text: bool = False) -> Any:
    if tp is Any:
        return v
    origin = get_origin(tp)
    if _is_union(tp):
        members = [a for a in get_args(tp) if a is not type(None)]
        errors = []
        for m in members:
            try:
                return _check(m, (), v, path, text)
            except BadRequest as e:
                errors.append((m, str(e)))
        # the one variant of the value's kind (``list[str] | str`` given a string) says best
        # what is wrong; otherwise every variant's complaint
        fits = [msg for m, msg in errors if _same_kind(m, v)]
        if len(fits) == 1:
            raise BadRequest(fits[0], field=path)
        raise BadRequest(errors[0][1] if len(errors) == 1 else f"{path}: no variant matches: "
                         + "; ".join(msg for _, msg in errors), field=path)
    if origin is Literal:
        choices = get_args(tp)
        if text and isinstance(v, str) and v not in choices:
            v = next((c for c in choices if not isinstance(c, str) and str(c).lower() == v.lower()),
                     v)
        if v not in choices or isinstance(v, bool) != any(isinstance(c, bool) for c in choices):
            raise BadRequest(
                f"{path}: must be one of {', '.join(repr(c) for c in choices)}", field=path
            )
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise BadRequest(f"{path}: expected a boolean, got {_tname(v)}", field=path)
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRequest(f"{path}: expected an integer, got {_tname(v)}", field=path)
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(f"{path}: expected a number, got {_tname(v)}", field=path)
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise BadRequest(f"{path}: expected a string, got {_tname(v)}", field=path)
        return v
    if origin is list:
        if not isinstance(v, list):
            raise BadRequest(f"{path}: expected an array, got {_tname(v)}", field=path)
        (item_tp,) = get_args(tp) or (Any,)
        return [_check(item_tp, (), item, f"{path}[{i}]", text) for i, item in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise BadRequest(f"{path}: expected an object, got {_tname(v)}", field=path)
        _, val_tp = get_args(tp) or (str, Any)
        return {k: _check(val_tp, (), item, f"{path}.{k}", text) for k, item in v.items()}
    if isinstance(tp, type) and issubclass(tp, Schema):
        return parse(tp, v, path, text=text)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in a schema, not input


def _same_kind(tp: Any, v: Any) -> bool:
    """Whether ``v`` has the JSON kind of type ``tp`` (whatever its constraints)."""
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    origin = get_origin(tp)
    if _is_union(tp):
        return any(_same_kind(m, v) for m in get_args(tp))
    if origin is Literal:
        return any(type(c) is type(v) for c in get_args(tp))
    if tp in (bool, str):
        return type(v) is tp
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if origin is list:
        return isinstance(v, list)
    if origin is dict or (isinstance(tp, type) and issubclass(tp, Schema)):
        return isinstance(v, dict)
    return tp is Any


# ---------------------------------------------------------------- JSON schema


def json_schema(cls: type[Schema]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12 subset) describing ``cls``."""
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, (tp, extras, f) in _fields(cls).items():
        props[name] = _type_schema(tp, extras)
        if not _has_default(f) and not _is_optional(tp):
            required.append(name)
        elif f.default is not dataclasses.MISSING and f.default is not None:
            props[name]["default"] = f.default
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _type_schema(tp: Any, extras: tuple[Any, ...] = ()) -> dict[str, Any]:
    if get_origin(tp) is typing.Annotated:
        tp, *more = get_args(tp)
        extras = extras + tuple(more)
    s: dict[str, Any]
    origin = get_origin(tp)
    if tp is Any:
        s = {}
    elif _is_union(tp):
        members = [a for a in get_args(tp) if a is not type(None)]
        s = _type_schema(members[0]) if len(members) == 1 else {
            "anyOf": [_type_schema(m) for m in members]
        }
    elif origin is Literal:
        s = {"enum": list(get_args(tp))}
    elif tp is bool:
        s = {"type": "boolean"}
    elif tp is int:
        s = {"type": "integer"}
    elif tp is float:
        s = {"type": "number"}
    elif tp is str:
        s = {"type": "string"}
    elif origin is list:
        (item,) = get_args(tp) or (Any,)
        s = {"type": "array", "items": _type_schema(item)}
    elif origin is dict:
        _, val = get_args(tp) or (str, Any)
        s = {"type": "object", "additionalProperties": _type_schema(val)}
    elif isinstance(tp, type) and issubclass(tp, Schema):
        s = json_schema(tp)
    else:
        s = {}
    for c in extras:
        if isinstance(c, Doc):
            s["description"] = c.text
        elif isinstance(c, Pattern):
            s["pattern"] = c.regex
        elif isinstance(c, Range):
            if c.min is not None:
                s["minimum"] = c.min
            if c.max is not None:
                s["maximum"] = c.max
        elif isinstance(c, Len):
            key = "Length" if s.get("type") == "string" else (
                "Items" if s.get("type") == "array" else "Properties")
            s[f"min{key}"] = c.min
            if c.max is not None:
                s[f"max{key}"] = c.max
    return s
