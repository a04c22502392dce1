"""DeepSpeed ZeRO engine on CPU (gloo): config translation, training next to DDP, exact resume from the
sharded checkpoints, 2 ranks vs 1, the consolidated weights in the step checkpoint, and shards read without
running code (weights_only=True: a planted object is refused)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_CONFIG
from utils.config import ConfigError, apply_overrides, load_config
from utils.deepspeed_engine import deepspeed_config, lift_scalar_parameters

pytest.importorskip("deepspeed")
WORKER = ROOT / "tests" / "workers" / "parity_run.py"
DS = ["train.engine=deepspeed", "train.precision=bf16"]


def ds_cfg(*overrides: str) -> dict:
    return apply_overrides(load_config(TINY_CONFIG), [*DS, *overrides])


def test_config_translation() -> None:
    ds = deepspeed_config(ds_cfg("train.grad_accum=4", "train.clip_grad=0.5"))
    assert ds["gradient_accumulation_steps"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["stage"] == 2
    user = ds_cfg("train.deepspeed={zero_optimization: {stage: 1}, zero_allow_untested_optimizer: true}")
    assert deepspeed_config(user)["zero_optimization"] == {"stage": 1, "overlap_comm": True,
                                                           "contiguous_gradients": True}


@pytest.mark.parametrize("overrides, key", [
    (["train.deepspeed={zero_optimization: {stage: 3}}"], "zero_optimization.stage"),
    (["train.deepspeed={gradient_accumulation_steps: 2}"], "train.grad_accum"),
    (["train.deepspeed={bf16: {enabled: true}}"], "train.precision"),
    (["train.precision=fp32"], "train.precision"),
])
def test_config_errors_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        deepspeed_config(ds_cfg(*overrides))


def test_scalar_parameters_are_lifted() -> None:
    module = torch.nn.Module()
    module.temp = torch.nn.Parameter(torch.tensor(0.07))
    module.weight = torch.nn.Parameter(torch.ones(2))
    assert lift_scalar_parameters(module) == ["temp"]
    assert module.temp.shape == (1,) and module.temp.item() == pytest.approx(0.07)


def spawn(out: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([sys.executable, *launcher, str(WORKER), str(out), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def run(out: Path, nproc: int, *args: str) -> dict:
    proc = spawn(out, nproc, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out / "result.pt", weights_only=True)


def close_losses(a: list[dict], b: list[dict], rel: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"):
            assert x[key] == pytest.approx(y[key], rel=rel), (x["step"], key)


def test_deepspeed_trains_like_ddp_and_resumes_exactly(tmp_path: Path) -> None:
    steps = ["train.steps=4", "train.ckpt_every=2", "train.keep_last=1"]
    ddp = run(tmp_path / "ddp", 1, *steps, "train.precision=bf16")
    full = run(tmp_path / "full", 1, *steps, *DS)
    close_losses(ddp["log"], full["log"], rel=0.05)  # bf16 weights (DeepSpeed) vs bf16 autocast (DDP)

    ckpts = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000004.ds", "step_00000004.pt"]  # keep_last=1
    state = torch.load(ckpts / "step_00000004.pt", weights_only=True)
    assert state["engine"] == "deepspeed" and state["model"]["temp"].shape == ()
    assert state["model"]["temp"].dtype == torch.float32
    for name, value in full["params"].items():  # consolidated fp32 master weights ≈ the bf16 module
        torch.testing.assert_close(state["model"][name].to(torch.bfloat16).float(), value.reshape(
            state["model"][name].shape), atol=1e-2, rtol=1e-2, msg=name)

    part = tmp_path / "part"
    run(part, 1, *steps, *DS, "--stop_after", "2")
    resumed = run(part, 1, *steps, *DS, "--resume", "latest")
    assert [r["step"] for r in resumed["log"]] == [1, 2, 3, 4]  # one log file over both runs
    close_losses(full["log"], resumed["log"], rel=1e-6)
    for name, value in full["params"].items():
        torch.testing.assert_close(resumed["params"][name], value, atol=0, rtol=0, msg=name)


def test_two_ranks_zero2_match_one(tmp_path: Path) -> None:
    steps = ["train.steps=3", "train.grad_accum=2"]
    one = run(tmp_path / "one", 1, *steps, *DS)
    two = run(tmp_path / "two", 2, *steps, *DS)
    close_losses(one["log"], two["log"], rel=2e-2)  # bf16 sums in a different order
    # the two runs' parameters differ by far less than training moved them
    update = sum((one["params"][k] - one["init"][k].reshape(v.shape)).norm() ** 2 for k, v in one["params"].items())
    gap = sum((two["params"][k] - v).norm() ** 2 for k, v in one["params"].items())
    assert update > 0 and gap.sqrt() < 0.04 * update.sqrt(), (float(gap.sqrt()), float(update.sqrt()))


class Planted:
    """A planted object: unpickling it runs ``touch marker`` (pickled as a call of os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.slow
def test_shard_with_a_planted_object_is_refused(tmp_path: Path) -> None:
    """--resume reads the ZeRO shards with weights_only=True: an object other than tensors, plain containers and
    DeepSpeed's own shard classes stops the run with one line naming the file and the override, and never runs."""
    base = tmp_path / "base"
    steps = ["train.steps=3", "train.ckpt_every=2", *DS]
    run(base, 1, *steps, "--stop_after", "2")
    zero = Path("checkpoints") / "step_00000002.ds" / "zero"
    names = sorted(p.name for p in (base / zero).iterdir())
    assert names == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "mp_rank_00_model_states.pt"]
    for name in names:
        out = tmp_path / name.removesuffix(".pt")
        shutil.copytree(base, out)
        shard = out / zero / name
        marker = tmp_path / f"{name}.ran"
        state = torch.load(shard, weights_only=False)  # the test's own file
        state["planted"] = Planted(marker)
        torch.save(state, shard)
        proc = spawn(out, 1, *steps, "--resume", "latest")
        assert proc.returncode != 0, proc.stdout[-2000:]
        line = [x for x in proc.stderr.splitlines() if "models.checkpoint.CheckpointError: " in x][-1]
        assert str(shard) in line and "posix.system" in line and "--trusted-checkpoint" in line, line
        assert not marker.exists(), "the planted code ran"
        assert '"step": 3' not in (out / "log.jsonl").read_text()  # no step trained after it


