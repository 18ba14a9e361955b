"""core0ctl's fleet side: ``core0ctl nodes`` and ``core0ctl --nodes a,b | --node-tags t1,t2 …``.

    core0ctl --url redis://shared:6379/ nodes              # the registry, with ages
    core0ctl --nodes node1,node2 ping                       # one call on each, a table
    core0ctl --node-tags web,eu --json system -- uname -r   # per-node results as JSON
    core0ctl --node-tags db --stream system -- sh -c 'echo hi'   # output labelled by node

A progress line (``n/N done, f failed``) goes to stderr while results arrive. Exit status: 0
when every node succeeded, 1 when any failed (each node's error is in the table / JSON).
(``--tags`` stays the job's own tags, as for a single node.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from core0_client._base import system_args
from core0_client.fleet import Fleet, FleetResult, NodeResult
from core0_client.protocol import Level
from core0_client.replies import result_data
from core0_client.url import Endpoint


class FleetUsageError(ValueError):
    """A fleet command line that cannot be run."""


def fleet_command(words: list[str]) -> tuple[str, dict[str, Any]]:
    """core0ctl words → (command, arguments): ping, system -- PROG ARGS, bash SCRIPT,
    raw COMMAND [JSON], or <domain> <action> [key=value …]."""
    head, rest = words[0], words[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if head == "ping":
        return "core.ping", {}
    if head == "system":
        if not rest:
            raise FleetUsageError("system: nothing to run (system -- PROGRAM [ARGS])")
        return "core.system", system_args(rest)
    if head == "bash":
        return "bash", {"script": " ".join(rest), "stdin": ""}
    if head == "raw":
        if not rest or len(rest) > 2:
            raise FleetUsageError("raw: COMMAND [JSON-ARGS] expected")
        raw = json.loads(rest[1]) if len(rest) > 1 else {}
        if not isinstance(raw, dict):
            raise FleetUsageError("raw: JSON-ARGS must be a JSON object")
        return rest[0], raw
    command, kv = (head, rest) if "." in head else (f"{head}.{rest[0]}" if rest else head,
                                                     rest[1:])
    args: dict[str, Any] = {}
    for w in kv:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise FleetUsageError(f"expected key=value, got {w!r} (positional arguments "
                                  "are not resolved for a fleet)")
        try:
            args[k] = json.loads(v)
        except ValueError:
            args[k] = v
    return command, args


def _detail(r: NodeResult) -> str:
    if r.error is not None:
        return r.error
    res = r.result
    assert res is not None
    if not r.ok:
        return r.message()
    if res.level == Level.RESULT_JSON and res.data:
        data = result_data(res)
        text = data if isinstance(data, str) else json.dumps(data)
    else:
        text = res.data or res.stdout
    return " ".join(str(text).split())[:120]


def table(res: FleetResult) -> str:
    """One line per node: id, state, code, detail."""
    lines = [f"{'NODE':16} {'STATE':12} {'CODE':5} DETAIL"]
    for node, r in sorted(res.nodes.items()):
        state = r.result.state.value if r.result is not None else "FAILED"
        code = str(r.result.code) if r.result is not None else "-"
        lines.append(f"{node:16} {state:12} {code:5} {_detail(r)}")
    return "\n".join(lines)


class Progress:
    """``n/N done, f failed`` on stderr: rewritten in place on a terminal, a line per update
    otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, failed: int) -> None:
        text = f"core0ctl: {done}/{total} done, {failed} failed"
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if done == total else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def run(ns: argparse.Namespace, ep: Endpoint, words: list[str], opts: dict[str, Any]) -> int:
    """``core0ctl nodes`` or a fan-out; returns the exit status."""
    f = Fleet(ep.host, ep.port, password=ep.password, unix_socket_path=ep.unix_socket_path,
              ssl=ep.tls, username=ep.username, ssl_ca_certs=ep.ca, ssl_certfile=ep.cert,
              ssl_keyfile=ep.key, ssl_verify=ep.verify, timeout=ns.timeout,
              cluster=bool(getattr(ns, "cluster", False)))
    try:
        if words == ["nodes"]:
            return _nodes(f, ns.json)
        command, args = fleet_command(words)
        ids = ns.nodes.split(",") if ns.nodes else None
        tags = ns.node_tags.split(",") if ns.node_tags else None
        kw = {k: v for k, v in opts.items() if v is not None and k not in ("id", "stream")}
        if opts.get("id"):
            raise FleetUsageError("--id: every node's job gets its own id")
        progress = Progress()
        if ns.stream:
            res = f.stream(command, args, nodes=ids, tags=tags, timeout=ns.timeout,
                           progress=progress, **kw)
        else:
            res = f.run(command, args, nodes=ids, tags=tags, timeout=ns.timeout,
                        progress=progress, **kw)
        if not res.nodes:
            print("core0ctl: no node selected", file=sys.stderr)
            return 1
        print(json.dumps(res.to_dict(), indent=2) if ns.json else table(res))
        return 0 if res.ok else 1
    finally:
        f.close()


def _nodes(f: Fleet, as_json: bool) -> int:
    nodes = f.nodes()
    if as_json:
        print(json.dumps([n.to_dict() for n in nodes], indent=2))
        return 0
    print(f"{'NODE':16} {'AGE':>6} {'UPTIME':>8} {'LOAD':>5} {'JOBS':>5} {'VERSION':8} "
          f"{'PREFIX':14} TAGS")
    for n in nodes:
        load = n.entry.get("load") or {}
        print(f"{n.id:16} {n.age:5.1f}s {_dur(n.uptime):>8} {load.get('load1', 0):5.2f} "
              f"{load.get('jobs', 0):5} {n.entry.get('version', '?')!s:8} {n.prefix:14} "
              f"{','.join(n.tags)}")
    return 0


def _dur(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else \
        f"{int(seconds // 86400)}d"
