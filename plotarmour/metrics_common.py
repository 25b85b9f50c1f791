"""Metrics helpers shared by the model servers and the gateway (no torch, no grpc).

Each service keeps its metrics in a CollectorRegistry of its own so that tests can run
several servers in one process. prometheus_client registers the standard process,
platform and GC collectors only on its global default registry, so a private registry
serves none of them unless they are added: register_process_collectors does that.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector


def register_process_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    """Add the collectors the default registry has to `registry`; returns it.

    They bring process_cpu_seconds_total, process_resident_memory_bytes,
    process_virtual_memory_bytes, process_open_fds, process_max_fds,
    process_start_time_seconds (Linux: read from /proc; elsewhere they are absent),
    python_info and python_gc_{objects_collected,objects_uncollectable,collections}_total.
    Every call adds a new set of collectors, so call it once per registry; several
    registries in one process each get their own set (they report the same process).
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
