"""0-core's client, core methods and the info/job/process/config/logger managers."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from compat_fixtures import IN_QEMU

pytest_plugins = ["storage_fixtures", "compat_fixtures"]

pytestmark = pytest.mark.root


def test_ping_system_bash(cl: Any, record: Any) -> None:
    assert cl.ping().startswith("PONG")
    record("ping", '`"PONG <version>"`')
    r = cl.system("echo hello world").get()
    assert (r.state, r.code, r.stdout) == ("SUCCESS", 0, "hello world\n")
    assert cl.system("sh -c 'exit 3'").get().code == 1003
    r = cl.system("cat", stdin="in").get()
    assert r.stdout == "in"
    r = cl.system("printenv X", env={"X": "y"}, dir="/tmp").get()
    assert r.stdout == "y\n"
    record("system", "`Response`; `.get()`: state, code (1000+exit), stdout, stderr; stdin, "
           "env, dir honoured")
    r = cl.bash("echo a; echo b >&2; exit 2").get()
    assert (r.state, r.code, r.stdout, r.stderr) == ("ERROR", 1002, "a\n", "b\n")
    record("bash", "`Response`; `.get()` as system")


def test_raw_sync_json_response_for(cl: Any, zc: Any, record: Any) -> None:
    resp = cl.raw("core.ping", {}, tags=["t1"])
    res = resp.get()
    assert res.state == "SUCCESS" and res.level == 20 and json.loads(res.data).startswith("PONG")
    assert res.payload["tags"] == ["t1"] and res.starttime > 0
    assert resp.exists and not resp.running
    record("raw", "`Response` (`id`, `exists`, `running`, `get`, `stream`)")
    assert cl.sync("core.ping", {}).state == "SUCCESS"
    with pytest.raises(zc.ResultError) as e:
        cl.sync("core.system", {"name": "false"})
    assert e.value.code == 1001
    record("sync", "`Return`; `ResultError(data, code)` unless SUCCESS")
    assert cl.json("info.version", {})["version"]
    with pytest.raises(zc.ResultError) as e:
        cl.json("no.such.command", {})
    assert e.value.code == 404
    record("json", "the decoded `data`; unknown command: `ResultError` 404 (UNKNOWN_CMD)")
    again = cl.response_for(resp.id).get()
    assert again.id == resp.id and again.data == res.data
    with pytest.raises(zc.JobNotFoundError):
        cl.response_for("never-" + os.urandom(4).hex()).get(1)
    record("response_for", "the same result again within its TTL; `JobNotFoundError` after")


def test_an_extension_declared_in_the_config(cl: Any, zc: Any) -> None:
    """0-core's ``[extension."<name>"]`` tables (compat_fixtures.EXTENSIONS) are commands its
    client calls as any other: placeholders filled from the arguments, ``20:::`` output as
    JSON data, a missing argument a ResultError 400."""
    r = cl.raw("compat.hello", {"who": "world", "count": 3}).get()
    assert (r.state, r.stdout) == ("SUCCESS", "hello world 3\n"), r
    assert cl.json("compat.json", {"n": 42}) == {"n": 42}
    with pytest.raises(zc.ResultError) as e:
        cl.json("compat.json", {})
    assert e.value.code == 400


def test_subscribe_and_stream(cl: Any, record: Any) -> None:
    job = cl.bash("sleep 0.5; echo one; echo two >&2; sleep 0.3; echo three", stream=True)
    sub = cl.subscribe(job.id)
    got: list[tuple[int, str]] = []
    sub.stream(lambda level, text, flags: got.append((level, text)))
    texts = [t for _, t in got]
    assert "one" in texts and "three" in texts and (2, "two") in got
    assert job.get().stdout == "one\nthree\n"
    record("subscribe", "a `Response` whose `.stream(cb)` relays the job's output "
           "(level 1 stdout, 2 stderr) until it ends")


def test_info(cl: Any, record: Any) -> None:
    cpus = cl.info.cpu()
    assert cpus and {"cpu", "modelName", "mhz", "cores", "flags"} <= set(cpus[0])
    record("info.cpu", "[{cpu, vendorId, family, model, modelName, mhz, cores, cacheSize, "
           "flags...}] (gopsutil's names)")
    nics = cl.info.nic()
    lo = next(n for n in nics if n["name"] == "lo")
    assert isinstance(lo["operstate"], bool) and isinstance(lo["carrier"], bool)
    assert {"mtu", "hardwareaddr", "flags", "addrs", "speed"} <= set(lo)
    assert any(a["addr"].startswith("127.0.0.1") for a in lo["addrs"])
    record("info.nic", "[{name, mtu, hardwareaddr, flags, addrs [{addr}], speed, carrier, "
           "operstate (bool)}]; core0 adds state, up, stats")
    mem = cl.info.mem()
    assert {"total", "available", "used", "usedPercent", "free", "active", "inactive",
            "buffers", "cached"} <= set(mem) and mem["total"] > 0
    record("info.mem", "{total, available, used, usedPercent, free, active, inactive, "
           "buffers, cached, ...} bytes")
    disks = cl.info.disk()
    assert any(d["mountpoint"] == "/" for d in disks)
    assert {"device", "mountpoint", "fstype", "opts"} <= set(disks[0])
    record("info.disk", "[{device, mountpoint, fstype, opts}] (+ sizes)")
    os_ = cl.info.os()
    assert {"hostname", "uptime", "bootTime", "os", "platform", "kernelVersion"} <= set(os_)
    record("info.os", "{hostname, uptime, bootTime, procs, os, platform, platformVersion, "
           "kernelVersion, ...}")
    ports = cl.info.port()
    rp = [p for p in ports if p["network"] == "tcp" and p.get("port")]
    assert rp and all({"ip", "port", "pid"} <= set(p) for p in rp)
    for p in ports:
        if p["network"] == "unix":
            assert p["unix"].startswith(("/", "@"))
    record("info.port", "[{network tcp/udp(6)/unix, ip, port | unix, pid}]")
    v = cl.info.version()
    assert {"branch", "revision", "dirty"} <= set(v)
    record("info.version", "{branch, revision, dirty} (+ version)")
    try:
        dmi = cl.json("info.dmi", {"types": []})
    except Exception as e:  # the client raises ResultError
        assert getattr(e, "code", 0) == 412 and "DMI" in str(e)
    else:
        assert {"tooling", "sections"} <= set(dmi)
    record("info.dmi", "{tooling, sections [{handleline, typestr, typenum, subsections}]} "
           f"(parsed dmidecode; {IN_QEMU}); a machine without a DMI table: 412 naming the "
           "reason")


def test_job_manager(cl: Any, record: Any) -> None:
    job = cl.system("sleep 30")
    deadline = time.monotonic() + 10
    while not any(j.get("id") == job.id for j in cl.job.list()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mine = cl.job.list(job.id)
    assert len(mine) == 1 and mine[0]["pid"] > 0 and "cpu" in mine[0]
    record("job.list", "[{id, cmd, pid, starttime, cpu, rss, vms, ...}] (one job with `id`)")
    assert cl.job.kill(job.id) is True
    assert job.get().state in ("KILLED", "ERROR")
    assert cl.job.kill("no-such-job-" + os.urandom(3).hex()) is False
    record("job.kill", "`True`; `False` for an unknown id (as 0-core)")
    r = cl._redis  # a recurring job, as 0-core's later clients submit it
    jid = "compat-recurring-" + os.urandom(3).hex()
    r.rpush("core:default", json.dumps({"id": jid, "command": "core.system",
                                        "arguments": {"name": "true"},
                                        "recurring_period": 1}))
    deadline = time.monotonic() + 10
    while not any(j["id"] == jid for j in cl.job.list()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cl.json("job.unschedule", {"id": jid}) is True
    assert cl.response_for(jid).get(15).state == "SUCCESS"
    record("job.unschedule", "`True`; the recurring job ends after its current run")


def test_process_manager(cl: Any, record: Any) -> None:
    procs = cl.process.list()
    me = next(p for p in procs if p["pid"] == os.getpid())
    assert isinstance(me["cmdline"], str) and "pytest" in me["cmdline"]
    assert isinstance(me["rlimit"], list) and me["rlimit"][7]["resource"] == 7  # NOFILE
    assert {"ppid", "name", "createtime", "cpu", "rss", "vms", "swap", "ofd"} <= set(me)
    assert cl.process.list(os.getpid())[0]["pid"] == os.getpid()
    record("process.list", "[{pid, ppid, cmdline (string), name, createtime, cpu {user, "
           "system, ...}, rss, vms, swap, rlimit [{resource, soft, hard, used}], ofd}]")
    job = cl.system("sleep 30")
    deadline = time.monotonic() + 10
    while not (pid := next((j["pid"] for j in cl.job.list(job.id) if j.get("pid")), 0)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cl.process.kill(pid, signal.SIGKILL) is None
    assert job.get().state in ("KILLED", "ERROR")
    record("process.kill", "`None`; the process got the signal")


def test_config_and_logger(cl: Any, zc: Any, record: Any) -> None:
    cfg = cl.config.get()
    assert isinstance(cfg, dict) and cfg
    record("config.get", "the node's loaded configuration (a dict)")
    try:
        assert cl.logger.set_level("DEBUG")["level"] == "DEBUG"
        assert cl.logger.set_level("NOTICE")["was"] == "DEBUG"
    finally:
        cl.logger.set_level("INFO")
    record("logger.set_level", "{level, was} (the dispatcher's log level)")
    assert cl.logger.reopen() == {"reopened": []}
    record("logger.reopen", "{reopened: [log files]} ([] when logging to the console)")


def _records_of(cl: Any, key: str, job_id: str) -> list[dict[str, Any]]:
    """The records of ``job_id`` popped from a logger list, up to its EOF record."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = cl._redis.blpop(key, 5)
        if item is None:
            continue
        rec = json.loads(item[1])
        if rec["command"] == job_id:
            out.append(rec)
            if rec["message"]["meta"] & 0x6:  # EOF
                return out
    raise AssertionError(f"no EOF of {job_id} in {key}: {out}")


