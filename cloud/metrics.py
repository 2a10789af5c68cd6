"""Prometheus metrics of one worker, in a registry of its own.

A registry per worker (not the global one) lets tests and the benchmark run
several workers in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class WorkerMetrics:
    """Counters, histograms and gauges the worker updates; names start with ``pasu_cloud_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "pasu_cloud_requests", "Finished RPCs by method and status code", ("rpc", "code"), registry=r
        )
        self.latency = Histogram(
            "pasu_cloud_latency_seconds", "Per-request time by stage", ("stage",), buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "pasu_cloud_batch_size", "Requests per batched search", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("pasu_cloud_queue_depth", "Requests waiting for the batcher", registry=r)
        self.decoded = Counter("pasu_cloud_decoded_utterances", "Utterances encoded and decoded", registry=r)
        self.dropped = Counter("pasu_cloud_dropped", "Jobs dropped before decoding", ("reason",), registry=r)
        self.rejected = Counter("pasu_cloud_queue_rejected", "Requests refused because the queue was full", registry=r)
        self.reuse = Counter("pasu_cloud_decoder_reuse", "Offload decoder-reuse outcomes", ("outcome",), registry=r)
        self.device_updates = Counter(
            "pasu_cloud_device_updates", "Newer device n-best lists received in Offload streams", registry=r
        )
        self.idempotent = Counter(
            "pasu_cloud_idempotent_hits", "Retries answered without a new decode", ("kind",), registry=r
        )
        self._http = None
        self._lock = threading.Lock()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.latency.labels(stage).observe(seconds)

    def serve(self, port: int, addr: str) -> int:
        """Expose /metrics over HTTP on ``addr:port``; returns the bound port (port 0 → any)."""
        with self._lock:
            self._http, _ = start_http_server(port, addr=addr, registry=self.registry)
            bound = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", addr, bound)
        return bound

    def stop(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
                self._http = None

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 if absent), for tests and the benchmark."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