def test_consolidation_reads_shards_weights_only(tmp_path: Path) -> None:
    """save_shards reads the shards it wrote back through DeepSpeed's zero_to_fp32, which passes
    weights_only=False: inside _weights_only_loads torch.load refuses objects anyway (DeepSpeed's classes pass)."""
    import argparse
    import pickle

    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from utils.deepspeed_engine import _weights_only_loads
    path = tmp_path / "shard.pt"
    torch.save({"scaler": LossScaler(1.0), "w": torch.ones(2)}, path)
    with _weights_only_loads():
        assert torch.load(path, weights_only=False)["scaler"].cur_scale == 1.0
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with _weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
    assert isinstance(torch.load(path, weights_only=False)["args"], argparse.Namespace)  # outside: as before


@pytest.mark.slow
def test_pretraining_run_ends_with_fp32_weights_in_the_models_shapes(tmp_path: Path) -> None:
    """``Pretrain.py`` under DeepSpeed writes ``model.safetensors`` at the end: the fp32 master weights of the final
    step checkpoint, 0-dim parameters in their own shape (the module's are bf16 views of DeepSpeed's buffers with the
    temperature lifted to (1,), which safetensors refuses to write)."""
    from safetensors.torch import load_file

    from dataset.synthetic import generate
    files = generate(tmp_path / "syn", seed=0, n_images=48, n_videos=0)
    root = files["root"]
    out = tmp_path / "run"
    overrides = [f"data.root={root}", f"model.text.tokenizer={files['vocab']}",
                 f"data.train_file=[{root}/pretrain/image_text.jsonl]",
                 f"data.train_file_regions=[{root}/pretrain/regions.jsonl]", "eval.retrieval_file=[]",
                 "eval.grounding_file=[]", *DS, "train.steps=2", "train.log_every=1", "train.ckpt_every=100",
                 "data.num_workers=0"]
    cmd = [sys.executable, str(ROOT / "Pretrain.py"), "--config", str(ROOT / "configs" / "pretrain" / "demo.yaml"),
           "--output_dir", str(out), "--device", "cpu"] + [a for o in overrides for a in ("--override", o)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = load_file(out / "model.safetensors")
    step = torch.load(out / "checkpoints" / "step_00000002.pt", weights_only=True)["model"]
    assert weights["temp"].shape == () and {v.dtype for v in weights.values()} == {torch.float32}
    assert all(torch.equal(v, step[k]) for k, v in weights.items())
