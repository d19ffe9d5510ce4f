"""Prometheus metrics of the gateway (prometheus-client), one registry per gateway instance."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.quality.report import QualityCollector
from cmm_twin.gateway.status import GatewayStatus, SinkState

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class _StatusCollector(Collector):
    """Gauges read from GatewayStatus at scrape time (no second copy of the truth)."""

    def __init__(self, status: GatewayStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("cmm_buffer_depth", "Records not yet acknowledged by a sink", labels=["sink"])
        age = GaugeMetricFamily(
            "cmm_buffer_oldest_age_seconds", "Age of the oldest unacknowledged record", labels=["sink"]
        )
        up = GaugeMetricFamily("cmm_sink_connected", "1 when the sink is delivering", labels=["sink"])
        for name, sink in self.status.sinks.items():
            depth.add_metric([name], sink.buffer_depth)
            age.add_metric([name], sink.oldest_age_s)
            up.add_metric([name], 1.0 if sink.state is SinkState.CONNECTED else 0.0)
        yield depth
        yield age
        yield up
        yield GaugeMetricFamily(
            "cmm_disk_full",
            "1 while the gateway's own writes fail for lack of space",
            value=float(self.status.disk_full),
        )
        yield GaugeMetricFamily(
            "cmm_intake_paused",
            "1 while new files wait in the inbox (spool at its limit or disk full)",
            value=float(self.status.intake_paused or self.status.disk_full),
        )
        yield GaugeMetricFamily("cmm_uptime_seconds", "Seconds since the gateway started", value=self.status.uptime_s)


class GatewayMetrics:
    """Counters and histograms the gateway updates as it works, and the gauges read at scrape time
    (the gateway's status; with `quality`, capability and compensation health per characteristic)."""

    def __init__(self, status: GatewayStatus, quality: QualityMonitor | None = None) -> None:
        self.registry = CollectorRegistry()
        self.files_processed = Counter(
            "cmm_files_processed", "Inbox files processed", ["destination"], registry=self.registry
        )
        self.rows_in = Counter("cmm_rows_in", "Valid rows taken from the inbox", registry=self.registry)
        self.rows_rejected = Counter(
            "cmm_rows_rejected",
            "Rows rejected, by the column at fault (row: the row as a whole)",
            ["column"],
            registry=self.registry,
        )
        self.rows_out = Counter("cmm_rows_out", "Records delivered, by sink", ["sink"], registry=self.registry)
        self.latency = Histogram(
            "cmm_end_to_end_latency_seconds",
            "From the measurement time stamp to delivery by a sink",
            ["sink"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(status))
        if quality is not None:
            self.registry.register(QualityCollector(quality))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
