"""The one command registry.

Every node function is a command registered here with ``@command``::

    @command("info.cpu", role=Role.READ_ONLY, inline=True)
    async def cpu(ctx: Context, args: NoArgs) -> list[dict[str, Any]]:
        '''CPU model, frequency and flags per logical CPU.'''

The registry gives the dispatcher the handler, the argument schema, the least role that may run
it and whether it may run inline (quick and free of side effects). ``core.commands`` and
``docs/commands.md`` are generated from it, so the docstring is the command's reference.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from core0.schema import NoArgs, Pattern, Schema, json_schema

if TYPE_CHECKING:
    from core0.context import Context

__all__ = ["CommandSpec", "Role", "alias", "aliases", "command", "get", "all_commands",
           "load_all", "set_extensions"]


class Role(enum.IntEnum):
    """Roles of queues, least to most powerful. A queue may run commands whose role <= its own."""

    READ_ONLY = 1  #: info, lists, gets
    OPERATOR = 2  #: containers, VMs, storage, network: everything but raw process execution
    ADMIN = 3  #: everything, including core.system, bash, filesystem writes

    @classmethod
    def parse(cls, value: str) -> Role:
        v = value.strip().lower().replace("-", "_")
        aliases = {"readonly": "read_only", "ro": "read_only"}
        v = aliases.get(v, v)
        try:
            return cls[v.upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {value!r} (expected admin, operator or read-only)"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    def sees(self, scope: str | None, owner: Role, owner_scope: str | None) -> bool:
        """May a caller of this role, from a queue of id scope ``scope`` (None: not a private
        queue), see and act on what a queue of role ``owner`` and scope ``owner_scope`` made
        (a job, a container's secrets)? At least the owner's role; below admin, a private
        queue's things only from that queue, and a private queue's caller only its own."""
        if self < owner:
            return False
        return self >= Role.ADMIN or owner_scope == scope


#: a role name as :meth:`Role.parse` reads it (any case; read-only, read_only, readonly, ro)
ROLE_NAME = Pattern(r"(?i)\s*(admin|operator|read[-_]?only|ro)\s*",
                    what="a known role (admin, operator or read-only)")

Handler = Callable[["Context", Any], Awaitable[Any]]
F = TypeVar("F", bound=Handler)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Handler
    args: type[Schema]
    role: Role
    inline: bool
    doc: str
    #: used by core0 itself only; refused (UNKNOWN_CMD) when it comes over the bus
    internal: bool = False
    #: the handler only builds a ProcessSpec, with no side effect: it runs while the pickup
    #: is in flight, so the process starts as soon as the pickup is confirmed
    builds_process: bool = False
    #: the canonical name when this name is an alias of it (same handler, schema and role)
    alias_of: str | None = None
    #: a run cut short (the dispatcher killed or stopped while it ran) may run again: the
    #: command changes nothing, or only builds a process (whose start the engine records).
    #: Otherwise it is answered :class:`~core0.errors.Interrupted` and never run twice.
    rerun: bool = False
    #: a stand-in (0-core's commands core0 answers 501): a command declared in the
    #: configuration under its name takes its place (:func:`set_extensions`)
    replaceable: bool = False

    def describe(self) -> dict[str, Any]:
        """The public description (core.commands)."""
        return {
            "name": self.name,
            "role": self.role.label,
            "inline": self.inline,
            "internal": self.internal,
            "rerun": self.rerun,
            "doc": self.doc,
            "arguments": json_schema(self.args),
        }


_REGISTRY: dict[str, CommandSpec] = {}


def command(
    name: str,
    args: type[Schema] = NoArgs,
    *,
    role: Role = Role.OPERATOR,
    inline: bool = False,
    internal: bool = False,
    builds_process: bool = False,
    rerun: bool | None = None,
    replaceable: bool = False,
) -> Callable[[F], F]:
    """Register ``handler`` as command ``name``.

    ``inline`` marks a command that is quick and has no side effects (it may run on the
    dispatcher's pop loop and be answered in the same Redis round trip as its pickup).
    ``builds_process``: the handler only returns a :class:`~core0.context.ProcessSpec` and
    touches nothing (see :attr:`CommandSpec.builds_process`).
    ``rerun`` (see :attr:`CommandSpec.rerun`): by default, what is inline, builds a process or
    is read-only; say ``rerun=True`` for another command that changes nothing.
    ``replaceable``: see :attr:`CommandSpec.replaceable`.
    """
    again = rerun if rerun is not None else (inline or builds_process
                                              or role is Role.READ_ONLY)

    def deco(fn: F) -> F:
        _free(name)
        is_async = inspect.iscoroutinefunction(fn)
        if not is_async:
            raise TypeError(f"handler of {name!r} must be async")
        doc = inspect.cleandoc(fn.__doc__ or "")
        if not doc:
            raise TypeError(f"handler of {name!r} needs a docstring (it is the reference)")
        # stacked @command decorators: the outer one (registered last) is the canonical name
        for other in [s for s in _REGISTRY.values() if s.handler is fn]:
            _REGISTRY[other.name] = dataclasses.replace(other, alias_of=name)
        _REGISTRY[name] = CommandSpec(name, fn, args, role, inline, doc, internal,
                                      builds_process, rerun=again, replaceable=replaceable)
        return fn

    return deco


def alias(name: str, of: str) -> None:
    """Register ``name`` as an alias of the registered command ``of``: the same handler,
    schema, role and flags (the dispatcher and the role checks see no difference); the
    reference lists it once, as a line pointing at ``of``."""
    target = _REGISTRY.get(of)
    if target is None:
        raise RuntimeError(f"alias {name!r}: no command {of!r}")
    _free(name)
    canonical = target.alias_of or of
    _REGISTRY[name] = dataclasses.replace(_REGISTRY[canonical], name=name, alias_of=canonical)


def _free(name: str) -> None:
    if name in _REGISTRY:
        raise RuntimeError(f"command {name!r} registered twice")


#: the commands the configuration declares (0-core's extensions) → the stand-in each
#: replaced (None: the name was free)
_EXTENSIONS: dict[str, CommandSpec | None] = {}


def set_extensions(specs: list[CommandSpec]) -> list[str]:
    """Make ``specs`` the commands declared in the configuration (core0.boot.extensions),
    in place of those set before (a reload: a stand-in an earlier one replaced is back if
    no spec has its name now); returns the names refused because a built-in command (or
    its alias) has them: a declaration replaces only a :attr:`CommandSpec.replaceable`
    stand-in."""
    for name, replaced in _EXTENSIONS.items():
        if replaced is None:
            _REGISTRY.pop(name, None)
        else:
            _REGISTRY[name] = replaced
    _EXTENSIONS.clear()
    refused = []
    for spec in specs:
        current = _REGISTRY.get(spec.name)
        if current is not None and not current.replaceable:
            refused.append(spec.name)
            continue
        _EXTENSIONS[spec.name] = current
        _REGISTRY[spec.name] = spec
    return refused


def get(name: str) -> CommandSpec | None:
    return _REGISTRY.get(name)


def all_commands() -> list[CommandSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def aliases() -> dict[str, list[str]]:
    """Aliases by canonical name, as ``{canonical: [aliases, sorted]}``: those made with
    :func:`alias`, and stacked ``@command`` decorators (the outermost, first in the source,
    is the canonical name; decorators register bottom-up)."""
    out: dict[str, list[str]] = {}
    for name in sorted(_REGISTRY):
        of = _REGISTRY[name].alias_of
        if of is not None:
            out.setdefault(of, []).append(name)
    return out


_loaded = False


def load_all() -> None:
    """Import every module of ``core0.commands`` (each registers its domain)."""
    global _loaded
    if _loaded:
        return
    import core0.commands as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    _loaded = True