def test_logger_subscribe(cl: Any, zc: Any, record: Any) -> None:
    """0-core's aggregated log: a list fed with every job's records (LogRecord JSON)."""
    key = cl.logger.subscribe()
    assert key.startswith("logger:") and len(key) > len("logger:")
    job = cl.bash("echo aggregated; echo oops >&2")
    assert job.get().state == "SUCCESS"
    recs = _records_of(cl, key, job.id)
    lines = {(r["message"]["meta"] >> 16, r["message"]["message"]) for r in recs}
    assert {(1, "aggregated"), (2, "oops")} <= lines, recs
    assert all(r["core"] == 0 and r["message"]["epoch"] > 0 for r in recs)
    record("logger.subscribe", "the list's key (`logger:<uuid>`, or `logger:<queue>` given); "
           "every job's output records are pushed to it as 0-core's LogRecord JSON")
    # the git master client's form also sends levels (the PyPI one only the queue)
    only = cl.json("logger.subscribe", {"queue": "compat-errors", "levels": [2]})
    assert only == "logger:compat-errors"
    job = cl.bash("echo out; echo err >&2")
    job.get()
    recs = _records_of(cl, only, job.id)
    assert [r["message"]["message"] for r in recs[:-1]] == ["err"], recs  # stderr, then EOF
    assert cl.logger.unsubscribe(key) is None and cl.logger.unsubscribe(only) is None
    record("logger.unsubscribe", "`None`; the list is fed no more (404 for an unknown one)")
    with pytest.raises(zc.ResultError) as e:
        cl.logger.unsubscribe(key)
    assert e.value.code == 404


