"""Tools that read what a user wrote, run with no view of the node's files (bubblewrap).

core0 resolves every user path inside its root and hands a tool the descriptor it checked
(``/proc/self/fd/N``), but some inputs name further files *themselves*, in content the user can
rewrite while the tool runs: a qcow2 header names its backing file and its external data
file. core0 pins what it can (the backing chain is spelled out to qemu-img), but a qcow2 header
that gains an external data file between core0's check and qemu-img's open would have
qemu-img read that file — any host file — into the user's output, and qemu has no option that
forbids a data file it finds in a header.

So such a tool runs in a sandbox where the only user files it can reach are the descriptors
it inherits: :func:`confined` wraps its argv in ``bwrap`` (Debian's ``bubblewrap``, the tool
made for this: flatpak's and GNOME's sandbox, no daemon, no image) with new mount, pid, ipc,
net, uts and cgroup namespaces; the node's programs and libraries (``/usr``, ``/lib*``,
``/bin``, ``/sbin``, the loader's cache) bound read-only; a private ``/proc`` (its own pids:
no ``/proc/<core0>/root``), a minimal ``/dev`` and an empty tmpfs elsewhere; every capability
dropped but ``CAP_DAC_OVERRIDE`` (the user's files may belong to any uid); an empty
environment; killed with its parent. A name in a header then leads nowhere: qemu-img fails
with "Could not open '<host path>': No such file or directory".

Where ``bwrap`` is missing the command is refused (412 "bwrap is not installed"), never run
without the sandbox; where it cannot make the sandbox (core0 itself in a container without the
privilege to make namespaces, the tool missing), :func:`failure` tells its complaint from the
tool's own errors, so the command can answer 412 rather than blame the user's input.
"""

from __future__ import annotations

from collections.abc import Sequence

BWRAP = "bwrap"

#: the node's programs and libraries, bound read-only when they exist (a merged /usr has /lib
#: and /bin as symlinks into it; the image has its own layout)
SYSTEM = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache")

#: capabilities the tool keeps (read and write the user's files whatever their owner)
KEEP_CAPS = ("CAP_DAC_OVERRIDE",)


def confined(argv: Sequence[str]) -> list[str]:
    """``argv`` run by bubblewrap with no view of the node's files (module docstring): pass
    the files it may use as inherited descriptors and name them ``/proc/self/fd/N``
    (:func:`fd_path`)."""
    out = [BWRAP, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
           "--cap-drop", "ALL"]
    for cap in KEEP_CAPS:
        out += ["--cap-add", cap]
    for path in SYSTEM:
        out += ["--ro-bind-try", path, path]
    out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", *argv]
    return out


def fd_path(fd: int) -> str:
    """The name of inherited descriptor ``fd`` inside the sandbox (the tool's own ``/proc``)."""
    return f"/proc/self/fd/{fd}"


def failure(stderr: str) -> str | None:
    """bwrap's own complaint when it could not set the sandbox up or start the tool in it
    (its message, on the first line of stderr: ``bwrap: …``); None when the tool ran and
    failed by itself."""
    first = stderr.lstrip().partition("\n")[0]
    return first.removeprefix("bwrap: ") if first.startswith("bwrap: ") else None
