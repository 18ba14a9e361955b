"""A first end-to-end check through a real node."""

from core0_client import State


def test_ping_and_system(client) -> None:
    assert client.ping().startswith("PONG ")
    r = client.system("echo hi").get(10)
    assert r.state is State.SUCCESS
    assert r.stdout == "hi\n"
    r = client.system(["sh", "-c", "exit 7"]).get(10)
    assert r.code == 1007
