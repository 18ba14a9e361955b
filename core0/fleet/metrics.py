"""The node's metrics as a Prometheus text endpoint (``prometheus_client``).

What is exported, on ``http://<metrics.bind>:<metrics.port>/metrics`` (loopback by default;
``metrics.port = 0`` turns it off; ``core0 metrics`` prints it):

* ``core0_commands_total{command, state}``: every result the node wrote (jobs, inline
  commands, refusals), by command and state; an unknown command is counted as ``command=""``,
  so the label set stays bounded by the registry;
* ``core0_job_duration_seconds{command}``: a histogram of their durations;
* ``core0_dispatcher_events_total{event}``: the dispatcher's counters (accepted, inline, errors,
  dead_letters, duplicates, redis_errors);
* ``core0_jobs_running``; ``core0_queue_length{queue, list}`` (the queue, its processing
  list and its dead letters; refreshed from Redis every few seconds);
* ``core0_service_starts_total{service}``, ``core0_service_ends_total{service}``: how often the
  supervisor started each process it runs and how often one ended (a crash loop shows here);
* host monitors: ``core0_host_cpu_percent``, ``core0_host_load1``, ``core0_host_memory_bytes
  {kind}``, ``core0_host_disk_bytes{path, kind}``, ``core0_host_net_bytes_total{nic,
  direction}`` and ``core0_host_net_packets_total{nic, direction}``.

Each node has its own ``CollectorRegistry`` (nothing global), so tests can run many.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import psutil
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.utils import floatToGoString

from core0 import registry
from core0.config import Config

log = logging.getLogger(__name__)

#: seconds: from a ping to a long job
BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)
#: seconds between two reads of the queue lengths
QUEUE_EVERY = 5.0


class _Live:
    """A collector computing its metrics at scrape time (runs in the HTTP server's thread)."""

    def __init__(self, metrics: NodeMetrics):
        self.m = metrics

    def collect(self) -> Iterable[Metric]:
        return self.m.live()


class NodeMetrics:
    """The metrics of one dispatcher. ``stats``: its event counters (read at scrape time);
    ``jobs``: the number of jobs running; ``queues``: queue key → (processing, dead) keys,
    whose lengths :meth:`watch_queues` keeps current."""

    def __init__(self, cfg: Config, stats: Mapping[str, int], jobs: Callable[[], int],
                 queues: Mapping[str, tuple[str, str]],
                 log_syncs: Callable[[], int] = lambda: 0):
        self.cfg = cfg
        self.stats = stats
        self.jobs = jobs
        #: syncs of the job logs to their disk so far (core0.jobs.logsync)
        self.log_syncs = log_syncs
        self.queues = dict(queues)
        self.lengths: dict[tuple[str, str], int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        #: (command label, state) → results written; command label → [bucket counts, sum]
        self.counts: dict[tuple[str, str], int] = {}
        self.durations: dict[str, list[Any]] = {}
        self._labels: dict[str, str] = {}  # command → its label ("" when unknown)
        self.registry.register(_Live(self))  # type: ignore[arg-type]
        self._server: Any = None
        #: workload monitors (containers, VMs): called every QUEUE_EVERY s in the event loop
        #: by :meth:`watch_queues`; their last samples are served at scrape time
        self.samplers: list[Callable[[], Awaitable[list[Sample]]]] = []
        self.samples: list[Sample] = []
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    # ------------------------------------------------------------ hooks

    def result(self, command: str, state: str, seconds: float) -> None:
        """Count one result (the engine's and the dispatcher's hook).

        Plain dict and list increments, read by :meth:`live` at scrape time: every result
        passes here on the dispatcher's hot path, and prometheus_client's own Counter and
        Histogram (a lock per value, per update) cost a sequential ``core.ping`` about 8 %
        of its rate (docs/performance.md, "The inline path"). The event loop's thread is the
        only writer; a scrape (the HTTP server's thread) reads a snapshot."""
        name = self._labels.get(command)
        if name is None:
            spec = registry.get(command)
            name = command if spec is not None and not spec.internal else ""
            if len(self._labels) < 4096:
                self._labels[command] = name
        key = (name, state)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        h = self.durations.get(name)
        if h is None:
            h = self.durations[name] = [[0] * (len(BUCKETS) + 1), 0.0]
        seconds = max(0.0, seconds)
        h[0][bisect_left(BUCKETS, seconds)] += 1  # the first bucket whose bound is >= it
        h[1] += seconds

    # ------------------------------------------------------------ scrape

    def text(self) -> bytes:
        """The exposition text (what the endpoint serves)."""
        return bytes(generate_latest(self.registry))

    def live(self) -> Iterable[Metric]:
        results = CounterMetricFamily("core0_commands", "Results written, by command and state",
                                      labels=["command", "state"])
        for (name, state), n in sorted(self.counts.copy().items()):
            results.add_metric([name, state], float(n))
        yield results
        hist = HistogramMetricFamily("core0_job_duration_seconds",
                                     "Durations of the commands answered", labels=["command"])
        for name, (buckets, total) in sorted(self.durations.copy().items()):
            cumulative, acc = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), list(buckets), strict=True):
                acc += n
                cumulative.append((floatToGoString(bound), float(acc)))
            hist.add_metric([name], cumulative, sum_value=total)
        yield hist
        ev = CounterMetricFamily("core0_dispatcher_events", "Dispatcher events", labels=["event"])
        for k, v in sorted(self.stats.items()):
            ev.add_metric([k], float(v))
        yield ev
        yield GaugeMetricFamily("core0_jobs_running", "Jobs in flight", value=self.jobs())
        yield CounterMetricFamily(
            "core0_job_log_syncs", "Syncs of the process jobs' logs to their disk "
            "(redis.appendfsync: one per step with always, at most one a second with "
            "everysec; none on a tmpfs)", value=float(self.log_syncs()))
        ql = GaugeMetricFamily("core0_queue_length", "Lengths of the node's Redis lists",
                               labels=["queue", "list"])
        for (queue, kind), n in sorted(self.lengths.items()):
            ql.add_metric([queue, kind], n)
        yield ql
        yield from host_metrics([self.cfg.main.filesystem_root, self.cfg.main.state_dir])
        yield from workload_metrics(self.samples)

    # ------------------------------------------------------------ lifecycle

    def serve(self) -> int:
        """Start the HTTP endpoint (when ``metrics.port``); returns the port (0 = off)."""
        port = self.cfg.metrics.port
        if not port:
            return 0
        try:
            started = start_http_server(port, self.cfg.metrics.bind, registry=self.registry)
        except OSError as e:  # the bus matters more than its metrics: serve without them
            log.error("metrics: cannot listen on %s:%d (%s)", self.cfg.metrics.bind, port, e)
            return 0
        self._server = started[0] if isinstance(started, tuple) else None
        log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.bind, port)
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def watch_queues(self, r: Any, stop: asyncio.Event) -> None:
        """Keep the queue lengths current (one pipelined round trip every QUEUE_EVERY s)."""
        while not stop.is_set():
            try:
                pipe = r.pipeline(transaction=False)
                order = []
                for queue, (processing, dead) in self.queues.items():
                    for kind, key in (("queue", queue), ("processing", processing),
                                      ("dead", dead)):
                        pipe.llen(key)
                        order.append((queue, kind))
                for k, n in zip(order, await pipe.execute(), strict=True):
                    self.lengths[k] = int(n)
            except Exception as e:  # the pop loop reports Redis trouble; stale values stay
                log.debug("metrics: queue lengths not read (%s)", e)
            samples: list[Sample] = []
            for sampler in self.samplers:
                try:
                    samples += await sampler()
                except Exception as e:  # a monitor that fails leaves the others' samples
                    log.debug("metrics: a workload monitor failed (%s)", e)
            self.samples = samples
            try:
                await asyncio.wait_for(stop.wait(), QUEUE_EVERY)
            except TimeoutError:
                pass


