"""0-core's extensions: commands declared in the configuration, each a program run with
arguments filled from the command's.

A ``[extension."<name>"]`` table (in the main file or any include file, as in 0-core)::

    [extension."disk.wipe"]
    binary = "wipefs"                          # a path, or a name looked up in PATH
    args = ["--all", "/dev/{disk}"]            # {key}: the command's argument ``key``
    cwd = "/"                                  # optional
    env = {LC_ALL = "C"}                       # optional, added to the job's environment
    # core0's own keys, all optional:
    role = "admin"                             # the least role that may run it (admin)
    doc = "Erase every signature of a disk."   # its reference (core.commands)
    patterns = {disk = "[a-z]+[0-9]*"}         # a value must fully match its pattern

makes ``disk.wipe {disk}`` a process job like ``core.system``'s (output, ``20:::`` data,
``max_time``, kill, adoption after a dispatcher restart), whose ``stdin`` argument, if given,
is the program's standard input (as in 0-core).

Where core0 is stricter than 0-core, and why:

* Each ``{key}`` is an argument of the command's schema: required, a string, number or
  boolean (written as 0-core writes them: ``true``, ``3``, ``2.5``), never with a NUL byte;
  an argument no ``{key}`` names is refused (400) — 0-core left a missing key's ``{key}`` in
  the argv and ignored unknown ones.
* A value may not start with ``-`` where it begins an argv element (400): a value never
  turns into an option of the program. A template that wants one writes it (``"--{flag}"``
  is refused by no rule: the element then starts with the template's own ``-``).
* Values are never given to a shell: an element of ``args`` is one argv element whatever the
  value holds. (A template that calls ``sh -c`` with a ``{key}`` inside the script gives that
  value to the shell: that is the template author's choice; pass it as a separate element,
  ``["-c", "… \\"$1\\" …", "sh", "{key}"]``, instead.)
* Extensions run as root, so they are admin-only unless the table says otherwise.
* A name that a built-in command has is refused (logged): an extension never replaces one,
  but for the 501 stand-ins of 0-core's commands core0 does not run itself (``zerotier.*``,
  ``rtinfo.*``): 0-core's own ``zerotier.toml`` declares ``zerotier.*`` as extensions, and
  with zerotier-one on the node those take the stand-ins' place (and give it back when a
  reload removes them). A table with an unknown key, a bad type or a bad placeholder is
  refused alone (logged); the rest of the configuration, and the other extensions, apply.

The dispatcher installs them at its start, before the boot services (which may name one, as
0-core's could), and again at every ``core.reload``/SIGHUP (:func:`reloaded`: a reload the
services refuse leaves the extensions as they were); ``core.commands`` lists them.
"""

from __future__ import annotations

