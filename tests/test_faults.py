"""Faults of the machine or of the user's set-up end a script with one line that says what to do, never with a
traceback, and never lose or corrupt a checkpoint: a full disk, an output folder that cannot be written, a resume
with another model / data / number of processes, too many broken samples (also from a DataLoader worker), CUDA
asked for without a GPU."""
from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_stop import env, pretrain_args
from utils.atomic import OutputError, atomic_write, temp_path
from utils.train_state import checkpoint_paths, load_train_state, run_setup, setup_changes, state_changes


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("faults") / "syn", seed=0, n_images=24, n_videos=0)


def pretrain(data: dict, out: Path, *overrides: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = pretrain_args(data, out, "train.steps=2", "train.ckpt_every=1", *overrides)
    return subprocess.run([sys.executable, str(ROOT / "Pretrain.py"), "--device", "cpu", *args, *extra],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The script's one error line (log lines before it are allowed); no traceback anywhere."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------------------------------- writing outputs
def test_atomic_write_failure_names_the_target_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "weights.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"old"))

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError) as caught:
        atomic_write(target, fail)
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert target.read_bytes() == b"old" and not temp_path(target).exists()
    with pytest.raises(ZeroDivisionError):  # other errors pass unchanged, the temp file still goes
        atomic_write(target, lambda tmp: (tmp.write_bytes(b"x"), 1 / 0))
    assert target.read_bytes() == b"old" and not temp_path(target).exists()


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous(data: dict, tmp_path: Path) -> None:
    """The kernel's own ENOSPC: step 2's temporary file is a link to /dev/full (every write to it fails)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system (Linux has it)")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    target = out / "checkpoints" / "step_00000002.pt"
    temp_path(target).symlink_to("/dev/full")
    line = error_line(pretrain(data, out))
    assert "No space left on device" in line and str(target) in line
    assert "free disk space" in line and "--resume latest" in line
    assert not os.path.lexists(temp_path(target))  # the failed save removed its temporary file
    assert [p.name for p in checkpoint_paths(out)] == ["step_00000001.pt"]
    assert load_train_state(checkpoint_paths(out)[0])["step"] == 1  # the previous checkpoint is whole


def test_output_dir_that_cannot_be_made_is_one_line_before_training(data: dict, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "run"
    line = error_line(pretrain(data, out))
    assert f"cannot write {out / 'config.yaml'}: Not a directory" in line and "--output_dir" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the ENOTDIR case above runs)")
def test_read_only_output_dir_is_one_line(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        line = error_line(pretrain(data, out))
    finally:
        out.chmod(0o700)
    assert "Permission denied" in line and "--output_dir" in line


# ------------------------------------------------------------------------------------------- resuming another run
def test_resume_with_another_model_or_data_is_one_line(data: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = pretrain(data, out)
    assert first.returncode == 0, first.stderr[-3000:]
    before = [p.read_bytes() for p in checkpoint_paths(out)]
    config_text = (out / "config.yaml").read_text()
    line = error_line(pretrain(data, out, "model.fusion.layers=1", extra=("--resume", "latest")))
    assert "written by another run set-up (model.fusion.layers: 2 -> 1)" in line and "number of processes" in line
    line = error_line(pretrain(data, out, "optimizer.lr=0.001", extra=("--resume", "latest")))
    assert "optimizer.lr: 0.0005 -> 0.001" in line
    fewer = tmp_path / "fewer.jsonl"  # the same kind of data, other records: the data position means nothing
    records = (Path(data["root"]) / "pretrain" / "image_text.jsonl").read_text().splitlines()
    fewer.write_text("\n".join(records[: len(records) // 2]) + "\n")
    line = error_line(pretrain(data, out, f"data.train_file=[{fewer}]", extra=("--resume", "latest")))
    assert f"data source 'images' had {len(records)} samples when the checkpoint was written, it has " \
           f"{len(records) // 2} now" in line and "resume with the data it was written with" in line
    assert [p.read_bytes() for p in checkpoint_paths(out)] == before  # nothing was touched
    assert config_text == (out / "config.yaml").read_text()  # the config beside them is still theirs


def test_run_setup_records_what_a_resume_must_share(tiny_cfg: dict) -> None:
    setup = run_setup(tiny_cfg, world_size=2)
    assert setup["world_size"] == 2 and setup["model.fusion.layers"] == tiny_cfg["model"]["fusion"]["layers"]
    assert "optimizer.lr" in setup and "data.images.batch_size" in setup and "train.grad_accum" in setup
    # paths may move between machines; loader speed and run length may change
    for free in ("data.train_file", "data.root", "model.checkpoint", "model.text.tokenizer", "data.num_workers",
                 "train.steps", "train.log_every", "output_dir"):
        assert free not in setup, free
    assert setup_changes(setup, run_setup(tiny_cfg, world_size=1)) == ["world_size: 2 -> 1"]
    saved, now = {"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": torch.zeros(4), "c": torch.zeros(1)}
    assert state_changes(saved, now) == ["c: missing from the checkpoint", "b: not in this model",
                                         "a: shape (2,) -> (4,)"]


# ------------------------------------------------------------------------------------------- data and device
@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_broken_samples_is_one_line(data: dict, tmp_path: Path, workers: int) -> None:
    """Every image of the file is broken: the abort names the budget, the last broken record (file:line) and,
    from a worker, which worker; no worker traceback."""
    source = Path(data["root"]) / "pretrain" / "image_text.jsonl"
    broken = tmp_path / "broken.jsonl"
    rows = [json.loads(x) for x in source.read_text().splitlines()]
    for row in rows:
        row["binary"] = base64.b64encode(b"not an image").decode()
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = error_line(pretrain(data, tmp_path / "run", f"data.train_file=[{broken}]", f"data.num_workers={workers}",
                               "data.bad_window=20", "data.max_bad_fraction=0.5"))
    assert "samples failed" in line and "limit 50% of 20" in line and f"{broken}:" in line
    assert "data.max_bad_fraction" in line
    assert ("DataLoader worker process" in line) == (workers > 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(data: dict, tmp_path: Path) -> None:
    args = pretrain_args(data, tmp_path / "run")
    proc = subprocess.run([sys.executable, str(ROOT / "Pretrain.py"), *args, "--device", "cuda"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)
    line = error_line(proc)
    assert "train.device is cuda but torch" in line and "sees no CUDA GPU" in line and "--device cpu" in line
