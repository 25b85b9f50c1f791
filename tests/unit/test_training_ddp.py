"""Under DDP every rank trains on its own windows: the loss the bar and the CSV show is
every rank's averaged, and a Ctrl-C on one rank stops all of them at the same step. Two
real processes over gloo (CPU), no GPU."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.runlog import StopFlag
from training.train import Trainer


def _rank(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        me = SimpleNamespace(rt=SimpleNamespace(world=2, device=torch.device("cpu")))
        flag = StopFlag()
        flag.requested = rank == 1  # only rank 1 saw the Ctrl-C
        out.put((rank, Trainer._mean_over_ranks(me, [1.0, 3.0][rank]), Trainer._any_rank_stopping(me, flag)))
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_loss_and_the_stop():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_rank, args=(port, out), nprocs=2, join=True, start_method="spawn")
    got = sorted(out.get(timeout=30) for _ in range(2))
    assert got == [(0, 2.0, True), (1, 2.0, True)]
