"""Pure parsers of storage tools' output. No I/O here: each takes text, returns JSON-able data.

Unit-tested on captured output (tests/unit/test_storage_parsers.py), including zfs-fuse's
human-readable forms (it has no ``-p`` on ``zpool list``/``zfs list``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from core0 import mountinfo
from core0.mountinfo import Mount

_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6, "Z": 7}
_HUMAN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPEZ]?)(?:i?B)?$", re.I)


def parse_size(text: str | None) -> int | None:
    """``"250M"`` → 262144000, ``"114688"`` → 114688, ``"-"``/``"none"``/``""`` → None.

    Human sizes (zfs-fuse, no ``-p``) are powers of 1024 and rounded by the tool, so they are
    approximations; exact values come from ``zfs get -p``.
    """
    if text is None:
        return None
    t = text.strip()
    if t in ("", "-", "none", "None"):
        return None
    m = _HUMAN.match(t)
    if not m:
        return None
    num, unit = m.groups()
    return int(round(float(num) * (1024 ** _UNITS[unit.upper()])))


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()
    return int(t) if t.isdigit() else None


def parse_tsv(text: str, fields: list[str]) -> list[dict[str, str]]:
    """Tab-separated rows (``-H`` output) → dicts keyed by ``fields``."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.split("\t")
        out.append({f: (cols[i] if i < len(cols) else "") for i, f in enumerate(fields)})
    return out


# ---------------------------------------------------------------- block devices

LSBLK_COLUMNS = ("NAME,KNAME,PATH,TYPE,SIZE,MODEL,SERIAL,ROTA,RO,RM,FSTYPE,LABEL,UUID,"
                 "PARTUUID,PARTLABEL,PTTYPE,MOUNTPOINTS,MAJ:MIN,PKNAME")


