"""Closing a session on a Batch stream while its prompt is still being prefilled stops the
prefill at the next chunk (the gateway frees sessions with CloseSessions, never by
ending its stream)."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc

from plotarmour.modelserver.server import create_server
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from services.bdh import Settings as BDHSettings


def test_close_during_prefill_stops_it_at_the_next_chunk(tiny_pair):
    chunks = []  # prompt chunks the engine ran
    third = threading.Event()

    async def scenario():
        server = create_server(BDHSettings(checkpoint=tiny_pair["bdh"], port=0, metrics_port=-1, prefill_chunk=8))
        await server.start()
        await server.load()
        engine = server.scheduler.engine
        feed = engine.feed

        def slow_feed(*args, **kwargs):
            chunks.append(time.monotonic())
            if len(chunks) == 3:
                third.set()
            time.sleep(0.05)  # 50 chunks would take 2.5 s
            return feed(*args, **kwargs)

        engine.feed = slow_feed
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = pb_grpc.LanguageModelStub(ch).Batch()
                await call.write(pb.BatchRequest(open=pb.OpenSession(session=1, prompt_ids=[1] * 400)))
                await asyncio.to_thread(third.wait, 30)
                await call.write(pb.BatchRequest(close=pb.CloseSessions(sessions=[1])))
                closed_at = len(chunks)
                deadline = time.monotonic() + 10
                while server.scheduler.open_sessions and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)  # room for chunks that should not run
                open_after = server.scheduler.open_sessions
                await call.done_writing()
                return closed_at, len(chunks), open_after
        finally:
            await server.stop()

    closed_at, ran, open_after = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert open_after == 0
    assert ran <= closed_at + 2, f"{ran - closed_at} chunks ran after the close (of 50)"
