"""The default seccomp profile: containers-common's, resolved for this host, made stricter.

``/usr/share/containers/seccomp.json`` (Debian: golang-github-containers-common) is the profile
podman and CRI-O apply. It is written for many architectures and capability sets: rules carry
``includes``/``excludes`` conditions (arches, caps, minKernel) that the engine resolves before
handing a plain OCI ``linux.seccomp`` object to the runtime. :func:`resolve` does the same.

containers-common allows a few calls that rely on capabilities or LSMs alone (``keyctl``,
``unshare``, ``mount``, ``ptrace``…). core0's containers have no LSM policy of their own, so
:func:`harden` adds Docker's (moby) stricter rules on top: the namespace/mount calls, the
kernel keyring, ``ptrace`` (without CAP_SYS_PTRACE) and ``syslog`` answer EPERM; ``clone``
with namespace flags is refused and ``clone3`` answers ENOSYS (libc falls back to ``clone``).
"""

from __future__ import annotations

import json
import platform
from functools import lru_cache
from typing import Any

from core0.errors import PreconditionFailed

PROFILE = "/usr/share/containers/seccomp.json"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "x86",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64",
              "arm": "SCMP_ARCH_ARM", "x86": "SCMP_ARCH_X86", "ppc64le": "SCMP_ARCH_PPC64LE",
              "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}

EPERM = 1
ENOSYS = 38
#: namespace flags of clone(2): CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
CLONE_NS_FLAGS = 0x7E020000

#: refused with EPERM unless the container has CAP_SYS_ADMIN (moby's default profile)
SYS_ADMIN_CALLS = ("unshare", "setns", "mount", "umount", "umount2", "pivot_root",
                   "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
                   "mount_setattr", "quotactl", "quotactl_fd", "name_to_handle_at")
#: refused with EPERM always (the kernel keyring is not namespaced)
ALWAYS_EPERM = ("keyctl", "add_key", "request_key")


@lru_cache(maxsize=1)
def _profile() -> dict[str, Any]:
    try:
        with open(PROFILE) as f:
            data: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        raise PreconditionFailed(f"no seccomp profile at {PROFILE} (install "
                                 "golang-github-containers-common)") from None
    return data


def host_arch() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


def _kernel() -> tuple[int, ...]:
    rel = platform.release().split("-")[0]
    return tuple(int(p) for p in rel.split(".")[:2] if p.isdigit())


def _ok(rule: dict[str, Any], arch: str, caps: set[str]) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if inc.get("minKernel"):
        want = tuple(int(p) for p in str(inc["minKernel"]).split(".")[:2])
        if _kernel() < want:
            return False
    return True


def resolve(caps: list[str]) -> dict[str, Any]:
    """containers-common's profile as an OCI ``linux.seccomp`` for this arch and ``caps``."""
    prof = _profile()
    arch = host_arch()
    capset = set(caps)
    arches: list[str] = []
    for m in prof.get("archMap") or []:
        if m.get("architecture") == _SCMP_ARCH.get(arch):
            arches = [m["architecture"], *(m.get("subArchitectures") or [])]
    rules = []
    for r in prof.get("syscalls") or []:
        if not _ok(r, arch, capset):
            continue
        out: dict[str, Any] = {"names": list(r["names"]), "action": r["action"]}
        if r.get("args"):
            out["args"] = r["args"]
        if r.get("errnoRet") is not None:
            out["errnoRet"] = r["errnoRet"]
        rules.append(out)
    spec: dict[str, Any] = {"defaultAction": prof["defaultAction"], "architectures": arches,
                            "syscalls": rules}
    if prof.get("defaultErrnoRet") is not None:
        spec["defaultErrnoRet"] = prof["defaultErrnoRet"]
    return spec


def harden(spec: dict[str, Any], caps: list[str]) -> dict[str, Any]:
    """core0's additions (see the module doc); returns a new profile."""
    capset = set(caps)
    deny = set(ALWAYS_EPERM) | {"syslog"} - ({"syslog"} if "CAP_SYSLOG" in capset else set())
    if "CAP_SYS_ADMIN" not in capset:
        deny |= set(SYS_ADMIN_CALLS)
    if "CAP_SYS_PTRACE" not in capset:
        deny.add("ptrace")
    restrict_clone = "CAP_SYS_ADMIN" not in capset
    taken = deny | ({"clone", "clone3"} if restrict_clone else set())
    rules = []
    for r in spec["syscalls"]:
        names = [n for n in r["names"] if n not in taken]
        if names:
            rules.append({**r, "names": names})
    rules.append({"names": sorted(deny), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM})
    if restrict_clone:
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ"}]})
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {**spec, "syscalls": rules}


def default(caps: list[str]) -> dict[str, Any]:
    """The profile of a default (unprivileged) container with ``caps``."""
    return harden(resolve(caps), caps)
