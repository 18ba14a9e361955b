"""0-core's own Python client (zeroos.core0.client) drives core0's containers: create,
dispatch system/bash into it, list/find/terminate. Real runc, real netns, bridge, nft.

The client is used unchanged except for ``Response.exists``/``running``, which call ledis's
``LKEYEXISTS``/``LTTL`` (0-core ran ledisdb); the script maps them to Redis's EXISTS/TTL.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from conftest import unavailable
from sandbox_fixtures import ContainerNode, busybox_rootfs, in_netns

SCRIPT = """
import json, sys
from zeroos.core0.client import Client, client as zc
def _flag(self): return "{}:flag".format(self._queue)
zc.Response.exists = property(lambda self: bool(self._client._redis.exists(_flag(self))))
zc.Response.running = property(lambda self: bool(self._client._redis.exists(_flag(self)))
                               and self._client._redis.ttl(_flag(self)) == -1)
cl = Client("127.0.0.1", int(sys.argv[1]), ssl=False, timeout=60)
out = {}
cid = cl.container.create(sys.argv[2], hostname="probe", tags=["ztag", "other"],
                          env={"GREETING": "hi"}).get(60)
out["cid"] = cid
cc = cl.container.client(cid)
r = cc.system("sh -c 'echo $GREETING; hostname; cat /proc/1/cmdline'").get(60)
out["system"] = [r.state, r.stdout, r.code, r.payload.get("container")]
r = cc.bash("echo from-bash; ip -o -4 addr show eth0; exit 3").get(60)
out["bash"] = [r.state, r.stdout, r.code]
out["list"] = cl.container.list()
out["find"] = cl.container.find("ztag")
out["find_none"] = cl.container.find("nope")
cl.container.terminate(cid)
out["after"] = cl.container.list()
print(json.dumps(out))
"""


def _zeroos() -> None:
    try:
        import zeroos.core0.client  # noqa: F401
    except ImportError:
        unavailable("0-core-client is not installed (scripts/install-deps.sh installs it)")


def test_zeroos_client_container_lifecycle(cnode: ContainerNode) -> None:
    _zeroos()
    rootfs = busybox_rootfs(Path(tempfile.mkdtemp(prefix="bb-", dir=cnode.dir)) / "rootfs")
    res = in_netns(cnode, SCRIPT, str(cnode.port), str(rootfs))
    assert res.returncode == 0, res.stderr + cnode.log_text()[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    cid = out["cid"]
    assert isinstance(cid, int) and cid >= 1
    state, stdout, code, container = out["system"]
    assert (state, code, container) == ("SUCCESS", 0, cid)
    lines = stdout.splitlines()
    assert lines[0] == "hi" and lines[1] == "probe"
    assert lines[2].split("\0")[0] == "/.core0-init"  # PID 1 is the init
    state, stdout, code = out["bash"]
    assert (state, code) == ("ERROR", 1003)
    assert "from-bash" in stdout and f"172.18.0.{cid + 1}/16" in stdout
    entry = out["list"][str(cid)]
    assert entry["container"]["root"] == str(rootfs)
    assert entry["container"]["pid"] > 0 and entry["container"]["status"] == "running"
    assert set(out["find"]) == {str(cid)} and out["find_none"] == {}
    assert str(cid) not in out["after"]
