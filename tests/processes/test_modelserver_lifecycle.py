"""A model server's life: NOT_SERVING while loading, SERVING, reflection and metrics,
SIGTERM (NOT_SERVING, no new sessions, a grace period, exit 0), a bad checkpoint."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from plotarmour.modelserver.launch import ServerStartError
from plotarmour.modelserver.server import create_server
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from services.bdh import Settings as BDHSettings

SERVICE = "plotarmour.v1.LanguageModel"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def health(ch, service: str = SERVICE) -> int:
    return (await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                        timeout=5)).status


async def open_session(ch, ids=(1, 2, 3)):
    call = pb_grpc.LanguageModelStub(ch).Decode()
    await call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=list(ids))))
    await call.read()
    return call


async def refusal(ch) -> tuple[grpc.StatusCode, str]:
    """The status a new Decode stream ends with before it sends anything. A draining
    server refuses at the stream's start; a client write racing that refusal can have
    grpc-python's aio client replace the server's status with INTERNAL "Internal error
    from Core" (grpc/grpc#36066), so the refusal is read without writing."""
    call = pb_grpc.LanguageModelStub(ch).Decode()
    return await call.code(), await call.details()


def test_not_serving_until_loaded_then_serving(tiny_pair):
    async def scenario():
        settings = BDHSettings(checkpoint=tiny_pair["bdh"], port=0, metrics_port=-1)
        server = create_server(settings)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                before = [await health(ch), await health(ch, "")]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await pb_grpc.LanguageModelStub(ch).GetInfo(pb.InfoRequest(), timeout=5)
                await server.load()
                after = [await health(ch), await health(ch, "")]
                info = await pb_grpc.LanguageModelStub(ch).GetInfo(pb.InfoRequest(), timeout=5)
        finally:
            await server.stop()
        return before, err.value, after, info

    before, err, after, info = asyncio.run(scenario())
    assert before == [NOT_SERVING, NOT_SERVING]
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.details()
    assert after == [SERVING, SERVING]
    assert info.model_type == "bdh"


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_services(bdh_server, version):
    """Both reflection services answer (grpcurl and Postman ask v1 first; its messages are
    v1alpha's, field for field, so v1alpha's classes speak it on v1's method path)."""
    with grpc.insecure_channel(bdh_server.address) as ch:
        call = ch.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]
        listed, described = list(call(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # what grpcurl uses to call it


def test_metrics_count_sessions_steps_batches_and_latency(bdh_server):
    async def steps():
        async with grpc.aio.insecure_channel(bdh_server.address) as ch:
            call = await open_session(ch)
            for t in (4, 5, 6):
                await call.write(pb.DecodeRequest(token=t))
                await call.read()
            await call.done_writing()

    asyncio.run(steps())
    text = urllib.request.urlopen(bdh_server.metrics_url, timeout=5).read().decode()
    for name in ("plotarmour_open_sessions ", "plotarmour_decode_steps_total ", "plotarmour_batch_size_bucket",
                 "plotarmour_step_latency_seconds_count ", "plotarmour_prefill_latency_seconds_count ",
                 "plotarmour_queued_work "):
        assert name in text, name
    assert 'plotarmour_model_info{device="cpu",dtype="float32",model_type="bdh"' in text
    count = [line for line in text.splitlines() if line.startswith("plotarmour_step_latency_seconds_count ")]
    assert float(count[0].split()[1]) >= 3


# The standard process metrics (what prometheus_client's default registry would carry).
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                   "python_info", "python_gc_objects_collected_total", "python_gc_collections_total")


def samples(text: str) -> dict[str, float]:
    """name -> value of the first sample of each metric name in a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out.setdefault(name, float(line.rsplit(" ", 1)[1]))
    return out


@pytest.mark.parametrize("service", ["bdh", "gpt2"])
def test_metrics_carry_the_standard_process_metrics(start_model_server, tiny_pair, service):
    srv = start_model_server(tiny_pair[service], metrics_port=0)
    found = samples(urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode())
    missing = [name for name in PROCESS_METRICS if name not in found]
    assert not missing, f"{srv.metrics_url} lacks {missing}"
    assert found["process_resident_memory_bytes"] > 0 and found["process_open_fds"] > 0
    assert "plotarmour_open_sessions" in found  # alongside the server's own


def test_several_servers_in_one_process_each_serve_process_metrics(tiny_pair):
    async def scenario():
        servers = [create_server(BDHSettings(checkpoint=tiny_pair["bdh"], port=0, metrics_port=0))
                   for _ in range(2)]
        pages = []
        try:
            for server in servers:
                await server.start()
            for server in servers:
                url = f"http://127.0.0.1:{server.metrics_port}/metrics"
                pages.append(await asyncio.to_thread(
                    lambda u=url: urllib.request.urlopen(u, timeout=5).read().decode()))
        finally:
            for server in servers:
                await server.stop()
        return pages

    pages = asyncio.run(scenario())
    for page in pages:
        found = samples(page)
        assert all(name in found for name in PROCESS_METRICS), sorted(found)
        assert page.count("# TYPE process_cpu_seconds_total ") == 1  # one set of collectors per registry


def test_sigterm_drains_then_exits_zero(start_model_server, tiny_pair):
    srv = start_model_server(tiny_pair["gpt2"], grace_period=60)
    assert srv.health() == SERVING

    async def scenario():
        async with grpc.aio.insecure_channel(srv.address) as ch:
            running = await open_session(ch)
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while await health(ch) != NOT_SERVING:
                assert time.monotonic() < deadline, "health never went NOT_SERVING after SIGTERM"
                await asyncio.sleep(0.02)
            refused = await asyncio.wait_for(refusal(ch), 10)
            # The open session keeps working through the grace period.
            await running.write(pb.DecodeRequest(token=7))
            position = (await running.read()).position
            await running.done_writing()
            return refused, position, await running.code()

    refused, position, code = asyncio.run(scenario())
    assert refused[0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused[1]
    assert (position, code) == (4, grpc.StatusCode.OK)
    assert srv.proc.wait(timeout=30) == 0  # went as soon as its last session ended
    assert "shutting down" in srv.log()


def test_sigterm_ends_sessions_still_open_after_the_grace_period(start_model_server, tiny_pair):
    srv = start_model_server(tiny_pair["bdh"], grace_period=0.5)

    async def scenario():
        async with grpc.aio.insecure_channel(srv.address) as ch:
            held = await open_session(ch)
            srv.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError):
                await held.read()  # nothing more will come; the server ends the stream

    asyncio.run(scenario())
    assert srv.proc.wait(timeout=30) == 0


def test_a_bad_checkpoint_stops_the_server_with_a_message(start_model_server, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServerStartError, match="exited with status 1") as err:
        start_model_server(tmp_path / "empty", service="bdh")
    assert "config.json: missing file" in str(err.value)


def test_a_stream_that_sends_nothing_is_closed(tiny_pair, start_model_server):
    """Decode and Batch streams that open and stay silent end with DEADLINE_EXCEEDED after
    first_message_timeout_s (they would otherwise pile up for ever); a stream that speaks
    in time is served as before, however long it then stays quiet."""
    server = start_model_server(tiny_pair["gpt2"], first_message_timeout_s=0.5)

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.LanguageModelStub(ch)
            ended = []
            for call in (stub.Decode(), stub.Batch()):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(call.read(), 10)
                ended.append((err.value.code(), err.value.details()))
            talking = await open_session(ch)
            await asyncio.sleep(1.0)  # past the deadline, after its first message
            await talking.write(pb.DecodeRequest(token=4))
            answer = await talking.read()
            await talking.done_writing()
            return ended, answer

    ended, answer = asyncio.run(scenario())
    for code, details in ended:
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "first_message_timeout_s = 0.5 s" in details
    assert answer.position > 0



def test_huge_requests_are_refused_by_their_length_first(tiny_pair, start_model_server):
    """Token ids over the context cap, in a message under the byte limit (larger ones gRPC
    refuses unread: test_modelserver_fuzz.py), are refused by their count before any copy
    into Python ints. Ids outside the vocabulary show the order: the count is what is named."""
    server = start_model_server(tiny_pair["bdh"])
    huge = [100_000] * 300_000  # 3 bytes a varint: 0.9 MB, under the 1.04 MB an 8,192-token cap allows
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.LanguageModelStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(pb.ScoreRequest(token_ids=huge), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sequence has 300000 tokens; the context limit is" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Decode(iter([pb.DecodeRequest(prompt=pb.Prompt(token_ids=huge))]), timeout=60))
        assert "prompt has 300000 tokens; the context limit is" in err.value.details()


def metric_value(server, name: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_the_servers_own_cost_per_step_is_exported(bdh_server):
    """Each Batch step message observes its time in the server less the engine's step:
    plotarmour_step_overhead_seconds, what the gateway's steps cost beyond the model."""
    before = metric_value(bdh_server, "plotarmour_step_overhead_seconds_count")

    async def steps():
        async with grpc.aio.insecure_channel(bdh_server.address) as ch:
            call = pb_grpc.LanguageModelStub(ch).Batch()
            await call.write(pb.BatchRequest(open=pb.OpenSession(session=1, prompt_ids=[1, 2, 3])))
            await call.read()
            for step in (1, 2, 3):
                await call.write(pb.BatchRequest(step=pb.StepSessions(step=step, sessions=[1], tokens=[4])))
                assert (await call.read()).stepped.sessions == [1]
            await call.done_writing()

    asyncio.run(steps())
    assert metric_value(bdh_server, "plotarmour_step_overhead_seconds_count") - before == 3
    assert 0 < metric_value(bdh_server, "plotarmour_step_overhead_seconds_sum") < 3 * 1.0
