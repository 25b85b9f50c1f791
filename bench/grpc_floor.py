"""What a Batch step costs with no model behind it: the gRPC transport's floor.

An echo server in its own process answers the Batch stream as a model server does, with
rows of the size asked (float16 or float32, vocabulary V), but prebuilt: no engine, no
scheduler. bench_modelserver.py drives it with the same client it drives the real server
with, so the time per step it measures is what the transport alone costs (serialising,
sending and parsing the request and its rows, and both event loops' turns). A served
step can cost no less than the engine's step plus this floor, which bounds the served :
engine ratio any server in Python grpc could reach here.

    python bench/grpc_floor.py --vocab 4096      # serve; prints {"port": N} when ready
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys

import grpc

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class Echo(pb_grpc.LanguageModelServicer):
    """Answers opens and steps at once, with zero rows of the right size (built once per size)."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.rows: dict[tuple[int, int], bytes] = {}

    def _rows(self, n: int, kind: int) -> bytes:
        size = 2 if kind == pb.LOG_PROBS_F16 else 4
        return self.rows.setdefault((n, size), bytes(n * self.vocab * size))

    async def Batch(self, requests, context):
        async for req in requests:
            which = req.WhichOneof("kind")
            if which == "open":
                yield pb.BatchResponse(opened=pb.SessionOpened(
                    session=req.open.session, position=len(req.open.prompt_ids),
                    next=pb.Distribution(data=self._rows(1, pb.LOG_PROBS), kind=pb.LOG_PROBS)))
            elif which == "step":
                kind = req.step.kind or pb.LOG_PROBS
                reply = pb.BatchResponse()  # filled in place, as the real server does
                reply.stepped.step, reply.stepped.kind = req.step.step, kind
                reply.stepped.sessions.extend(req.step.sessions)
                reply.stepped.data = self._rows(len(req.step.sessions), kind)
                yield reply


async def serve(vocab: int) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_LanguageModelServicer_to_server(Echo(vocab), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


@contextlib.contextmanager
def floor_server(vocab: int):
    """An echo server in a subprocess; yields its address."""
    with subprocess.Popen([sys.executable, __file__, "--vocab", str(vocab)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the echo server did not start")
            yield f"127.0.0.1:{json.loads(line)['port']}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, required=True)
    asyncio.run(serve(ap.parse_args().vocab))
