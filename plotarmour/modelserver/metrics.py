"""Prometheus metrics of one model server, in a registry of its own.

A private registry (not the process-wide default) lets tests and benchmarks run
several servers in one process without their metrics colliding. It gets the standard
process, platform and GC collectors of its own (plotarmour.metrics_common), so /metrics
carries process_cpu_seconds_total, process_resident_memory_bytes, python_info and the rest.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from plotarmour.metrics_common import register_process_collectors

# Per-step latencies range from ~0.1 ms (tiny model, CPU) to ~100 ms (big batch).
_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = register_process_collectors(CollectorRegistry())
        self.model = Info("plotarmour_model", "The model this server serves", registry=r)
        self.open_sessions = Gauge("plotarmour_open_sessions", "Sessions open now (Batch-stream sessions and Decode streams)", registry=r)
        self.queued = Gauge("plotarmour_queued_work", "Prefills, steps and scores waiting or running", registry=r)
        self.steps = Counter("plotarmour_decode_steps", "Tokens stepped (one per session per batch)", registry=r)
        self.prompt_tokens = Counter("plotarmour_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.batch_size = Histogram("plotarmour_batch_size", "Sessions per batched step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.step_latency = Histogram(
            "plotarmour_step_latency_seconds", "One batched decode step, worker side (on BDH, with the prompt "
            "chunk that shares its pass, if any)", registry=r, buckets=_LATENCY_BUCKETS)
        self.overhead = Histogram(
            "plotarmour_step_overhead_seconds", "One Batch step message, from its arrival to its answer queued for "
            "sending, less the engine steps its rows took part in: the server's own cost, waiting behind a "
            "prefill chunk included", registry=r,
            buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05))
        self.prefill_latency = Histogram("plotarmour_prefill_latency_seconds", "One prompt prefill, worker side",
                                         registry=r, buckets=_LATENCY_BUCKETS)
        self.errors = Counter("plotarmour_rpc_errors", "RPCs ended with an error status", ["rpc", "code"],
                              registry=r)
        self._http = None

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint on a thread; returns the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