ZT = "core0 does not run ZeroTier"
RT = "core0 has no rtinfo agent"


def _reason(r: Any) -> str:
    """The text of a failed job's result (its data, a JSON string)."""
    return str(json.loads(r.data)) if r.data else ""


def test_not_served_answers_501(cl: Any, zc: Any, record: Any) -> None:
    """zerotier/rtinfo: a clear 501 naming the reason, never UNKNOWN_CMD, through the
    client's own methods where it has them (PyPI: zerotier.*; master: rtinfo)."""
    net = "1d71939404587f3c"
    for method, call in (("zerotier.join", lambda: cl.zerotier.join(net)),
                         ("zerotier.leave", lambda: cl.zerotier.leave(net))):
        with pytest.raises(RuntimeError) as rt:
            call()  # the client raises RuntimeError(msg, stderr): the code is not kept
        assert rt.value.args[0].startswith("failed to")
        assert ZT in str(rt.value.args[1]), rt.value.args
        r = cl.raw(method, {"network": net}).get()  # the same request: its code
        assert (r.state, r.code) == ("ERROR", 501) and ZT in _reason(r)
        record(method, "`RuntimeError('failed to … zerotier network', <stderr naming the "
               "reason>)`; the job's code is 501: core0 does not run ZeroTier "
               "(docs/compat.md)", works=False)
    for method, call in (("zerotier.list", cl.zerotier.list),
                         ("zerotier.info", cl.zerotier.info)):
        with pytest.raises(zc.ResultError) as e:
            call()
        assert e.value.code == 501 and ZT in e.value.message, e.value
        record(method, "`ResultError` 501: core0 does not run ZeroTier (docs/compat.md)",
               works=False)
    # the master client: rtinfo.start/stop use raw(...).get() and raise RuntimeError on
    # failure, list and socat.* use json
    for method, args, reason in (
            ("rtinfo.start", {"host": "127.0.0.1", "port": 8999, "disks": []}, RT),
            ("rtinfo.stop", {"host": "127.0.0.1", "port": 8999}, RT)):
        r = cl.raw(method, args).get()
        assert (r.state, r.code) == ("ERROR", 501) and reason in _reason(r), r
        assert reason in r.stderr, r.stderr
        record(method, "the job fails with code 501, the reason in its data and stderr (the "
               "client's `RuntimeError`): core0 has no rtinfo agent (docs/compat.md)",
               works=False)
    with pytest.raises(zc.ResultError) as e:
        cl.json("rtinfo.list", {})
    assert e.value.code == 501 and RT in e.value.message, e.value
    # server commands the client has no method for: Go profiling, flist making
    for command, args, why in (("pprof.cpu.start", {}, "py-spy"),
                               ("corex.flist.create", {"container": 1, "flist": "/f.flist",
                                                       "storage": "zdb://h:9900", "src": "/",
                                                       "token": "t", "hub": "h"}, "flists")):
        with pytest.raises(zc.ResultError) as e:
            cl.json(command, args)
        assert e.value.code == 501 and why in e.value.message, e.value
    record("rtinfo.list", "`ResultError` 501: core0 has no rtinfo agent (docs/compat.md)",
           works=False)


