"""Prometheus metrics (``GET /metrics``), read from the monitor's snapshot at each scrape, so there is
one record of what happened and no second set of counters to keep in step with it.

Names follow Prometheus' conventions (``_total`` on counters, base units): see the README's operator
guide for the list and deploy/grafana-dashboard.json for a dashboard that plots them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from medfed.server.live.monitor import Monitor
from medfed.server.live.status import HOSPITAL_STATES, PHASES
from medfed.server.memory import peak_rss_mb

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class FederationCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        status = self._monitor.snapshot()
        yield CounterMetricFamily("medfed_rounds_completed", "Rounds completed", value=status.rounds_completed)
        yield GaugeMetricFamily("medfed_rounds_planned", "Rounds the run is set to train", value=status.total_rounds)
        yield GaugeMetricFamily("medfed_round", "The round open now, else the last completed", value=status.round)
        durations = [point.duration_s for point in status.rounds]
        buckets = [(f"{le:g}", float(sum(d <= le for d in durations))) for le in DURATION_BUCKETS]
        yield HistogramMetricFamily(
            "medfed_round_duration_seconds", "Wall-clock time of each completed round",
            buckets=[*buckets, ("+Inf", float(len(durations)))], sum_value=sum(durations),
        )  # fmt: skip
        phase = GaugeMetricFamily("medfed_phase", "1 for the phase the federation is in", labels=["phase"])
        for name in PHASES:
            phase.add_metric([name], 1.0 if name == status.phase else 0.0)
        yield phase
        yield GaugeMetricFamily(
            "medfed_phase_seconds", "Seconds in the current phase", value=max(0.0, status.now - status.phase_since)
        )
        hospitals = GaugeMetricFamily("medfed_hospitals", "Hospitals by state", labels=["state"])
        for state in HOSPITAL_STATES:
            hospitals.add_metric([state], float(sum(h.state == state for h in status.hospitals)))
        yield hospitals
        yield CounterMetricFamily("medfed_sent_bytes", "Model bytes sent to hospitals", value=status.bytes_down)
        yield CounterMetricFamily(
            "medfed_received_bytes", "Update bytes accepted from hospitals", value=status.bytes_up
        )
        refusals = CounterMetricFamily("medfed_refusals", "Calls refused, by gRPC status code", labels=["code"])
        for code, count in sorted(status.refusals.items()):
            refusals.add_metric([code], float(count))
        yield refusals
        tested = [p for p in status.rounds if p.accuracy is not None]
        if tested:
            last = tested[-1]
            yield GaugeMetricFamily("medfed_test_accuracy", "Test accuracy of the last round", value=last.accuracy)
            if last.auc is not None:
                yield GaugeMetricFamily("medfed_test_auc", "Macro AUC of the last round", value=last.auc)
            if last.loss is not None:
                yield GaugeMetricFamily("medfed_test_loss", "Test loss of the last round", value=last.loss)
        spent = [p.epsilon for p in status.rounds if p.epsilon is not None]
        if spent:
            yield GaugeMetricFamily("medfed_privacy_epsilon", "Privacy spent so far (epsilon)", value=spent[-1])
        if (peak := peak_rss_mb()) is not None:
            yield GaugeMetricFamily(
                "medfed_coordinator_peak_resident_bytes", "Peak resident memory of the coordinator", value=peak * 2**20
            )


def metrics_registry(monitor: Monitor) -> CollectorRegistry:
    """The federation's metrics and the process' own (process_resident_memory_bytes, CPU, open files)."""
    registry = CollectorRegistry()
    registry.register(FederationCollector(monitor))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
