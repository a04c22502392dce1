"""The launcher builds the right command for one process, N GPUs and several nodes."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


@contextlib.contextmanager
def pretraining_under_run_py(tmp_path: Path, launcher: list[str], *overrides: str):
    """``run.py --task pretrain <launcher> …`` on a small generated set (tests.test_stop's demo run) →
    ``(process, output_dir)``; the process is killed on the way out if it still runs."""
    from dataset.synthetic import generate
    from tests.test_stop import env, pretrain_args
    data = generate(tmp_path / "syn", seed=0, n_images=40, n_videos=0)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "--task", "pretrain", *launcher,
                             *pretrain_args(data, out, *overrides)], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def assert_all_gone(pids: list[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids), pids


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


def _gone(pid: int) -> bool:
    """``pid`` has ended (or is a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


IGNORES_TERM = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "time.sleep(120)"], start_new_session=True)
print("ready", flush=True)
time.sleep(120)
"""


def test_sigterm_to_run_py_kills_a_task_that_will_not_stop(tmp_path) -> None:
    """A task (and its grandchild, in its own session, like torchrun's workers) that ignores SIGTERM is killed
    ``stop_timeout`` seconds after run.py gets SIGTERM; nothing is left."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import run; "
            f"raise SystemExit(run.run_child([sys.executable, '-c', {IGNORES_TERM!r}], stop_timeout=1.0))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        import run
        below = run.descendants(proc.pid)
        assert len(below) == 2
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        assert time.monotonic() - start < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert rc == 128 + signal.SIGTERM  # run.py was stopped by SIGTERM (its task had to be killed)
    assert_all_gone(below)


def test_sigterm_to_run_py_stops_the_training_and_leaves_nothing(tmp_path) -> None:
    """run.py --dist cpu: SIGTERM reaches the trainer, which checkpoints and exits 143; run.py exits 143 and
    no process of the task remains."""
    from tests.test_stop import finish, wait_for_step
    with pretraining_under_run_py(tmp_path, ["--dist", "cpu", "--stop_timeout", "60"]) as (proc, out):
        wait_for_step(proc, out, 2)
        import run
        below = run.descendants(proc.pid)
        assert below
        proc.send_signal(signal.SIGTERM)
        rc, err = finish(proc, timeout=90)
    assert rc == 143, err[-3000:]
    assert "stopped by SIGTERM after step" in err and "Traceback" not in err, err[-3000:]
    assert list((out / "checkpoints").glob("step_*.pt"))
    assert_all_gone(below)


@pytest.mark.parametrize("how", ["sigterm_run_py", "kill_torchrun"])
def test_two_workers_stop_with_a_checkpoint_and_leave_nothing(tmp_path, how: str) -> None:
    """run.py --dist 2 (torchrun, gloo): SIGTERM to run.py, or kill -9 of the torchrun agent (its workers get
    SIGHUP from the kernel, once per thread of torchrun: repeats must not stop them at once): both workers stop
    at the same step with one checkpoint; no process remains."""
    from tests.test_stop import finish, log_records, wait_for_step
    with pretraining_under_run_py(tmp_path, ["--dist", "2", "--stop_timeout", "60"], "train.steps=40") as (proc, out):
        wait_for_step(proc, out, 2)
        import run
        below = run.descendants(proc.pid)
        agent = [p for p, parent in run._parents().items() if parent == proc.pid]
        assert len(agent) == 1 and len(below) >= 3  # torchrun and its 2 workers
        if how == "sigterm_run_py":
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(agent[0], signal.SIGKILL)
        rc, err = finish(proc, timeout=90)
    assert rc == (143 if how == "sigterm_run_py" else 137), err[-3000:]
    signal_name = "SIGTERM" if how == "sigterm_run_py" else "SIGHUP (its launcher ended)"
    lines = [x for x in err.splitlines() if f"stopped by {signal_name}" in x]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]  # rank 0 reports, torchrun stays quiet
    stopped = [r for r in log_records(out) if r.get("event") == "stopped"]
    assert len(stopped) == 1 and (out / "checkpoints" / f"step_{stopped[0]['step']:08d}.pt").is_file()
    assert_all_gone(below)


@pytest.mark.parametrize("dist", ["cpu", "2"])
def test_max_restarts_resumes_from_the_latest_checkpoint(tmp_path, dist: str) -> None:
    """run.py --max-restarts 1: a trainer (one process, or a torchrun worker) killed with -9 comes back by itself
    and continues from the latest step checkpoint to the end."""
    from tests.test_stop import finish, log_records, wait_for_step
    launcher = ["--dist", dist, "--max-restarts", "1"]
    with pretraining_under_run_py(tmp_path, launcher, "train.ckpt_every=2") as (proc, out):
        wait_for_step(proc, out, 3)
        import run
        parents = run._parents()
        child = [p for p, parent in parents.items() if parent == proc.pid]
        victim = child[0] if dist == "cpu" else [p for p, parent in parents.items() if parent == child[0]][0]
        os.kill(victim, signal.SIGKILL)
        rc, err = finish(proc, timeout=180)
    assert rc == 0, err[-3000:]
    records = log_records(out)
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] >= 2, records
    assert {r["step"] for r in records if "loss" in r} == set(range(1, 9))
