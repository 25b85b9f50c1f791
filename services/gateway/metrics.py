"""Prometheus metrics, in a registry per app so tests can run several gateways in one process."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from plotarmour.metrics_common import register_process_collectors

_SECONDS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKENS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class GatewayMetrics:
    def __init__(self):
        # With the standard process_* and python_* series (CPU, memory, open files, GC).
        self.registry = r = register_process_collectors(CollectorRegistry())
        self.requests = Counter("plotarmour_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("plotarmour_gateway_request_duration_seconds",
                                 "Request arrival to the last byte sent (a stream's whole life), by route",
                                 ["route", "method"], registry=r, buckets=_SECONDS)
        self.active = Gauge("plotarmour_gateway_active_generations", "Requests generating or validating now (one per request, whatever its n)",
                            registry=r)
        self.rejected = Counter("plotarmour_gateway_rejected", "Requests refused for the concurrency limit",
                                registry=r)
        self.queue_wait = Histogram("plotarmour_gateway_queue_wait_seconds",
                                    "A generation's arrival to its first decoding step: both prefills and the "
                                    "wait for the running batch to take it in", registry=r, buckets=_SECONDS)
        self.prompt_tokens = Histogram("plotarmour_gateway_prompt_tokens", "Prompt length of each generation",
                                       registry=r, buckets=_TOKENS)
        self.generated_tokens = Histogram("plotarmour_gateway_generated_tokens_per_generation",
                                          "Tokens each finished generation wrote", registry=r, buckets=_TOKENS)
        self.tokens = Counter("plotarmour_gateway_generated_tokens", "Tokens sampled and sent to clients",
                              registry=r)
        self.finished = Counter("plotarmour_gateway_generations", "Finished generations by finish reason",
                                ["finish_reason"], registry=r)
        self.model_errors = Counter("plotarmour_gateway_model_errors", "Failures talking to a model server",
                                    ["kind"], registry=r)
        self.ttft = Histogram("plotarmour_gateway_time_to_first_token_seconds", "Request start to first token",
                              registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.step = Histogram("plotarmour_gateway_step_seconds", "Time between tokens (both servers + blend)",
                              registry=r, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1))


class MetricsMiddleware:
    """Counts and times requests by route template and status (pure ASGI, so streaming is
    untouched: a stream is timed until its last byte)."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, t0 = {"code": 500}, time.perf_counter()

        async def _send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route, scope["method"]).observe(time.perf_counter() - t0)


class StepTimer:
    """Observes the gap between consecutive tokens of one generation."""

    def __init__(self, hist: Histogram):
        self.hist, self.last = hist, None

    def tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.hist.observe(now - self.last)
        self.last = now
