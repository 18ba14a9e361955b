"""``core0ctl kvm …``: virtual machines from a shell.

    core0ctl kvm list                                 # a table (--json: kvm.list as is)
    core0ctl kvm create web --disk /images/base.qcow2:overlay --memory 512 --nic default \\
        --forward 8080:80 --vm-tag web                # prints the new VM's uuid
    core0ctl kvm create k --kernel /images/vmlinuz --initrd /images/initrd.cpio \\
        --cmdline 'console=ttyS0' --disk /images/data.raw --persistent
    core0ctl kvm destroy web                          # a uuid or a name
    core0ctl kvm shutdown web [timeout=60]            # also: reboot reset pause resume get
                                                      # info infops
Any other ``kvm <action> key=value…`` is sent as is (see ``core0ctl commands``). The options
are not named ``--port``/``--tags``/``--timeout``: those are core0ctl's own (they may follow
the command).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn

from core0_client.sync import Client, Response

#: verbs taking one VM (a uuid or a name), with the command each runs
ONE_VM = {v: f"kvm.{v}" for v in ("destroy", "shutdown", "reboot", "reset", "pause",
                                   "resume", "get", "info", "infops")}
VERBS = {"list", "create", *ONE_VM}
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")
Finish = Callable[[argparse.Namespace, Response], int]
KeyValues = Callable[[list[str]], dict[str, Any]]


class KvmUsageError(Exception):
    """A bad ``kvm`` command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KvmUsageError(f"{self.prog}: {message}")


def _create_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="core0ctl kvm create", add_help=False)
    ap.add_argument("name")
    ap.add_argument("--disk", action="append", default=[],
                    help="PATH or URL, optionally :overlay, :cdrom (repeatable; first boots)")
    ap.add_argument("--cpu", type=int)
    ap.add_argument("--memory", type=int, help="MiB")
    ap.add_argument("--nic", action="append", default=[], help="default | bridge:NAME[:MAC]")
    ap.add_argument("--forward", action="append", default=[],
                    help="HOST:GUEST port forward (repeatable)")
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--cmdline")
    ap.add_argument("--vnc", action="store_true", default=None)
    ap.add_argument("--vm-tag", action="append", default=[])
    ap.add_argument("--persistent", action="store_true", default=None,
                    help="declared: created again after a reboot (main.persistent_dir)")
    return ap


def _media(spec: str) -> dict[str, Any]:
    path, flags = spec, list[str]()
    while True:
        head, sep, tail = path.rpartition(":")
        if sep and tail in ("overlay", "cdrom"):
            path, flags = head, [tail, *flags]
        else:
            break
    m: dict[str, Any] = {"url": path}
    if "overlay" in flags:
        m["overlay"] = True
    if "cdrom" in flags:
        m["type"] = "cdrom"
    return m


def _nic(spec: str) -> dict[str, Any]:
    if spec == "default":
        return {"type": "default"}
    kind, _, rest = spec.partition(":")
    if kind != "bridge" or not rest:
        raise KvmUsageError(f"--nic: default or bridge:NAME[:MAC], got {spec!r}")
    name, _, mac = rest.partition(":")
    nic = {"type": "bridge", "id": name}
    if mac:
        nic["hwaddr"] = mac
    return nic


def _ports(specs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in specs:
        src, sep, dst = s.rpartition(":")
        if not sep or not src or not dst.isdigit():
            raise KvmUsageError(f"--forward: HOST:GUEST expected, got {s!r}")
        out[src] = int(dst)
    return out


def create_args(words: list[str], kv: KeyValues) -> dict[str, Any]:
    """kvm.create's arguments of ``kvm create NAME [options] [key=value…]`` (``kv`` parses
    the key=value words: any other kvm.create argument, as JSON or a string)."""
    ns, left = _create_parser().parse_known_args(words)
    bad = [w for w in left if "=" not in w or w.startswith("-")]
    if bad:
        raise KvmUsageError(f"kvm create: unknown arguments {' '.join(bad)}")
    extra = kv(left)
    args: dict[str, Any] = {"name": ns.name}
    opt = {"cpu": ns.cpu, "memory": ns.memory, "kernel": ns.kernel, "initrd": ns.initrd,
           "cmdline": ns.cmdline, "vnc": ns.vnc, "persistent": ns.persistent}
    args.update({k: v for k, v in opt.items() if v is not None})
    if ns.disk:
        args["media"] = [_media(d) for d in ns.disk]
    if ns.nic:
        args["nics"] = [_nic(n) for n in ns.nic]
    if ns.forward:
        args["port"] = _ports(ns.forward)
    if ns.vm_tag:
        args["tags"] = ns.vm_tag
    args.update(extra)
    return args


def resolve(c: Client, what: str) -> str:
    """A VM's uuid from a uuid or a name."""
    if _UUID.fullmatch(what):
        return what.lower()
    return str(c.json("kvm.get", {"name": what})["uuid"])


def table(vms: list[dict[str, Any]]) -> str:
    rows = [("UUID", "NAME", "STATE", "IP", "VNC", "TAGS")]
    for v in vms:
        vnc = v.get("vnc", -1)
        rows.append((str(v.get("uuid", "")), str(v.get("name", "")), str(v.get("state", "")),
                     str(v.get("default_ip") or "-"),
                     str(vnc) if isinstance(vnc, int) and vnc >= 0 else "-",
                     ",".join(map(str, v.get("tags") or [])) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def run(ns: argparse.Namespace, c: Client, words: list[str], opts: dict[str, Any],
        finish: Finish, kv_of: KeyValues) -> int:
    """``kvm VERB …`` (VERB in VERBS; ``words`` start with it); ``finish`` waits and prints
    as ``core0ctl`` does for any command, ``kv_of`` parses ``key=value`` words."""
    verb, words = words[0], words[1:]
    if verb == "create":
        return finish(ns, c.raw("kvm.create", create_args(words, kv_of), **opts))
    kv = kv_of([w for w in words if "=" in w and not w.startswith("-")])
    words = [w for w in words if "=" not in w or w.startswith("-")]
    if verb == "list":
        if words:
            raise KvmUsageError("kvm list: no argument expected")
        if ns.json or ns.no_wait or ns.stream:
            return finish(ns, c.raw("kvm.list", kv, **opts))
        print(table(c.json("kvm.list")))
        return 0
    if len(words) != 1:
        raise KvmUsageError(f"kvm {verb}: one VM (uuid or name) expected")
    if verb == "get" and not _UUID.fullmatch(words[0]):
        return finish(ns, c.raw("kvm.get", {"name": words[0], **kv}, **opts))
    args = {"uuid": resolve(c, words[0]), **kv}
    return finish(ns, c.raw(ONE_VM[verb], args, **opts))
