"""The container manager: ``c.container`` (corex.*) and ``c.container.image``
(container.image.*); ``c.container.client(id)`` runs commands inside a container."""

from __future__ import annotations

import builtins
from typing import Any

from core0_client.managers.base import Manager, args_of


class ImageManager(Manager):
    """container.image.*: the node's container images."""

    def import_(self, name: str, source: str) -> Any:
        """Import a directory, rootfs tarball, OCI layout (``dir`` or ``dir:ref``) or
        docker save / OCI archive on the node as image ``name``."""
        return self._json("container.image.import", name=name, source=source)

    def pull(self, ref: str, name: str | None = None, tls_verify: bool | None = None,
             timeout: float | None = None) -> Any:
        """Pull ``ref`` from an OCI registry; waits up to ``timeout`` seconds."""
        return self._c.json("container.image.pull",
                            args_of(ref=ref, name=name, tls_verify=tls_verify),
                            timeout=timeout)

    def list(self) -> Any:
        return self._json("container.image.list")

    def inspect(self, name: str) -> Any:
        return self._json("container.image.inspect", name=name)

    def delete(self, name: str) -> Any:
        return self._json("container.image.delete", name=name)


class ContainerManager(Manager):
    """corex.*: containers (0-core's argument shapes; ids are integers)."""

    def __init__(self, client: Any):
        super().__init__(client)
        self.image = ImageManager(client)

    def create(self, root: str, mount: dict[str, str] | None = None,
               host_network: bool | None = None,
               nics: builtins.list[dict[str, Any]] | None = None,
               port: dict[str, int] | None = None, hostname: str | None = None,
               privileged: bool | None = None, name: str | None = None,
               env: dict[str, str] | None = None, tags: builtins.list[str] | None = None,
               limits: dict[str, int] | None = None, restart: str | None = None) -> Any:
        """Create and start a container of image (or host path) ``root``; returns its id.
        ``nics`` default to one ``default`` nic; ``limits``: memory, cpu_shares,
        cpu_quota, cpu_period, pids; ``restart``: no, on-failure, always."""
        return self._json("corex.create", root=root, mount=mount, host_network=host_network,
                          nics=nics, port=port, hostname=hostname, privileged=privileged,
                          name=name, env=env, tags=tags, limits=limits, restart=restart)

    def list(self) -> Any:
        """{id: {cpu, rss, vms, swap, container: {…}}} of every container."""
        return self._json("corex.list")

    def get(self, query: int | str) -> Any:
        """One container, by id or name."""
        return self._json("corex.get", query=query)

    def find(self, *tags: str) -> Any:
        """Containers having all ``tags``."""
        return self._json("corex.find", tags=builtins.list(tags))

    def terminate(self, container: int) -> Any:
        """Stop a container and remove everything made for it."""
        return self._json("corex.terminate", container=container)

    def dispatch(self, container: int, command: str,
                 arguments: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Start ``command`` inside; returns the inner job id (see also ``client``)."""
        inner = args_of(command=command, arguments=arguments or {}, **kw)
        return self._c.json("corex.dispatch", {"container": container, "command": inner})

    def backup(self, container: int, url: str, tags: builtins.list[str] | None = None,
               timeout: float | None = None) -> Any:
        """Back a running container up to a restic repository (``file:///path?password=…``
        or another restic backend); returns the snapshot id."""
        return self._c.json("corex.backup", args_of(container=container, url=url, tags=tags),
                            timeout=timeout)

    def restore(self, url: str, tags: builtins.list[str] | None = None,
                timeout: float | None = None) -> Any:
        """Create a container again from a backup (``url``: the repository's, with
        ``#<snapshot id>``), tagged ``tags``; returns its id."""
        return self._c.json("corex.restore", {"url": url}, timeout=timeout, tags=tags)

    def nic_add(self, container: int, nic: dict[str, Any]) -> Any:
        return self._json("corex.nic-add", container=container, nic=nic)

    def nic_remove(self, container: int, index: int) -> Any:
        return self._json("corex.nic-remove", container=container, index=index)

    def portforward_add(self, container: int, host_port: int | str,
                        container_port: int) -> Any:
        return self._json("corex.portforward-add", container=container, host_port=host_port,
                          container_port=container_port)

    def portforward_remove(self, container: int, host_port: int | str,
                           container_port: int) -> Any:
        return self._json("corex.portforward-remove", container=container,
                          host_port=host_port, container_port=container_port)

    def client(self, container: int) -> Any:
        """A client whose commands run inside ``container`` (same API as the node's:
        system, bash, raw, json, sync, upload/download, info, job, process, filesystem)."""
        from core0_client.container import ContainerClient

        return ContainerClient(self._c, container)


MANAGERS = {"container": ContainerManager}
