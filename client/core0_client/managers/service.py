"""Managers of boot services and cloud-config."""

from __future__ import annotations

from typing import Any

from core0_client.managers.base import Manager


class ServiceManager(Manager):
    """service.*: the node's declared boot services, and core.reload."""

    def list(self) -> Any:
        return self._json("service.list")

    def get(self, id: str) -> Any:
        return self._json("service.get", id=id)

    def start(self, id: str) -> Any:
        return self._json("service.start", id=id)

    def stop(self, id: str) -> Any:
        return self._json("service.stop", id=id)

    def restart(self, id: str) -> Any:
        return self._json("service.restart", id=id)

    def reload(self) -> Any:
        """Re-read the configuration; restart only services whose spec changed."""
        return self._json("core.reload")


class CloudConfigManager(Manager):
    """cloudconfig.apply: apply a cloud-config now."""

    def apply(self, source: str | None = None, stage: str | None = None,
              force: bool | None = None) -> Any:
        return self._json("cloudconfig.apply", source=source, stage=stage, force=force)


MANAGERS = {"service": ServiceManager, "cloudconfig": CloudConfigManager}
