"""``utils.dist.LaggedMax``: the ranks' stop vote, read one call late, agrees on every rank."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils.dist import LaggedMax


def _vote(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        vote = LaggedMax(torch.device("cpu"))
        mine = [0, 0, 15 if rank == 1 else 0, 0, 0]  # rank 1 is signalled during call 2
        got = [vote(v) for v in mine]
        got.append(vote.now(2 if rank == 0 else 0))
        Path(out, f"rank{rank}.txt").write_text(" ".join(map(str, got)))
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_the_vote_one_call_late(tmp_path: Path) -> None:
    mp.spawn(_vote, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    results = {p.name: p.read_text() for p in tmp_path.glob("rank*.txt")}
    assert results == {"rank0.txt": "0 0 0 15 0 2", "rank1.txt": "0 0 0 15 0 2"}


def test_one_process_gets_its_own_value_at_once() -> None:
    vote = LaggedMax(torch.device("cpu"))
    assert [vote(0), vote(15), vote.now(2)] == [0, 15, 2]
