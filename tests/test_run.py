"""The launcher builds the right command for one process, N GPUs and several nodes."""
import subprocess
import sys

from tests.conftest import ROOT


def dry(*args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--dry-run", *args], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_cpu_runs_the_script_directly() -> None:
    cmd = dry("--task", "pretrain", "--dist", "cpu", "--config", "x.yaml", "--override", "a.b=1")
    assert "torch.distributed.run" not in cmd
    assert cmd.endswith("Pretrain.py --device cpu --config x.yaml --override a.b=1")


def test_gpus_use_torchrun_standalone() -> None:
    cmd = dry("--task", "pretrain", "--dist", "8", "--config", "x.yaml")
    assert "-m torch.distributed.run --nproc_per_node=8 --nnodes=1 --standalone" in cmd


def test_multi_node_arguments() -> None:
    cmd = dry("--task", "pretrain", "--dist", "4", "--nnodes", "2", "--node_rank", "1",
              "--master_addr", "10.1.2.3", "--master_port", "1234")
    assert "--nnodes=2 --node_rank=1 --master_addr=10.1.2.3 --master_port=1234" in cmd


def test_bad_dist_value_is_a_clear_error() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--task", "pretrain", "--dist", "many"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--dist must be" in out.stderr
