"""Prometheus metrics, in a registry per app so tests can run several gateways in one process."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("plotarmour_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.active = Gauge("plotarmour_gateway_active_generations", "Generations and validations running now",
                            registry=r)
        self.rejected = Counter("plotarmour_gateway_rejected", "Requests refused for the concurrency limit",
                                registry=r)
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
    """Counts requests by route template and status (pure ASGI, so streaming is untouched)."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def _send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status["code"])).inc()


class StepTimer:
    """Observes the gap between consecutive tokens of one generation."""

    def __init__(self, hist: Histogram):
        self.hist, self.last = hist, None

    def tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.hist.observe(now - self.last)
        self.last = now
