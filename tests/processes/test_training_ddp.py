"""Under DDP every rank trains on its own windows. The two reductions `Trainer.fit` relies
on, run by two real processes over gloo (CPU, no GPU): the train loss it logs is every
rank's averaged, and a stop requested on one rank is seen by all."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.runlog import StopFlag
from training.train import Trainer


def _rank(rank: int, store: str, out) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        me = SimpleNamespace(rt=SimpleNamespace(world=2, device=torch.device("cpu")))
        flag = StopFlag()
        flag.requested = rank == 1  # only rank 1 saw the Ctrl-C
        out.put((rank, Trainer._mean_over_ranks(me, [1.0, 3.0][rank]), Trainer._any_rank_stopping(me, flag)))
    finally:
        dist.destroy_process_group()


def test_ranks_share_the_loss_and_the_stop(tmp_path):
    out = mp.get_context("spawn").Queue()
    # a file store: no port to race for
    mp.start_processes(_rank, args=(str(tmp_path / "store"), out), nprocs=2, join=True, start_method="spawn")
    got = sorted(out.get(timeout=60) for _ in range(2))
    assert got == [(0, 2.0, True), (1, 2.0, True)]
