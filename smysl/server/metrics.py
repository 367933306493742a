"""Prometheus metrics of one server instance (own registry: several apps may share a process)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Up to 300 s: a request may wait up to ``request_timeout_s`` (120 s by default), an outage
#: last minutes.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0, 300.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class BatchMetrics:
    """What a :class:`~smysl.server.batcher.Batcher` records, named ``{prefix}_...``: the
    embedding batcher's are ``smysl_queue_depth``..., the reranker's ``smysl_rerank_...``."""

    def __init__(self, r: CollectorRegistry, prefix: str, noun: str) -> None:
        self.queue_depth = Gauge(f"{prefix}_queue_depth", "Requests waiting for compute",
                                 registry=r, multiprocess_mode="livesum")
        self.queue_seconds = Histogram(f"{prefix}_queue_seconds",
                                       "Time a request waited for compute", buckets=_LATENCY,
                                       registry=r)
        self.compute_seconds = Histogram(f"{prefix}_compute_seconds",
                                         "Backend time per batch, from its start to its rows",
                                         buckets=_LATENCY, registry=r)
        self.batch_inputs = Histogram(f"{prefix}_batch_inputs", "Inputs per coalesced batch",
                                      buckets=_SIZES, registry=r)
        self.batch_requests = Histogram(f"{prefix}_batch_requests",
                                        "Requests per coalesced batch", buckets=_SIZES,
                                        registry=r)
        self.batch_tokens = Histogram(f"{prefix}_batch_tokens", "Tokens per coalesced batch",
                                      buckets=_TOKENS, registry=r)
        self.inputs = Counter(f"{prefix}_inputs", f"Inputs {noun}", registry=r)
        self.tokens = Counter(f"{prefix}_tokens", f"Tokens {noun} (estimated where the "
                              "backend cannot count)", registry=r)
        self.dropped = Counter(f"{prefix}_dropped_requests", "Requests dropped before compute",
                               ["reason"], registry=r)


class HealthMetrics:
    """A backend's outages, named ``{prefix}_backend_...``."""

    def __init__(self, r: CollectorRegistry, prefix: str) -> None:
        self.up = Gauge(f"{prefix}_backend_up", "1 while the model backend can compute",
                        registry=r, multiprocess_mode="livemin")
        self.up.set(1)
        self.down = Counter(f"{prefix}_backend_down", "Times the model backend went down "
                            "(e.g. its engine process died)", registry=r)
        self.recovered = Counter(f"{prefix}_backend_recovered", "Times the model backend came "
                                 "back (e.g. a restarted engine process)", registry=r)
        self.downtime = Histogram(f"{prefix}_backend_downtime_seconds", "How long the backend "
                                  "was down before it came back", buckets=_LATENCY, registry=r)


class Metrics(BatchMetrics):
    """All counters, gauges and histograms the server exports at ``GET /metrics``; the
    embedding batcher's are inherited (:class:`BatchMetrics` ``smysl``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        super().__init__(r, "smysl", "embedded")
        self.requests = Counter("smysl_requests", "HTTP requests answered",
                                ["api", "route", "status"], registry=r)
        self.errors = Counter("smysl_errors", "Error responses by kind", ["api", "kind"],
                              registry=r)
        self.latency = Histogram("smysl_request_seconds", "Request latency, end to end",
                                 ["api", "route"], buckets=_LATENCY, registry=r)
        #: The embedding model's backend (the reranker's: ``smysl_rerank_backend_...``).
        self.backend = HealthMetrics(r, "smysl")

    def render(self) -> bytes:
        """The exposition: of this process, or of all the server's worker processes
        (``$PROMETHEUS_MULTIPROC_DIR``, set by :mod:`smysl.server.workers`)."""
        from smysl.server.workers import METRICS_ENV

        folder = os.environ.get(METRICS_ENV)
        if not folder:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        every = CollectorRegistry()
        multiprocess.MultiProcessCollector(every, folder)
        return generate_latest(every)