import dataclasses
import keyword
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from core0 import registry
from core0.config import Config
from core0.context import Context, ProcessSpec
from core0.errors import BadRequest
from core0.jobs.env import check_env, job_env, program
from core0.registry import CommandSpec, Role
from core0.schema import NAME, SAFE_TEXT, Doc, Len, Schema, parse

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``{key}`` in an argument template; other braces are text (0-core, too, left a ``{…}`` that
#: named no argument as it was: ``printf '{"n": %s}'`` works in both)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
Value = str | bool | int | float


@dataclass(frozen=True)
class ExtensionTable(Schema):
    """One ``[extension."<name>"]`` table."""

    __unknown__ = "key"

    binary: Annotated[str, Len(1, 4096), SAFE_TEXT]
    args: list[Annotated[str, SAFE_TEXT]] = field(default_factory=list)
    cwd: Annotated[str, SAFE_TEXT] = ""
    env: dict[str, Annotated[str, SAFE_TEXT]] = field(default_factory=dict)
    role: Literal["admin", "operator", "read-only"] = "admin"
    doc: str = ""
    patterns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Extension:
    """A checked extension: what its handler needs."""

    name: str
    table: ExtensionTable
    #: the placeholders, in order of first use
    keys: tuple[str, ...]
    #: the argument schema (one field per placeholder, and ``stdin``)
    schema: type[Schema]
    #: the patterns a placeholder's text must fully match
    patterns: dict[str, re.Pattern[str]]


def check(name: str, table: dict[str, Any]) -> Extension:
    """The extension ``name`` declared by ``table``; BadRequest naming what is wrong."""
    path = f'extension."{name}"'
    if not NAME.check(name) or "/" in name:
        raise BadRequest(f"{path}: not a command name (letters, digits, '_', '.', '-')")
    t = parse(ExtensionTable, {k: v for k, v in table.items() if k != "__source__"}, path)
    check_env(t.env, f"{path}.env")
    keys: list[str] = []
    for arg in t.args:
        for key in PLACEHOLDER.findall(arg):
            if key == "stdin":
                raise BadRequest(f"{path}.args: {{stdin}} is not a placeholder (the "
                                 "stdin argument is the program's input)")
            if keyword.iskeyword(key) or key.startswith("__") or hasattr(Schema, key):
                raise BadRequest(f"{path}.args: {{{key}}} cannot be an argument's name "
                                 "(a Python keyword or a reserved name): rename it")
            if key not in keys:
                keys.append(key)
    patterns: dict[str, re.Pattern[str]] = {}
    for key, regex in t.patterns.items():
        if key not in keys:
            raise BadRequest(f"{path}.patterns.{key}: no {{{key}}} in args")
        try:
            patterns[key] = re.compile(regex)
        except re.error as e:
            raise BadRequest(f"{path}.patterns.{key}: {e}") from None
    fields: list[tuple[str, Any, Any]] = []
    for key in keys:
        what = f"the value of {{{key}}}" + (
            f" (its text must match {t.patterns[key]})" if key in patterns else "")
        fields.append((key, Annotated[Value, Doc(what)], dataclasses.MISSING))
    stdin_type = Annotated[str, Doc("text fed to the program's standard input")]
    fields.append(("stdin", stdin_type, ""))
    schema = dataclasses.make_dataclass(
        f"Extension_{re.sub(r'[^A-Za-z0-9_]', '_', name)}",
        [(k, tp) if default is dataclasses.MISSING else (k, tp, field(default=default))
         for k, tp, default in fields],
        bases=(Schema,), frozen=True)
    return Extension(name, t, tuple(keys), schema, patterns)


def text_of(value: Value) -> str:
    """A value as 0-core wrote it into an argument (Go's ``%v``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def argv_of(ext: Extension, values: dict[str, Value]) -> list[str]:
    """The program's argv: each template with its placeholders filled. A value whose text has
    a NUL byte, does not match its pattern, or starts with ``-`` where it begins an element
    is refused."""
    texts = {}
    for k, v in values.items():
        t = text_of(v)
        if "\0" in t:
            raise BadRequest(f"arguments.{k}: NUL byte in value", field=f"arguments.{k}")
        pattern = ext.patterns.get(k)
        if pattern is not None and not pattern.fullmatch(t):
            raise BadRequest(f"arguments.{k}: {t!r:.80} does not match {pattern.pattern}",
                             field=f"arguments.{k}")
        texts[k] = t
    argv = [ext.table.binary]
    for template in ext.table.args:
        arg = PLACEHOLDER.sub(lambda m: texts[m.group(1)], template)
        if arg.startswith("-") and not template.startswith("-"):
            key = next(k for k in PLACEHOLDER.findall(template) if texts[k])
            raise BadRequest(f"arguments.{key}: may not start with '-' (it begins an argument "
                             "of the program: it would be read as an option)",
                             field=f"arguments.{key}")
        argv.append(arg)
    return argv


def spec_of(ext: Extension) -> CommandSpec:
    """The registry's entry for ``ext``: a process job, like ``core.system``."""
    t = ext.table

    async def run_extension(ctx: Context, args: Any) -> ProcessSpec:
        argv = argv_of(ext, {k: getattr(args, k) for k in ext.keys})
        env = job_env(t.env or None)
        exe = program(t.binary, env, t.cwd, f"{ext.name}: ")
        return ProcessSpec(argv, env=env, cwd=t.cwd or None, stdin=args.stdin.encode(),
                           exe=exe, label=f"{ext.name}: {' '.join(argv)}"[:200])

    where = f" ({', '.join('{' + k + '}' for k in ext.keys)})" if ext.keys else ""
    doc = (t.doc or f"Run {t.binary}.") + (
        f"\n\nAn extension declared in the configuration: ``{t.binary}`` with the arguments "
        f"{t.args!r}{where}.")
    return CommandSpec(ext.name, run_extension, ext.schema, Role.parse(t.role), False, doc,
                       builds_process=True, rerun=True)


#: the configuration whose extensions are installed
_installed: Config | None = None


async def reloaded(cfg: Config, apply: Callable[[Config], Awaitable[T]]) -> T:
    """A reload: install ``cfg``'s extensions, then ``apply(cfg)`` (the boot services'
    reload, which may name them); if that refuses the configuration, the extensions of the
    one before are installed again (a refused reload changes nothing)."""
    before = _installed
    install(cfg)
    try:
        return await apply(cfg)
    except BaseException:
        if before is not None:
            install(before)
        raise


def install(cfg: Config) -> list[str]:
    """Make the configuration's extensions the node's extension commands (replacing those of
    an earlier call); each refused one is logged and skipped. Returns the installed names."""
    global _installed
    _installed = cfg
    specs = []
    for name, table in sorted(cfg.extension.items()):
        source = table.get("__source__", "the configuration")
        try:
            specs.append(spec_of(check(name, table)))
        except BadRequest as e:
            log.error("%s: %s: extension not installed", source, e)
        except Exception:  # a bug here must not stop the dispatcher (PID 1's bus)
            log.exception('%s: extension "%s" not installed', source, name)
    refused = set(registry.set_extensions(specs))
    for name in sorted(refused):
        log.warning('extension "%s": a built-in command has this name; the built-in stays',
                    name)
    installed = [s.name for s in specs if s.name not in refused]
    if installed:
        log.info("extensions: %s", ", ".join(installed))
    return installed
