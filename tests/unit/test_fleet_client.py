"""The fleet client's pure parts: node selection, CLI words → command, one API for both."""

from __future__ import annotations

import pytest
from core0_client.fleet import AsyncFleet, Fleet, FleetAPI, NodeInfo, _select
from core0_client.fleetcli import FleetUsageError, fleet_command


def _node(nid: str, *tags: str) -> NodeInfo:
    return NodeInfo(nid, f"{{{nid}}}:", list(tags), {"id": nid}, 0.0, 0.0)


def test_select_by_ids_tags_or_all() -> None:
    nodes = [_node("a", "web", "eu"), _node("b", "web"), _node("c", "db", "eu")]
    assert [n.id for n in _select(nodes, None, None)[0]] == ["a", "b", "c"]
    assert [n.id for n in _select(nodes, None, ["web", "eu"])[0]] == ["a"]
    assert [n.id for n in _select(nodes, None, ["eu"])[0]] == ["a", "c"]
    got, missing = _select(nodes, ["c", "x", "c"], ["ignored"])
    assert [n.id for n in got] == ["c"] and missing == ["x"]


def test_fleet_command_words() -> None:
    assert fleet_command(["ping"]) == ("core.ping", {})
    assert fleet_command(["system", "--", "uname", "-r"])[1]["args"] == ["-r"]
    assert fleet_command(["info", "cpu"]) == ("info.cpu", {})
    assert fleet_command(["job.kill", "id=x", "signal=9"]) == ("job.kill",
                                                                {"id": "x", "signal": 9})
    assert fleet_command(["raw", "core.ping", "{}"]) == ("core.ping", {})
    for bad in (["system"], ["raw"], ["raw", "x", "[1]"], ["job", "kill", "positional"]):
        with pytest.raises(FleetUsageError):
            fleet_command(bad)


def test_sync_and_async_fleets_share_one_api() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(Fleet) == public(AsyncFleet)
    assert {"nodes", "run", "stream", "close"} <= public(Fleet)
    assert issubclass(Fleet, FleetAPI) and issubclass(AsyncFleet, FleetAPI)
