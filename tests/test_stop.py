"""Stopping a run as a cluster does: SIGTERM / SIGINT end the current step, write a step checkpoint and exit with
128 + the signal's number and one line (``--resume latest`` continues exactly); run.py passes the signal on and
leaves no process behind; a rank that stops answering makes every rank exit, naming it (train.dist_timeout)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("stop") / "syn", seed=0, n_images=40, n_videos=0)


def pretrain_args(data: dict, out: Path, *extra: str) -> list[str]:
    root = data["root"]
    overrides = [f"data.root={root}", f"model.text.tokenizer={data['vocab']}",
                 f"data.train_file=[{root}/pretrain/image_text.jsonl]",
                 f"data.train_file_regions=[{root}/pretrain/regions.jsonl]", "data.images.batch_size=4",
                 "data.regions.batch_size=4", "data.regions.max_images=2", "eval.retrieval_file=[]",
                 "eval.grounding_file=[]", f"train.steps={STEPS}", "train.log_every=1", "train.ckpt_every=100",
                 "scheduler.warmup=2", *extra]
    return ["--config", str(ROOT / "configs" / "pretrain" / "demo.yaml"), "--output_dir", str(out),
            *[a for o in overrides for a in ("--override", o)]]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def log_records(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(r.get("step", 0) >= step and "loss" in r for r in log_records(out)):
        assert proc.poll() is None, "the run ended before it was signalled"
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.1)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}  # a resumed run's later record wins


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_resume_is_exact(data: dict, tmp_path: Path, sig: signal.Signals) -> None:
    script = [sys.executable, str(ROOT / "Pretrain.py"), "--device", "cpu"]
    out = tmp_path / "parts"
    proc = subprocess.Popen([*script, *pretrain_args(data, out)], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_step(proc, out, 2)
        proc.send_signal(sig)
        rc, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = [r for r in log_records(out) if r.get("event") == "stopped"]
    assert len(stopped) == 1 and stopped[0]["signal"] == sig.name
    step = stopped[0]["step"]
    assert 2 <= step < STEPS
    ckpt = out / "checkpoints" / f"step_{step:08d}.pt"
    assert ckpt.is_file()
    lines = [x for x in err.splitlines() if "stopped by" in x]
    assert lines == [f"Pretrain.py: stopped by {sig.name} after step {step}; checkpoint {ckpt}; "
                     "resume with --resume latest"], err[-3000:]
    if sig != signal.SIGTERM:
        return  # the resume is checked once

    resumed = subprocess.run([*script, *pretrain_args(data, out), "--resume", "latest"], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_out = tmp_path / "full"
    full = subprocess.run([*script, *pretrain_args(data, full_out)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    got, want = losses(log_records(out)), losses(log_records(full_out))
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-7), s


def test_frozen_rank_is_named_and_every_rank_exits(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "workers" / "freeze_run.py"), str(tmp_path), "1", "2", "train.dist_timeout=10"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    lines = [x for x in (out + err).splitlines() if "collective timed out" in x]
    assert lines and lines[0].startswith("freeze_run.py: rank 0: collective timed out after 10 s waiting for "
                                         "ranks 1 (they stopped answering during step 3)"), (out + err)[-4000:]
    assert "Traceback" not in lines[0]
    steps = [r["step"] for r in log_records(tmp_path) if "loss" in r]
    assert steps == [1, 2]
    assert elapsed < 100, elapsed  # start-up (~10-20 s on a busy 2-core CPU) + 10 s timeout + 10 s wait + teardown


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_with_loader_workers(data: dict, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C in a terminal (SIGINT) and a scheduler's scancel (SIGTERM) signal every process of the group,
    DataLoader workers included: the workers ignore it, the trainer stops with a checkpoint and one line."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "Pretrain.py"), "--device", "cpu",
           *pretrain_args(data, out, "data.num_workers=2")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_step(proc, out, 2)
        os.killpg(proc.pid, sig)
        rc, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert rc == 128 + sig and "Traceback" not in err, err[-3000:]
    stopped = [r for r in log_records(out) if r.get("event") == "stopped"]
    assert len(stopped) == 1
    ckpt = out / "checkpoints" / f"step_{stopped[0]['step']:08d}.pt"
    assert ckpt.is_file()
    assert [x for x in err.splitlines() if "stopped by" in x] == [
        f"Pretrain.py: stopped by {sig.name} after step {stopped[0]['step']}; checkpoint {ckpt}; "
        "resume with --resume latest"]