#: one workload measurement: (metric, help, kind of counter, labels, value)
Sample = tuple[str, str, str, dict[str, str], float]


def service_samples(services: Iterable[Mapping[str, Any]]) -> list[Sample]:
    """Starts and ends of the processes the supervisor runs (the dispatcher, redis-server,
    libvirtd, DHCP clients…; its ``services`` op): a dispatcher that keeps crashing shows here,
    not only in a log."""
    out: list[Sample] = []
    for svc in services:
        labels = {"service": str(svc.get("name"))}
        out += [("core0_service_starts", "Starts of each process the supervisor runs",
                 "counter", labels, float(svc.get("starts") or 0)),
                ("core0_service_ends", "Ends (exits, signals) of each process the supervisor "
                 "runs", "counter", labels, float(svc.get("exits") or 0))]
    return out


def workload_metrics(samples: Iterable[Sample]) -> Iterable[Metric]:
    """The containers' and VMs' measurements as metric families (one per metric name)."""
    families: dict[str, Any] = {}
    for name, text, kind, labels, value in samples:
        fam = families.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = families[name] = cls(name, text, labels=sorted(labels))
        fam.add_metric([labels[k] for k in sorted(labels)], value)
    yield from families.values()


def fetch(cfg: Config, timeout: float = 10.0) -> bytes:
    """The running node's exposition text, from its endpoint (``core0 metrics``)."""
    import urllib.request

    host = cfg.metrics.bind if cfg.metrics.bind not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{cfg.metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def host_metrics(paths: Iterable[str]) -> Iterable[Metric]:
    """cpu, load, memory, disk (of ``paths``) and network counters of the host."""
    yield GaugeMetricFamily("core0_host_cpu_percent", "CPU use since the last scrape",
                            value=psutil.cpu_percent(interval=None))
    yield GaugeMetricFamily("core0_host_load1", "1-minute load average",
                            value=psutil.getloadavg()[0])
    vm = psutil.virtual_memory()
    mem = GaugeMetricFamily("core0_host_memory_bytes", "Memory", labels=["kind"])
    for kind in ("total", "available", "used"):
        mem.add_metric([kind], float(getattr(vm, kind)))
    yield mem
    disk = GaugeMetricFamily("core0_host_disk_bytes", "Disk space", labels=["path", "kind"])
    for path in dict.fromkeys(paths):
        try:
            du = psutil.disk_usage(path)
        except OSError:
            continue
        for kind in ("total", "used", "free"):
            disk.add_metric([path, kind], float(getattr(du, kind)))
    yield disk
    nb = CounterMetricFamily("core0_host_net_bytes", "Bytes through each NIC",
                             labels=["nic", "direction"])
    npk = CounterMetricFamily("core0_host_net_packets", "Packets through each NIC",
                              labels=["nic", "direction"])
    for nic, c in sorted(psutil.net_io_counters(pernic=True).items()):
        nb.add_metric([nic, "rx"], float(c.bytes_recv))
        nb.add_metric([nic, "tx"], float(c.bytes_sent))
        npk.add_metric([nic, "rx"], float(c.packets_recv))
        npk.add_metric([nic, "tx"], float(c.packets_sent))
    yield nb
    yield npk