def test_socat_reserve_and_list(cl: Any, zc: Any, record: Any) -> None:
    """socat.* (0-core master's client, through json): reserve hands out free host ports,
    held for the forwards to come; a forward takes its port out of the holds; list shows the
    forwards' DNAT rules."""
    first = cl.json("socat.reserve", {"number": 3})
    assert len(set(first)) == 3 and all(1024 <= p <= 65535 for p in first), first
    second = cl.json("socat.reserve", {"number": 2})
    assert not set(first) & set(second), (first, second)  # held: never handed out twice
    with pytest.raises(zc.ResultError) as e:
        cl.json("socat.reserve", {"number": 0})
    assert e.value.code == 400
    record("socat.reserve", "[ports]: the lowest free host ports from 1024 (not listened on, "
           "no forward on them), held 2 min or until a forward takes one, as 0-core")
    port = min(first)
    cl.json("nft.forward_add", {"owner": "user:socat", "ip": "10.99.0.2",
                                "forwards": {str(port): 80}})
    try:
        rules = cl.json("socat.list", {})
        assert [r for r in rules if f"dport {port} dnat ip to 10.99.0.2:80" in r], rules
    finally:
        cl.json("nft.forward_remove", {"owner": "user:socat", "src": [str(port)]})
    assert not [r for r in cl.json("socat.list", {}) if f"dport {port} " in r]
    record("socat.list", "[rule text]: the DNAT rules of the node's port forwards (0-core: its "
           "`nat pre` rules)")
    # the forward took the port out of the holds: free again, the lowest one
    assert cl.json("socat.reserve", {"number": 1}) == [port]


