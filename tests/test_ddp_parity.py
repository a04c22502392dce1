"""2 processes (torchrun, gloo) over a global batch == 1 process over the same global batch: checks the
all_gather ITC with gradient, the per-rank hard-negative sampling, and DDP's gradient averaging."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

WORKER = ROOT / "tests" / "workers" / "parity_run.py"


def run(out: Path, nproc: int, *overrides: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(WORKER), str(out), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out / "result.pt", weights_only=True)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_match_one(tmp_path: Path, grad_accum: int) -> None:
    steps = ["train.steps=3", f"train.grad_accum={grad_accum}"]
    single = run(tmp_path / "single", 1, *steps)
    double = run(tmp_path / "double", 2, *steps)
    assert len(single["log"]) == len(double["log"]) == 3
    for a, b in zip(single["log"], double["log"], strict=True):
        for key in ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"):
            assert a[key] == pytest.approx(b[key], rel=2e-6, abs=1e-7), (a["step"], key)
    assert single["log"][-1]["loss"] != pytest.approx(single["log"][0]["loss"], rel=1e-3)  # it trained
    changed = 0
    for name, p in single["params"].items():
        if name.endswith("key.bias"):
            # softmax ignores a key bias (it shifts every logit of a row equally): its true gradient is 0, the
            # computed one is rounding noise that Adam's normalisation turns into lr-sized steps of any sign
            continue
        torch.testing.assert_close(double["params"][name], p, atol=1e-6, rtol=1e-5, msg=name)
        changed += 1
    assert changed > 50
