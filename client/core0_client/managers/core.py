"""Managers of the base domains: info, job, process, config, filesystem."""

from __future__ import annotations

from typing import Any

from core0_client.managers.base import Manager


class InfoManager(Manager):
    """info.*: what the node is."""

    def cpu(self) -> Any:
        return self._json("info.cpu")

    def mem(self) -> Any:
        return self._json("info.mem")

    def disk(self) -> Any:
        return self._json("info.disk")

    def nic(self) -> Any:
        return self._json("info.nic")

    def os(self) -> Any:
        return self._json("info.os")

    def port(self) -> Any:
        return self._json("info.port")

    def version(self) -> Any:
        return self._json("info.version")


class JobManager(Manager):
    """job.*: the node's jobs."""

    def list(self, id: str | None = None) -> Any:
        return self._json("job.list", id=id)

    def kill(self, id: str, signal: int = 15) -> Any:
        return self._json("job.kill", id=id, signal=signal)

    def unschedule(self, id: str) -> Any:
        return self._json("job.unschedule", id=id)

    def killall(self) -> Any:
        return self._json("job.killall")


class ProcessManager(Manager):
    """process.*: every process of the node."""

    def list(self, pid: int | None = None) -> Any:
        return self._json("process.list", pid=pid)

    def kill(self, pid: int, signal: int = 15) -> Any:
        return self._json("process.kill", pid=pid, signal=signal)


class ConfigManager(Manager):
    def get(self) -> Any:
        return self._json("config.get")


class LoggerManager(Manager):
    """logger.*: the dispatcher's own log, and 0-core's aggregated job log."""

    def set_level(self, level: str) -> Any:
        """CRITICAL, ERROR, WARNING, NOTICE, INFO or DEBUG; returns {level, was}."""
        return self._json("logger.set_level", level=level)

    def reopen(self) -> Any:
        return self._json("logger.reopen")

    def subscribe(self, queue: str | None = None, levels: list[int] | None = None) -> Any:
        """Have the list ``logger:<queue>`` (a new name when None) fed with the output
        records of every job this queue may see; returns its key (read it with BLPOP)."""
        return self._json("logger.subscribe", queue=queue, levels=levels)

    def unsubscribe(self, queue: str) -> Any:
        return self._json("logger.unsubscribe", queue=queue)


class FilesystemManager(Manager):
    """filesystem.*; ``upload``/``download`` are on the client's ``filesystem`` (they loop)."""

    def open(self, file: str, mode: str = "r", perm: int = 0o644) -> Any:
        return self._json("filesystem.open", file=file, mode=mode, perm=perm)

    def read(self, fd: str) -> Any:
        return self._json("filesystem.read", fd=fd)

    def write(self, fd: str, block: str) -> Any:
        return self._json("filesystem.write", fd=fd, block=block)

    def close(self, fd: str) -> Any:
        return self._json("filesystem.close", fd=fd)

    def exists(self, path: str) -> Any:
        return self._json("filesystem.exists", path=path)

    def list(self, path: str) -> Any:
        return self._json("filesystem.list", path=path)

    def mkdir(self, path: str) -> Any:
        return self._json("filesystem.mkdir", path=path)

    def remove(self, path: str) -> Any:
        return self._json("filesystem.remove", path=path)

    def move(self, path: str, destination: str) -> Any:
        return self._json("filesystem.move", path=path, destination=destination)

    def chmod(self, path: str, mode: int, recursive: bool = False) -> Any:
        return self._json("filesystem.chmod", path=path, mode=mode, recursive=recursive)

    def chown(self, path: str, user: str, group: str = "", recursive: bool = False) -> Any:
        return self._json("filesystem.chown", path=path, user=user, group=group,
                          recursive=recursive)


MANAGERS = {
    "info": InfoManager,
    "job": JobManager,
    "process": ProcessManager,
    "config": ConfigManager,
    "logger": LoggerManager,
    "filesystem": FilesystemManager,
}