def test_aggregator_query(cl: Any, record: Any) -> None:
    """aggregator.query (PyPI and master: ``query(key=None, **tags)``) after a job's stats
    lines (``10::key:value|A|tags``)."""
    key = "compat.temp." + os.urandom(3).hex()
    script = (f"echo '10::{key}:20|A|id=probe1,room=lab'; "
              f"echo '10::{key}:30|A|id=probe1,room=lab'; echo 'plain line'")
    assert cl.bash(script).get().state == "SUCCESS"
    out = cl.aggregator.query(key)
    assert list(out) == [f"{key}/probe1"]
    st = out[f"{key}/probe1"]
    assert st["op"] == "A" and st["last_value"] in (20, 30) and st["last_time"] > 0
    assert {t["Key"]: t["Value"] for t in st["tags"]} == {"id": "probe1", "room": "lab"}
    assert set(st["current"]) == {"300", "3600"}
    for sample in st["current"].values():
        assert {"avg", "total", "max", "count", "start"} <= set(sample) and sample["count"] >= 1
    assert f"{key}/probe1" in cl.aggregator.query()  # the client's default: every key
    assert cl.aggregator.query(key, room="lab") == out
    assert cl.aggregator.query(key, room="attic") == {}
    record("aggregator.query", "{\"key/id\": {op, last_value, last_time, tags [{Key, Value}], "
           "current {\"300\", \"3600\": {avg, total, max, count, start}}}} from jobs' `10::` "
           "lines; tags filter")


ROUTER = "/var/cache/router.yaml"


def test_zfs_router_config(cl: Any, record: Any) -> None:
    """threefoldtech/0-core master's ``zfs`` manager is file I/O on the 0-fs router table:
    ``config`` = filesystem.exists + download + yaml.load, ``config = t`` = upload of
    yaml.dump({pools, lookup, cache}), ``purge`` = filesystem.remove, ``set_cache(dest)`` =
    ``config = {pools: {local: {"00:FF": dest}}, lookup: [local], cache: [local]}``."""
    import io

    import yaml

    if cl.filesystem.exists(ROUTER):  # the node shares this machine's files: keep its own
        saved = io.BytesIO()
        cl.filesystem.download(ROUTER, saved)
    else:
        saved = None

    def get_config() -> Any:
        if not cl.filesystem.exists(ROUTER):
            return None
        buf = io.BytesIO()
        cl.filesystem.download(ROUTER, buf)
        buf.seek(0)
        return yaml.safe_load(buf)

    def set_config(table: dict[str, Any]) -> None:
        final = {"pools": table["pools"], "lookup": table["lookup"],
                 "cache": table.get("cache", [])}
        assert cl.filesystem.upload(ROUTER, io.BytesIO(yaml.dump(final).encode())) is None

    try:
        table = {"pools": {"local": {"00:FF": "redis://192.168.1.2:6379"}},
                 "lookup": ["local"], "cache": []}
        set_config(table)
        assert get_config() == table
        record("zfs.config", "get: the table (dict) or `None` when absent; set: `None`, the "
               "YAML written (filesystem.exists/download/upload of /var/cache/router.yaml)")
        dest = "zdb://127.0.0.1:9900"
        set_config({"pools": {"local": {"00:FF": dest}}, "lookup": ["local"],
                    "cache": ["local"]})
        assert get_config() == {"pools": {"local": {"00:FF": dest}}, "lookup": ["local"],
                                "cache": ["local"]}
        record("zfs.set_cache", "`None`; the table is one local pool for every hash, "
               "lookup and cache (filesystem.upload)")
        assert cl.filesystem.remove(ROUTER) in (None, True)
        assert get_config() is None
        record("zfs.purge", "`None`; the file is gone, `config` is `None` again "
               "(filesystem.remove)")
    finally:
        if saved is not None:
            saved.seek(0)
            cl.filesystem.upload(ROUTER, saved)
        elif cl.filesystem.exists(ROUTER):
            cl.filesystem.remove(ROUTER)
