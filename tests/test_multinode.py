"""Two nodes on one machine: two ``run.py --nnodes 2`` launchers (one worker each) meet over loopback, train,
checkpoint and resume exactly; killing one node's launcher with -9 mid-run stops both nodes at the same step with
a checkpoint, leaves no process on either, and ``--resume latest`` on both continues to the uninterrupted run's
losses."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_run import assert_all_gone
from tests.test_stop import env, finish, log_records, losses, pretrain_args, wait_for_step

pytestmark = pytest.mark.slow  # ~40 s on the 2-core CPU: CI runs it in its slow stage

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("nodes") / "syn", seed=0, n_images=40, n_videos=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(data: dict, out: Path, *extra: str) -> list[subprocess.Popen]:
    """Node 0 and node 1 of a 2-node job (``--dist 1`` each) on 127.0.0.1, both writing to ``out`` (a shared
    folder, as on a cluster's shared file system)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, str(ROOT / "run.py"), "--task", "pretrain", "--dist", "1", "--nnodes", "2",
               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "--stop_timeout", "60", "--device", "cpu", *pretrain_args(data, out, f"train.steps={STEPS}",
                                                                       "train.ckpt_every=2"), *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    return procs


def finish_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    try:
        return [finish(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_two_nodes_train_checkpoint_and_resume_exactly(data: dict, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    results = finish_all(launch_nodes(data, whole))
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    reference = losses(log_records(whole))
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert (whole / "model.safetensors").is_file() and (whole / "checkpoints" / "step_00000006.pt").is_file()

    parts = tmp_path / "parts"
    procs = launch_nodes(data, parts)
    try:
        wait_for_step(procs[0], parts, 3)
        import run
        node1 = [procs[1].pid, *run.descendants(procs[1].pid)]
        node0 = [procs[0].pid, *run.descendants(procs[0].pid)]
        assert len(node1) >= 3 and len(node0) >= 3  # run.py, torchrun and the worker on each node
        os.kill(procs[1].pid, signal.SIGKILL)  # node 1's launcher dies; its torchrun and worker get SIGTERM
    finally:
        results = finish_all(procs)
    rc0, err0 = results[0]
    assert rc0 != 0 and "Traceback" not in err0, err0[-3000:]
    # rank 0 (node 0) says where and why it stopped
    assert "stopped by SIGHUP (its launcher ended) of another rank after step" in err0, err0[-3000:]
    stopped = [r for r in log_records(parts) if r.get("event") == "stopped"]
    assert len(stopped) == 1 and 3 <= stopped[0]["step"] < STEPS, stopped
    assert (parts / "checkpoints" / f"step_{stopped[0]['step']:08d}.pt").is_file()
    assert_all_gone(node0 + node1, within=30)

    results = finish_all(launch_nodes(data, parts, "--resume", "latest"))
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    resumed = [r for r in log_records(parts) if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == stopped[0]["step"]
    assert losses(log_records(parts)) == pytest.approx(reference, rel=1e-6, abs=1e-7)

