"""The shared training loop: learning, exact resume, crash-safe checkpoints, non-finite skipping, step
checkpoints read without running code, and no mixing of an abandoned run's checkpoints into a resumed one."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.checkpoint import CheckpointError
from models.x2vlm import X2VLM
from tests.conftest import ROOT, random_batch
from utils import train_state, trust
from utils.config import apply_overrides
from utils.dist import DistInfo
from utils.train_state import checkpoint_paths, load_train_state, save_train_state
from utils.trainer import NonFiniteLossError, Trainer


def train_cfg(tiny_cfg: dict, out: Path, steps: int, **extra: Any) -> dict:
    overrides = [f"output_dir={out}", f"train.steps={steps}", "train.log_every=1", "train.ckpt_every=3",
                 "optimizer.lr=0.001", "scheduler.warmup=2", "train.keep_last=2"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return apply_overrides(tiny_cfg, overrides)


def batches(cfg: dict):
    def factory(start: int) -> Iterator[dict[str, Any]]:
        i = start
        while True:
            yield random_batch(cfg, n_images=3, n_texts=5, generator=torch.Generator().manual_seed(1000 + i))
            i += 1
    return factory


def make_trainer(cfg: dict) -> Trainer:
    torch.manual_seed(0)
    return Trainer(cfg, X2VLM.from_config(cfg), DistInfo())


def test_resume_is_exact(tiny_cfg: dict, tmp_path: Path) -> None:
    full = make_trainer(train_cfg(tiny_cfg, tmp_path / "full", 6, **{"train.grad_accum": 2}))
    full.fit(batches(full.cfg))

    cfg = train_cfg(tiny_cfg, tmp_path / "parts", 6, **{"train.grad_accum": 2})
    first = make_trainer(cfg)
    first.fit(batches(cfg), stop_after=3)
    assert [p.name for p in checkpoint_paths(cfg["output_dir"])] == ["step_00000003.pt"]
    torch.manual_seed(123)  # a different RNG state must be overwritten by the resume
    second = make_trainer(cfg)
    assert second.resume("latest") and second.step == 3
    second.fit(batches(cfg))
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert second.samples_seen == full.samples_seen


def test_loss_falls_and_logs(tiny_cfg: dict, tmp_path: Path) -> None:
    cfg = train_cfg(tiny_cfg, tmp_path, 12)
    trainer = make_trainer(cfg)
    fixed = random_batch(cfg, n_images=3, n_texts=5)
    trainer.fit(lambda start: iter(lambda: fixed, None))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    import json
    records = [json.loads(x) for x in lines]
    assert records[0]["step"] == 1 and records[-1]["step"] == 12
    assert {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou", "lr", "images_per_s"} <= set(records[0])
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert len(checkpoint_paths(tmp_path)) == 2  # keep_last


def test_nonfinite_steps_are_skipped_then_abort(tiny_cfg: dict, tmp_path: Path) -> None:
    cfg = train_cfg(tiny_cfg, tmp_path, 10, **{"train.max_nonfinite": 3})
    trainer = make_trainer(cfg)
    good = random_batch(cfg)
    bad = {**good, "images": torch.full_like(good["images"], float("nan"))}
    stream = iter([good, bad, good, bad, bad, bad, good])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError):
        trainer.fit(lambda start: stream)
    assert trainer.skipped_nonfinite == 4  # 1 isolated + 3 in a row
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
from utils import train_state
real_save = torch.save
def slow_save(obj, f):
    f.write(b"partial checkpoint bytes")
    f.flush()
    time.sleep(60)
torch.save = slow_save
train_state.save_train_state({out!r}, 2, {{"model": {{"w": torch.ones(3)}}}})
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path: Path) -> None:
    save_train_state(tmp_path, 1, {"model": {"w": torch.zeros(3)}})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(root=str(ROOT), out=str(tmp_path))])
    tmp_file = tmp_path / "checkpoints" / ".step_00000002.pt.tmp"
    for _ in range(600):
        if tmp_file.exists() and tmp_file.stat().st_size > 0:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp_file.exists(), "the writer never started"
    paths = checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == ["step_00000001.pt"]
    state = load_train_state(paths[-1])
    assert torch.equal(state["model"]["w"], torch.zeros(3)) and state["step"] == 1


def test_resume_from_an_older_checkpoint_sets_the_abandoned_ones_aside(tiny_cfg: dict, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Train to 4 (checkpoints 2, 4), resume from 2, get killed after 3 (checkpoint 3): --resume latest must
    continue step 3's timeline, not the abandoned step 4."""
    cfg = train_cfg(tiny_cfg, tmp_path, 6, **{"train.ckpt_every": 2, "train.keep_last": 5})
    folder = tmp_path / "checkpoints"

    def names() -> list[str]:
        return [p.name for p in checkpoint_paths(tmp_path)]

    make_trainer(cfg).fit(batches(cfg), stop_after=4)
    assert names() == ["step_00000002.pt", "step_00000004.pt"]
    abandoned_4 = load_train_state(folder / "step_00000004.pt")
    second = make_trainer(cfg)
    assert second.resume(str(folder / "step_00000002.pt")) and second.step == 2
    out = capsys.readouterr().out
    assert "step_00000004.pt" in out and "abandoned" in out and len(out.strip().splitlines()) == 1
    assert names() == ["step_00000002.pt"]
    moved = list(folder.glob("abandoned_*/step_00000004.pt"))
    assert len(moved) == 1 and torch.equal(load_train_state(moved[0])["rng"]["torch"], abandoned_4["rng"]["torch"])
    second.fit(batches(cfg), stop_after=3)  # killed after step 3, its checkpoint written
    assert names() == ["step_00000002.pt", "step_00000003.pt"]
    third = make_trainer(cfg)
    assert third.resume("latest") and third.step == 3
    for (name, a), b in zip(second.model.state_dict().items(), third.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    assert capsys.readouterr().out == ""  # resuming the newest moves nothing
    events = [line for line in (tmp_path / "log.jsonl").read_text().splitlines() if "abandoned" in line]
    assert len(events) == 1 and str(moved[0].parent) in events[0]


class Planted:
    """A planted object: unpickling it runs ``touch marker`` (pickled as a call of os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_step_checkpoint_with_a_planted_object_is_refused(tiny_cfg: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust, "_TRUSTED", False)  # restored after the test
    cfg = train_cfg(tiny_cfg, tmp_path, 3)
    make_trainer(cfg).fit(batches(cfg))
    path = checkpoint_paths(tmp_path)[-1]
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "planted_code_ran"
    torch.save({**state, "planted": Planted(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        make_trainer(cfg).resume("latest")
    message = str(err.value)
    assert str(path) in message and "posix.system" in message and "--trusted-checkpoint" in message
    assert "\n" not in message
    assert not marker.exists(), "the planted code ran"
    # a file you trust (a harmless object weights_only refuses): trusted=True, or --trusted-checkpoint's default
    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        make_trainer(cfg).resume("latest")
    trainer = make_trainer(cfg)
    assert trainer.resume("latest", trusted=True) and trainer.step == 3
    trust.trust_checkpoints()
    assert make_trainer(cfg).resume("latest")
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        make_trainer(cfg).resume("latest", trusted=False)  # an explicit choice wins over the default


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch) -> None:
    """A write that fails (here: a full disk) removes its temporary file and keeps the previous checkpoint."""
    import errno

    first = train_state.save_train_state(tmp_path, 1, {"model": {"w": torch.zeros(2)}})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train_state.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_state.save_train_state(tmp_path, 2, {"model": {"w": torch.ones(2)}})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]


def test_count_images_counts_every_task_batch() -> None:
    from utils.trainer import count_images
    x = torch.zeros(3, 3, 8, 8)
    assert count_images({"images": x, "videos": torch.zeros(2, 4, 3, 8, 8)}) == 5  # pretraining pool
    assert count_images({"image": x}) == 3
    assert count_images({"image0": x, "image1": x}) == 6  # NLVR: two images per sample
    assert count_images({"video": torch.zeros(2, 4, 3, 8, 8), "label": torch.zeros(2)}) == 2  # video QA


def test_training_hooks_are_explicit(tiny_model) -> None:
    """The trainer asks a model only through TrainingHooks: X²-VLM models have them, a plain module does not."""
    from utils.trainer import TrainingHooks
    assert isinstance(tiny_model, TrainingHooks) and not isinstance(torch.nn.Linear(2, 2), TrainingHooks)
    with torch.no_grad():
        tiny_model.temp.fill_(5.0)
    tiny_model.after_optimizer_step()
    assert float(tiny_model.temp) == pytest.approx(tiny_model.cfg["temp_max"])
    switches = tiny_model.loss_switches
    tiny_model.set_loss_switches({**switches, "mlm": False})
    assert tiny_model.loss_switches["mlm"] is False and switches["mlm"] is True  # a copy, not the live dict
