"""Assemble and run a model server.

    server = create_server(settings)   # inside a running event loop; binds (port 0 is fine)
    await server.start()                # gRPC + metrics up, health NOT_SERVING
    await server.load()                 # checkpoint → engine → scheduler, health SERVING
    ...
    await server.drain(grace); await server.stop()

`serve(settings)` does all of that for a process: signal handling, the port file and the
start-up log line. Torch and the model code are imported inside `load()`, so the port is
bound (and health answers NOT_SERVING) while they import.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

from .metrics import Metrics
from .servicer import LanguageModelServicer
from .settings import ModelServerSettings, parse_settings

log = logging.getLogger("plotarmour.modelserver")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LanguageModel"].full_name  # "plotarmour.v1.LanguageModel"
_MB = 1 << 20


def grpc_options(settings: ModelServerSettings) -> list[tuple[str, int]]:
    """The server's channel options. A request may carry at most the context cap's token ids
    (5 bytes each as varints) and a little more: anything larger is refused by gRPC before it
    is parsed, so a hostile 5M-id Score costs no memory (parsed and then refused, each left
    ~20 MB in the allocator)."""
    cap = settings.max_context or settings.default_max_context
    return [
        # A gpt2-sized tokenizer.json is ~2 MB and a 50k-token distribution 200 kB.
        ("grpc.max_send_message_length", 64 * _MB),
        ("grpc.max_receive_message_length", 5 * cap + _MB),
        # Notice clients that vanish without closing their stream, so their sessions are freed.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]



# gRPC reflection's v1 service is v1alpha's under a new name, message for message, but the
# grpcio-reflection package serves only v1alpha; grpcurl and Postman ask v1 first.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.aio.Server, services: list[str]) -> None:
    """Server reflection under both names, v1 and v1alpha, listing `services` and itself."""
    servicer = reflection.aio.ReflectionServicer([*services, REFLECTION_V1, reflection.SERVICE_NAME])
    handler = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    for name in (REFLECTION_V1, reflection.SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handler),))

class ModelServer:
    def __init__(self, settings: ModelServerSettings, *, checkpoint=None):
        """Build and bind; `checkpoint` (a loaded plotarmour.checkpoint.Checkpoint) skips
        reading settings.checkpoint, for tests and benchmarks that already hold a model."""
        self.settings = settings
        self._checkpoint = checkpoint
        self.metrics = Metrics()
        self.health = health.aio.HealthServicer()
        self.servicer = LanguageModelServicer(metrics=self.metrics,
                                              first_message_timeout_s=settings.first_message_timeout_s)
        self.scheduler = None
        self.grpc = grpc.aio.server(options=grpc_options(settings))
        pb_grpc.add_LanguageModelServicer_to_server(self.servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        enable_reflection(self.grpc, [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        address = f"{settings.host}:{settings.port}"
        try:
            self.port = self.grpc.add_insecure_port(address)
        except RuntimeError as e:  # grpc raises RuntimeError when the port is taken
            raise OSError(f"cannot listen on {address}: {e}") from None
        self.address = f"{settings.host}:{self.port}"
        self.metrics_port: int | None = None

    async def start(self) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.settings.host, self.settings.metrics_port)

    async def load(self) -> None:
        """Load the checkpoint on a thread, start the scheduler, then report SERVING."""
        ckpt, engine = await asyncio.to_thread(self._load_engine)
        from .scheduler import Scheduler  # imports torch

        from plotarmour.tokenizer import eot_id, fingerprint

        s = self.settings
        self.scheduler = Scheduler(
            engine, self.metrics, max_batch_size=s.max_batch_size, chunk_size=s.prefill_chunk,
            max_sessions=s.max_sessions, max_scores=s.max_scores, idle_timeout_s=s.idle_timeout_s,
            batch_wait_s=s.batch_wait_ms / 1e3, on_fatal=self._scheduler_died)
        self.scheduler.start()
        mi = engine.info
        info = pb.ModelInfo(
            name=self.settings.name or (ckpt.path.name if ckpt.path else mi.model_type),
            model_type=mi.model_type, vocab_size=mi.vocab_size, tokenizer_fingerprint=fingerprint(ckpt.tokenizer),
            max_context=min(mi.max_context, 2**32 - 1), device=mi.device, dtype=mi.dtype,
            num_parameters=mi.num_parameters, eot_token_id=eot_id(ckpt.tokenizer),
            max_sessions=self.settings.max_sessions)
        self.servicer.attach(self.scheduler, info, ckpt.tokenizer.to_str())
        self.metrics.model.info({"name": info.name, "model_type": info.model_type, "device": info.device,
                                 "dtype": info.dtype, "num_parameters": str(info.num_parameters)})
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _load_engine(self):
        import torch

        from plotarmour.checkpoint import load_checkpoint, resolve_device

        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        ckpt = self._checkpoint or load_checkpoint(s.checkpoint, device=resolve_device(s.device),
                                                   dtype=getattr(torch, s.dtype))
        engine = ckpt.engine(max_context=s.max_context or s.default_max_context)
        return ckpt, engine

    @property
    def info(self) -> pb.ModelInfo | None:
        return self.servicer.info

    async def drain(self, grace: float) -> None:
        """NOT_SERVING, refuse new sessions, and wait up to `grace` s for open ones to end."""
        self.servicer.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + grace
        while self.scheduler and self.scheduler.open_sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = 0.5) -> None:
        """Stop taking RPCs, cancel what is left after `grace` s, free the engine."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(grace)
        if self.scheduler is not None:
            await self.scheduler.stop()
        self.metrics.close()

    def _scheduler_died(self, error: BaseException) -> None:
        # Nothing will be computed any more: say so at once, so a load balancer or the
        # gateway stops sending work here (and an orchestrator restarts the process).
        log.error("scheduler failed, reporting NOT_SERVING: %r", error)
        asyncio.get_running_loop().create_task(self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


def create_server(settings: ModelServerSettings, *, checkpoint=None) -> ModelServer:
    """A bound, not yet started server. Call inside a running event loop (grpc.aio)."""
    return ModelServer(settings, checkpoint=checkpoint)


def _write_port_file(path: Path, server: ModelServer) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"port": server.port, "metrics_port": server.metrics_port, "pid": os.getpid()}))
    os.replace(tmp, path)  # readers never see half a file


async def serve(settings: ModelServerSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    server = create_server(settings)
    await server.start()
    if settings.port_file:
        _write_port_file(settings.port_file, server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    loading = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        log.error("could not load the model: %s", loading.exception())
        await server.stop(0)
        return 1
    if loading.done():
        i = server.info
        log.info("serving %s model %r (%s parameters) on %s, device %s, %s, metrics port %s",
                 i.model_type, i.name, f"{i.num_parameters:,}", server.address, i.device, i.dtype,
                 server.metrics_port if server.metrics_port is not None else "off")
    await stopping
    log.info("shutting down: NOT_SERVING, no new sessions, %d open get up to %.1f s",
             server.scheduler.open_sessions if server.scheduler else 0, settings.grace_period)
    await server.drain(settings.grace_period)
    await server.stop(0)
    if not loading.done():
        loading.cancel()  # the load thread itself runs on; nothing waits for it
    log.info("stopped")
    return 0


def main(settings_cls: type[ModelServerSettings], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `python -m services.<model>`."""
    settings = parse_settings(settings_cls, argv, prog=prog)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(settings))
    except OSError as e:
        log.error("%s", e)
        return 1