def _s(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _b(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip() in ("1", "true")


def _lsblk_node(d: dict[str, Any]) -> dict[str, Any]:
    mps = d.get("mountpoints")
    if mps is None:
        mp = d.get("mountpoint")
        mps = [mp] if mp else []
    node: dict[str, Any] = {
        "name": d.get("name"),
        "kname": d.get("kname") or d.get("name"),
        "path": d.get("path") or f"/dev/{d.get('kname') or d.get('name')}",
        "type": d.get("type"),
        "size": int(d["size"]) if d.get("size") is not None else None,
        "model": _s(d.get("model")),
        "serial": _s(d.get("serial")),
        "rotational": _b(d.get("rota")),
        "read_only": _b(d.get("ro")),
        "removable": _b(d.get("rm")),
        "fstype": _s(d.get("fstype")),
        "label": _s(d.get("label")),
        "uuid": _s(d.get("uuid")),
        "partuuid": _s(d.get("partuuid")),
        "partlabel": _s(d.get("partlabel")),
        "pttype": _s(d.get("pttype")),
        "mountpoints": [m for m in mps if m],
        "majmin": d.get("maj:min"),
        "partitions": [_lsblk_node(c) for c in d.get("children") or []],
    }
    return node


def parse_lsblk(text: str) -> list[dict[str, Any]]:
    """``lsblk -J -b -o LSBLK_COLUMNS`` → the device tree (children under ``partitions``)."""
    data = json.loads(text or "{}")
    return [_lsblk_node(d) for d in data.get("blockdevices", [])]


def _unescape_export(v: str) -> str:
    return re.sub(r"\\(.)", r"\1", v)


def parse_blkid_export(text: str) -> dict[str, dict[str, str]]:
    """``blkid -o export`` → {devname: {TYPE, LABEL, UUID, PARTUUID, PTTYPE, ...}}."""
    out: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if not line:
            if "DEVNAME" in cur:
                out[cur["DEVNAME"]] = cur
            cur = {}
            continue
        k, sep, v = line.partition("=")
        if sep:
            cur[k] = _unescape_export(v)
    return out


def merge_blkid(devs: list[dict[str, Any]], probe: dict[str, dict[str, str]]) -> None:
    """Fill fstype/label/uuid/partuuid/pttype from blkid where lsblk had none (no udev)."""
    keys = {"fstype": "TYPE", "label": "LABEL", "uuid": "UUID", "partuuid": "PARTUUID",
            "partlabel": "PARTLABEL", "pttype": "PTTYPE"}
    for d in devs:
        info = probe.get(d["path"]) or probe.get(f"/dev/{d['kname']}") or {}
        for k, bk in keys.items():
            if d.get(k) is None and info.get(bk):
                d[k] = info[bk]
        merge_blkid(d["partitions"], probe)


def _bytes(v: str) -> int | None:
    v = v.strip()
    if v.endswith("B"):
        v = v[:-1]
    try:
        return int(float(v))
    except ValueError:
        return None


def parse_parted(text: str) -> dict[str, Any]:
    """``parted -s -m DEV unit B print free`` → {size, transport, logical_sector,
    physical_sector, table, model, partitions: [...], free: [...]}."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out: dict[str, Any] = {"partitions": [], "free": []}
    body = [ln for ln in lines if ln != "BYT;" and ln != "CHS;" and ln != "CYL;"]
    if not body:
        return out
    head = body[0].rstrip(";").split(":")
    head += [""] * (8 - len(head))
    out.update({
        "size": _bytes(head[1]),
        "transport": head[2] or None,
        "logical_sector": parse_int(head[3]),
        "physical_sector": parse_int(head[4]),
        "table": None if head[5] in ("", "unknown") else head[5],
        "model": head[6] or None,
    })
    for ln in body[1:]:
        f = ln.rstrip(";").split(":")
        if len(f) >= 5 and f[4] == "free":
            out["free"].append({"start": _bytes(f[1]), "end": _bytes(f[2]),
                                "size": _bytes(f[3])})
            continue
        if len(f) < 5 or not f[0].isdigit():
            continue
        if len(f) > 7:  # a ':' in the partition name
            f = [*f[:5], ":".join(f[5:-1]), f[-1]]
        f += [""] * (7 - len(f))
        out["partitions"].append({
            "number": int(f[0]),
            "start": _bytes(f[1]),
            "end": _bytes(f[2]),
            "size": _bytes(f[3]),
            "fstype": f[4] or None,
            "name": f[5] or None,
            "flags": [x.strip() for x in f[6].split(",") if x.strip()],
        })
    return out


# ---------------------------------------------------------------- mounts


def parse_mountinfo(text: str) -> list[Mount]:
    """``/proc/self/mountinfo`` → mounts in order (octal escapes decoded): core0.mountinfo."""
    return mountinfo.parse(text)


# ---------------------------------------------------------------- ZFS


_STATUS_KEY = re.compile(
    r"^\s{0,8}(pool|id|state|status|action|see|scan|scrub|config|errors|remove|checkpoint"
    r"|comment):(?: (.*))?$")


def parse_zpool_status(text: str) -> list[dict[str, Any]]:
    """``zpool status [pool]`` or ``zpool import -d DIR`` (listing) → one dict per pool:
    {name, id?, state, status?, action?, scan?, errors?, config: [vdev tree]}; each vdev is
    {name, state, read, write, cksum, message?, children}."""
    pools: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    key: str | None = None
    stack: list[tuple[int, dict[str, Any]]] = []
    for raw in text.splitlines():
        m = _STATUS_KEY.match(raw)
        if m and not raw.startswith("\t"):
            k, v = m.group(1), (m.group(2) or "").strip()
            if k == "pool":
                cur = {"name": v, "config": []}
                pools.append(cur)
                stack = []
            elif cur is not None:
                if k == "scrub":
                    k = "scan"
                if k != "config":
                    cur[k] = v
            key = k
            continue
        if cur is None:
            continue
        if key == "config" and raw.startswith("\t"):
            body = raw[1:]
            indent = len(body) - len(body.lstrip(" "))
            cols = body.split()
            if not cols or cols[0] == "NAME":
                continue
            node: dict[str, Any] = {"name": cols[0], "state": cols[1] if len(cols) > 1 else None,
                                    "children": []}
            if len(cols) >= 5 and all(c.isdigit() for c in cols[2:5]):
                node.update(read=int(cols[2]), write=int(cols[3]), cksum=int(cols[4]))
                if len(cols) > 5:
                    node["message"] = " ".join(cols[5:])
            elif len(cols) > 2:
                node["message"] = " ".join(cols[2:])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            (stack[-1][1]["children"] if stack else cur["config"]).append(node)
            stack.append((indent, node))
        elif key in ("status", "action", "scan", "see", "errors") and raw.strip():
            cur[key] = (cur.get(key, "") + " " + raw.strip()).strip()
    for p in pools:
        # the first config row is the pool itself: lift its children up
        cfg = p["config"]
        if cfg and cfg[0]["name"] == p["name"]:
            root = cfg[0]
            p["vdevs"] = root["children"] + cfg[1:]
            p["counters"] = {k: root[k] for k in ("read", "write", "cksum") if k in root}
        else:
            p["vdevs"] = cfg
        del p["config"]
    return pools


def parse_zfs_get(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """``zfs get -H -p -o name,property,value,source`` → {name: {prop: {value, source}}}."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        src = cols[3] if len(cols) > 3 else ""
        out.setdefault(cols[0], {})[cols[1]] = {"value": cols[2], "source": src}
    return out


def parse_zfs_holds(text: str) -> list[dict[str, Any]]:
    """OpenZFS ``zfs holds -H -p SNAP`` → [{name, tag, timestamp}]."""
    out = []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 3:
            out.append({"name": cols[0], "tag": cols[1], "timestamp": parse_int(cols[2])
                        if cols[2].strip().isdigit() else cols[2].strip()})
    return out


# ---------------------------------------------------------------- btrfs
# ``filesystem df`` is read as json; the others stay text parsers: btrfs-progs 6.2 (Debian 12)
# has no json for ``filesystem show`` and ``subvolume list`` ("output format json is unsupported
# for this command"), and its json ``qgroup show`` aborts ("INTERNAL ERROR: unknown unit base")
# on any qgroup with a limit. Its only working json commands are ``filesystem df`` and
# ``device stats`` (which core0 does not use).


def parse_btrfs_show(text: str) -> list[dict[str, Any]]:
    """``btrfs filesystem show --raw`` → [{label, uuid, total_devices, used, devices[]}]."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = re.match(r"^Label:\s+(?:'(.*)'|none)\s+uuid:\s+(\S+)", line)
        if m:
            cur = {"label": m.group(1), "uuid": m.group(2), "total_devices": None,
                   "used": None, "devices": [], "missing": False}
            out.append(cur)
            continue
        if cur is None:
            continue
        m = re.match(r"^\s+Total devices (\d+) FS bytes used (\S+)", line)
        if m:
            cur["total_devices"] = int(m.group(1))
            cur["used"] = parse_size(m.group(2))
            continue
        m = re.match(r"^\s+devid\s+(\d+) size (\S+) used (\S+) path (.+)$", line)
        if m:
            cur["devices"].append({"devid": int(m.group(1)), "size": parse_size(m.group(2)),
                                   "used": parse_size(m.group(3)),
                                   "path": m.group(4).strip()})
            continue
        if "missing" in line:
            cur["missing"] = True
    return out


def parse_btrfs_df(text: str) -> dict[str, dict[str, Any]]:
    """``btrfs --format json filesystem df --raw`` → {data|metadata|system|globalreserve:
    {profile, total, used}} (a mixed group is ``data+metadata``)."""
    try:
        rows = json.loads(text).get("filesystem-df")
    except (ValueError, AttributeError):
        rows = None
    if not isinstance(rows, list):
        raise ValueError("btrfs filesystem df: no filesystem-df list in its json output")
    return {str(r["bg-type"]).lower(): {"profile": str(r["bg-profile"]).lower(),
                                        "total": parse_int(r.get("total")),
                                        "used": parse_int(r.get("used"))}
            for r in rows if isinstance(r, dict) and "bg-type" in r}


_SUBVOL = re.compile(
    r"^ID (\d+) gen (\d+)(?: cgen (\d+))?(?: parent (\d+))? top level (\d+)"
    r"(?:\s+parent_uuid (\S+))?(?:\s+received_uuid (\S+))?(?:\s+uuid (\S+))?\s+path (.*)$")


def parse_subvol_list(text: str) -> list[dict[str, Any]]:
    """``btrfs subvolume list [-p -u -q]`` → [{id, gen, parent, top_level, uuid,
    parent_uuid, path}]."""
    out = []
    for line in text.splitlines():
        m = _SUBVOL.match(line.strip())
        if not m:
            continue
        g = m.groups()

        def none(x: str | None) -> str | None:
            return None if x in (None, "-") else x

        out.append({"id": int(g[0]), "gen": int(g[1]),
                    "parent": int(g[3]) if g[3] else None, "top_level": int(g[4]),
                    "parent_uuid": none(g[5]), "uuid": none(g[7]), "path": g[8]})
    return out


def parse_qgroup_show(text: str) -> list[dict[str, Any]]:
    """``btrfs qgroup show -re --raw`` → [{qgroupid, referenced, exclusive, max_referenced,
    max_exclusive, path?}]."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 5 or not re.fullmatch(r"\d+/\d+", cols[0]):
            continue
        out.append({"qgroupid": cols[0], "referenced": parse_size(cols[1]),
                    "exclusive": parse_size(cols[2]), "max_referenced": parse_size(cols[3]),
                    "max_exclusive": parse_size(cols[4]),
                    "path": " ".join(cols[5:]) or None})
    return out
