"""Domain managers shared by Client and AsyncClient (``c.info.cpu()``, ``c.job.list()``…).

A manager method returns what ``client.json`` returns: the value for ``Client``, an
awaitable of it for ``AsyncClient``. Each domain module lists its managers in ``MANAGERS``.
"""

from __future__ import annotations

from core0_client.managers import container, core, kvm, net, service, storage

MANAGERS: dict[str, type] = {}
for _mod in (container, core, kvm, net, service, storage):
    MANAGERS.update(_mod.MANAGERS)
