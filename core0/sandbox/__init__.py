"""Containers: images, a fresh root per start, the OCI bundle, the runtime, networking.

core0 writes OCI runtime bundles and lets a real runtime (crun, or runc where crun refuses)
create the namespaces, pivot_root, seccomp filter, capabilities and cgroups; nothing here
does that by hand.

- :mod:`core0.sandbox.runtime` — the :class:`Runtime` over crun/runc (argv, ``--`` before
  user values, its state dir on core0's tmpfs), chosen by a probe;
- :mod:`core0.sandbox.spec` — the OCI ``config.json`` with containerd/podman defaults;
- :mod:`core0.sandbox.seccomp` — the containers-common seccomp profile, resolved for this
  architecture and capability set, plus core0's stricter additions;
- :mod:`core0.sandbox.unpack` — safe layer extraction (tarfile's ``data`` filter + OCI
  whiteouts);
- :mod:`core0.sandbox.images` — the image store: import (directory, rootfs tarball, OCI
  layout, ``docker save`` archive), pull (skopeo), list/inspect/delete;
- :mod:`core0.sandbox.roots` — a fresh root per start (btrfs snapshot, or overlayfs over the
  stored image), and :mod:`core0.sandbox.zfsroots` — the same on a ZFS image store (dataset +
  snapshot per image, a clone per start);
- :mod:`core0.sandbox.manager` — create/terminate/describe, in recorded steps;
- :mod:`core0.sandbox.dispatch` — commands run inside a container as jobs of their own;
- :mod:`core0.sandbox.store` — container records (ids, arguments, what was made for them);
- :mod:`core0.sandbox.netsetup` — the default nic (a veth into the NAT bridge ``core0``);
- :mod:`core0.sandbox.userns` — ``userns: true``: a uid/gid range per container, its user
  namespace (owning its netns) and a root clone that belongs to the range.
"""
