"""Prometheus metrics. Job counts, queue depth and durations are read from the store at scrape time (workers
are other processes, so the store is the one place that knows); upload bytes are counted by this process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from workers.jobs import JobStatus
from workers.store import JobStore

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))


class _StoreCollector:
    def __init__(self, store: JobStore):
        self.store = store

    def collect(self):
        counts = self.store.counts_by_status()
        jobs = GaugeMetricFamily("secateurs_jobs", "Jobs in the store by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([str(status)], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("secateurs_queue_depth", "Jobs waiting for a worker", value=counts[JobStatus.QUEUED])
        hist = HistogramMetricFamily(
            "secateurs_job_duration_seconds",
            "Wall time of finished job attempts (started to finished)",
            labels=["status"],
        )
        by_status: dict[JobStatus, list[float]] = {}
        for status, seconds in self.store.durations():
            by_status.setdefault(status, []).append(seconds)
        for status, values in sorted(by_status.items()):
            buckets = [(_le(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
            hist.add_metric([str(status)], buckets=buckets, sum_value=sum(values))
        yield hist

    def describe(self):
        return []


def _le(b: float) -> str:
    return "+Inf" if b == float("inf") else f"{b:g}"


class ServiceMetrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry(auto_describe=False)
        self.upload_bytes = Counter("secateurs_upload_bytes", "Bytes received in job uploads", registry=self.registry)
        self.submits = Counter("secateurs_submits", "Job submissions by outcome", ["outcome"], registry=self.registry)
        self.registry.register(_StoreCollector(store))
