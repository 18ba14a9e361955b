"""Virtual machines through libvirt (libvirt-python), behind ``kvm.*``.

- :mod:`core0.virt.conn` — the libvirt connection: blocking calls in a bounded thread pool,
  reconnection when libvirtd restarts, lifecycle events fanned out to asyncio subscribers;
- :mod:`core0.virt.spec` — the schema-checked VM spec (names, sizes, media, nics) and its
  limits: every user value passes through here before it reaches XML or a tool's argv;
- :mod:`core0.virt.domain` — the domain XML, built with ``xml.etree`` from a spec (never by
  string pasting), and read back (disks, nics, serial file) from libvirt's live XML;
- :mod:`core0.virt.disks` — media paths confined under the node's filesystem root, qcow2
  overlays per VM on a shared base image, ``qemu-img`` argv;
- :mod:`core0.virt.fetch` — http(s) media: downloaded once with progress and a checksum,
  cached as shared base images;
- :mod:`core0.virt.probe` — the domain type chosen by a real probe (kvm only where a guest
  kernel really runs under it, else qemu/TCG);
- :mod:`core0.virt.network` — the ``kvm0`` NAT bridge, per-VM static leases and port forwards
  (owner ``vm:<uuid>``) on core0's network machinery; :mod:`core0.virt.guards` — the port
  guards of the VMs' taps on it (no spoofing: :mod:`core0.net.portguard`);
- :mod:`core0.virt.manager` — the VM records (``<virt dir>/<uuid>``), creation with rollback,
  cleanup when a VM stops, reconciliation;
- :mod:`core0.virt.owner` — a VM's owner (the creating queue's role and scope) and who may
  see and act on it; :mod:`core0.virt.access` — the one loader of the commands that act on a
  VM (404 not core0's, 403 not the caller's) and ``kvm.events``' filter;
- :mod:`core0.virt.quota` — per-role caps on VMs and their memory (503);
- :mod:`core0.virt.bootfiles` — kernel and initrd of lower roles' VMs, copied from the
  checked descriptor into the VM's directory;
- :mod:`core0.virt.migration` — the source's side of a live migration
  (:mod:`core0.virt.incoming` the destination's).

libvirt-python is imported lazily, so a node without it still starts (kvm.* answers 412).
"""
