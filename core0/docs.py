"""docs/commands.md, generated from the registry (a test fails when it is stale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from core0 import registry
from core0.schema import json_schema

HEADER = """# core0 command reference

Generated from the command registry by `core0 docs` — do not edit by hand.
Each command is sent as `{"id": ..., "command": NAME, "arguments": {...}}` (see
[protocol.md](protocol.md)). *Role* is the least queue role that may run it
(read-only < operator < admin). Arguments are strict: unknown fields are refused, types are
never coerced, `null` means "not set". *Not run twice*: a command that changes the node is
never run a second time when its dispatcher stopped while it ran; its one result is then a
503 "interrupted" (the others run again: protocol.md, "Delivery guarantees").
"""


def _type(s: dict[str, Any]) -> str:
    if "enum" in s:
        return " \\| ".join(json.dumps(v) for v in s["enum"])
    if "anyOf" in s:
        return " \\| ".join(_type(x) for x in s["anyOf"])
    t = s.get("type", "any")
    if t == "array":
        return f"array of {_type(s.get('items', {}))}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"object of {_type(s['additionalProperties'])}"
    return str(t)


def _constraints(s: dict[str, Any]) -> str:
    parts = []
    if "pattern" in s:
        parts.append(f"pattern `{s['pattern']}`")
    for k, label in (("minimum", "≥"), ("maximum", "≤")):
        if k in s:
            parts.append(f"{label} {s[k]:g}")
    for k in ("minLength", "maxLength", "minItems", "maxItems"):
        if k in s:
            parts.append(f"{k} {s[k]}")
    return ", ".join(parts)


def _anchor(name: str) -> str:
    return name.replace(".", "")


def render() -> str:
    registry.load_all()
    out = [HEADER]
    aliases = registry.aliases()
    by_domain: dict[str, list[registry.CommandSpec]] = {}
    alias_of: dict[str, list[registry.CommandSpec]] = {}
    for spec in registry.all_commands():
        domain = spec.name.split(".")[0]
        # an alias is listed once: a line of its domain pointing at its canonical command
        (by_domain if spec.alias_of is None else alias_of).setdefault(domain, []).append(spec)
    out.append("## Contents\n")
    for domain in sorted(by_domain.keys() | alias_of.keys()):
        links = [f"[`{s.name}`](#{_anchor(s.name)})" for s in by_domain.get(domain, [])]
        if domain in alias_of:
            links.append(f"[aliases](#{domain}-aliases)")
        out.append(f"- **{domain}**: " + ", ".join(links))
    out.append("")
    for domain in sorted(by_domain.keys() | alias_of.keys()):
        out.append(f"## {domain}\n")
        for spec in by_domain.get(domain, []):
            out.append(f"### {spec.name}\n")
            flags = (" · inline" if spec.inline else "") + (
                " · internal (not accepted from the bus)" if spec.internal else "") + (
                " · not run twice (cut short: 503 interrupted)"
                if not spec.rerun and not spec.internal else "")
            out.append(f"Role: **{spec.role.label}**{flags}\n")
            if spec.name in aliases:
                where = sorted({a.split(".")[0] for a in aliases[spec.name]})
                out.append("Also accepted under another name: " + ", ".join(
                    f"[{d} aliases](#{d}-aliases)" for d in where) + ".\n")
            out.append(spec.doc + "\n")
            schema = json_schema(spec.args)
            props = schema.get("properties", {}) if schema else {}
            if props:
                req = set(schema.get("required", []))
                out.append("| argument | type | required | default | description |")
                out.append("|---|---|---|---|---|")
                for name, s in props.items():
                    desc = s.get("description", "")
                    cons = _constraints(s)
                    if cons:
                        desc = f"{desc} ({cons})" if desc else cons
                    default = json.dumps(s["default"]) if "default" in s else ""
                    desc = desc.replace("|", "\\|")
                    out.append(f"| `{name}` | {_type(s)} | {'yes' if name in req else ''} | "
                               f"{default} | {desc} |")
                out.append("")
            else:
                out.append("No arguments.\n")
        if domain in alias_of:
            out.append(f"### {domain} aliases\n")
            out.append("Each name is the command it points at (the same handler, arguments "
                       "and role).\n")
            for spec in alias_of[domain]:
                of = spec.alias_of or ""
                out.append(f"- `{spec.name}` → [`{of}`](#{_anchor(of)})")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_or_check(path: str, check: bool) -> int:
    text = render()
    p = Path(path)
    if check:
        if not p.exists() or p.read_text() != text:
            print(f"{path} is stale: run `core0 docs`", file=sys.stderr)
            return 1
        return 0
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return 0
