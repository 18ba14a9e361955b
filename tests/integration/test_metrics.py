"""The Prometheus endpoint of a real node: scraped over HTTP, parsed with
``prometheus_client.parser``, and printed by ``core0 metrics``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import ROOT, free_port, start_node, unavailable, wait_until
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint(tmp_path: Path) -> None:
    port = free_port()
    env = {"CORE0_METRICS_PORT": str(port)}
    node = start_node(tmp_path / "state", env=env)
    try:
        with node.client(timeout=20) as c:
            c.ping()
            c.system("echo hi").get()
            c.raw("no.such", {}).get()
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            with urllib.request.urlopen(url, timeout=10) as r:
                return _samples(r.read().decode())

        s = scrape()
        assert s[("core0_commands_total", (("command", "core.ping"), ("state", "SUCCESS")))] >= 1
        assert s[("core0_commands_total", (("command", "core.system"),
                                           ("state", "SUCCESS")))] >= 1
        assert s[("core0_commands_total", (("command", ""), ("state", "UNKNOWN_CMD")))] >= 1
        assert s[("core0_job_duration_seconds_count", (("command", "core.system"),))] >= 1
        assert s[("core0_job_duration_seconds_bucket", (("command", "core.system"),
                                                        ("le", "+Inf")))] >= 1
        assert s[("core0_dispatcher_events_total", (("event", "accepted"),))] >= 1
        assert ("core0_jobs_running", ()) in s
        assert s[("core0_host_memory_bytes", (("kind", "total"),))] > 0
        assert 0 <= s[("core0_host_cpu_percent", ())] <= 100
        assert s[("core0_host_net_bytes_total", (("direction", "rx"), ("nic", "lo")))] > 0
        assert any(k[0] == "core0_host_disk_bytes" for k in s)
        assert wait_until(lambda: ("core0_queue_length", (("list", "queue"),
                                   ("queue", "core:default"))) in scrape(), 15)
        r = subprocess.run([sys.executable, "-m", "core0", "metrics", "--state-dir",
                            str(node.state_dir)], capture_output=True, text=True, timeout=60,
                           cwd=str(ROOT), env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        assert ("core0_commands_total", (("command", "core.ping"),
                                         ("state", "SUCCESS"))) in _samples(r.stdout)
        # the supervisor's counts: the dispatcher killed once is started twice, ended once
        def service(name: str) -> tuple[float, float] | None:
            try:
                got = scrape()
            except OSError:  # the dispatcher (the endpoint's server) is starting again
                return None
            lab = (("service", name),)
            if ("core0_service_starts_total", lab) not in got:
                return None
            return (got[("core0_service_starts_total", lab)],
                    got[("core0_service_ends_total", lab)])
        assert wait_until(lambda: service("dispatcher") == (1, 0), 15), service("dispatcher")
        os.kill(node.dispatcher_pid(), 9)
        assert wait_until(lambda: service("dispatcher") == (2, 1), 30), service("dispatcher")
        assert service("redis-server") == (1, 0)
    finally:
        node.stop()


def test_core0_metrics_off_is_an_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "core0", "metrics", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                       env={k: v for k, v in os.environ.items() if k != "CORE0_METRICS_PORT"})
    assert r.returncode == 2 and "metrics.port is 0" in r.stderr


def test_aggregator_query_from_job_stats_lines(tmp_path: Path) -> None:
    node = start_node(tmp_path / "state")
    try:
        with node.client(timeout=20) as c:
            script = ("echo '10::test.temp:20|A|id=probe1,room=lab'; "
                      "echo '10::test.temp:30|A|id=probe1,room=lab'; "
                      "echo '10::test.other:1|A'; echo 'plain line'")
            assert c.system(["sh", "-c", script]).get().state.value == "SUCCESS"
            out = c.json("aggregator.query", {"key": "test.temp"})
            assert list(out) == ["test.temp/probe1"]
            st = out["test.temp/probe1"]
            assert st["op"] == "A" and st["last_value"] in (20, 30) and st["last_time"] > 0
            assert {t["Key"]: t["Value"] for t in st["tags"]} == {"id": "probe1", "room": "lab"}
            assert set(st["current"]) == {"300", "3600"}
            for sample in st["current"].values():
                assert set(sample) == {"avg", "total", "max", "count", "start"}
                assert sample["count"] >= 1 and sample["start"] > 0
            assert "test.other" in c.json("aggregator.query", {})
            assert c.json("aggregator.query", {"tags": {"room": "attic"}}) == {}
    finally:
        node.stop()


def test_job_log_syncs_follow_appendfsync(tmp_path: Path) -> None:
    """On a disk state dir the job logs are synced as the AOF is: every step that matters with
    ``always``, at most once a second with ``everysec`` (the default); a tmpfs never."""
    from core0.jobs.state import _is_persistent

    disk = tmp_path if _is_persistent(tmp_path) else None
    shm = Path("/dev/shm")
    if disk is None or not shm.is_dir() or _is_persistent(shm):
        unavailable("a disk directory and a tmpfs at /dev/shm")
    shm_dir = Path(tempfile.mkdtemp(prefix="core0-test-", dir=shm))
    got = {}
    try:
        for name, state, policy in (("always", disk / "a", "always"),
                                    ("everysec", disk / "e", None),
                                    ("tmpfs", shm_dir / "t", "always")):
            port = free_port()
            env = {"CORE0_METRICS_PORT": str(port)}
            if policy:
                env["CORE0_REDIS_APPENDFSYNC"] = policy
            node = start_node(state, env=env)
            try:
                with node.client(timeout=20) as c:
                    t0 = time.monotonic()
                    for _ in range(20):
                        assert c.system("true").get().state == "SUCCESS"
                    elapsed = time.monotonic() - t0
                url = f"http://127.0.0.1:{port}/metrics"

                def syncs(url: str = url) -> float:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        return _samples(r.read().decode())[("core0_job_log_syncs_total", ())]

                if name == "everysec":  # the last steps are synced within a second
                    before = syncs()
                    time.sleep(1.5)
                    after = syncs()
                    assert after == syncs()
                    got[name] = (before, after, elapsed)
                else:
                    got[name] = (syncs(), syncs(), elapsed)
            finally:
                node.stop()
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
    # two synced steps per job (spawning, exited), each before the dispatcher goes on
    assert got["always"][0] == 40
    before, after, elapsed = got["everysec"]
    assert 1 <= after <= int(elapsed) + 3, got
    assert got["tmpfs"][0] == 0
