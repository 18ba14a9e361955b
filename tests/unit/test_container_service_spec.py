"""``[startup.<id>] container = {…}``: parsed into a ``container.run`` service whose hash
covers the container spec; ``container`` excludes ``name``/``args``; its arguments are
checked against container.run's schema at load."""

from __future__ import annotations

import pytest

from core0.boot.spec import SpecError, parse_spec

BASE = {"root": "busybox", "command": ["sh", "-c", "echo {greeting}"], "hostname": "h1"}


def test_container_service_parses_to_container_run() -> None:
    s = parse_spec("web", {"container": BASE, "protected": True}, {"greeting": "hi"})
    assert s.name == "container.run"
    assert s.args["command"] == ["sh", "-c", "echo hi"]  # {var} substituted
    other = parse_spec("web", {"container": {**BASE, "hostname": "h2"}, "protected": True},
                       {"greeting": "hi"})
    assert other.hash != s.hash  # drift: a changed container spec restarts the service
    same = parse_spec("web", {"container": dict(BASE), "protected": True}, {"greeting": "hi"})
    assert same.hash == s.hash


def test_container_service_rules() -> None:
    with pytest.raises(SpecError, match="excludes name and args"):
        parse_spec("web", {"container": BASE, "name": "bash"}, {})
    with pytest.raises(SpecError, match="excludes name and args"):
        parse_spec("web", {"container": BASE, "args": {"script": "x"}}, {})
    with pytest.raises(SpecError, match="command"):
        parse_spec("web", {"container": {"root": "busybox"}}, {})
    with pytest.raises(SpecError):
        parse_spec("web", {"container": {**BASE, "command": []}}, {})
