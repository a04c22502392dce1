"""Launch a task script on one process, N local GPUs, or several nodes through torchrun.

    python run.py --task pretrain --dist 8 --config configs/pretrain/x2vlm_base_4m.yaml --output_dir out/pt
    python run.py --task pretrain --dist cpu --config configs/pretrain/demo.yaml
    python run.py --task retrieval --dist 8 --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --config ...

Everything after the launcher's own options (``--config``, ``--override``, ``--output_dir``,
``--resume``, ...) is passed to the task script unchanged.

SIGTERM / SIGINT (Ctrl-C) are passed on to the task (torchrun passes them on to its workers): training ends its
step, writes a step checkpoint and exits with 128 + the signal's number (``--resume latest`` continues). After
``--stop_timeout`` seconds whatever is left of the task is killed; no process of the task outlives ``run.py``.
SIGHUP (e.g. the terminal or the job's shell went away) is passed on the same way; if run.py itself is killed
(-9), the kernel sends its task SIGHUP, which stops training with a checkpoint as well.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from utils.errors import COLLECTIVE_TIMEOUT_EXIT, USER_ERROR
from utils.parent_death import PARENT_DIED, become_subreaper, die_with_parent

ROOT = Path(__file__).resolve().parent
#: exit statuses of a task that has said why in one line: a user error, a collective timeout and a stop by
#: SIGHUP / SIGINT / SIGTERM (128 + N)
REPORTED_EXITS = (USER_ERROR, COLLECTIVE_TIMEOUT_EXIT, 128 + signal.SIGHUP, 128 + signal.SIGINT,
                  128 + signal.SIGTERM)
TASKS = {
    "pretrain": "Pretrain.py",
    "retrieval": "Retrieval.py",
    "vqa": "VQA.py",
    "nlvr": "NLVR.py",
    "grounding": "Grounding.py",
    "captioning": "Captioning.py",
    "videoqa": "VideoQA.py",
}


def launch_command(args: argparse.Namespace, script_args: list[str]) -> list[str]:
    """The command line that runs the task: a plain process for ``--dist 1``/``cpu``, else torchrun."""
    script = ROOT / TASKS[args.task]
    if not script.is_file():
        raise SystemExit(f"run.py: task '{args.task}' needs {script.name}, which this checkout does not have")
    if args.dist in ("1", "cpu") and args.nnodes == 1:
        extra = ["--device", "cpu"] if args.dist == "cpu" else []
        return [sys.executable, str(script), *extra, *script_args]
    if args.dist == "all":
        import torch
        nproc = str(max(torch.cuda.device_count(), 1))
    elif args.dist.isdigit() and int(args.dist) > 0:
        nproc = args.dist
    else:
        raise SystemExit(f"run.py: --dist must be a positive number, 'all' or 'cpu', got '{args.dist}'")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={args.nnodes}"]
    if getattr(args, "max_restarts", 0):
        cmd.append(f"--max-restarts={args.max_restarts}")
    if args.nnodes > 1:
        addr = args.master_addr or os.environ.get("MASTER_ADDR")
        if not addr:
            raise SystemExit("run.py: several nodes need --master_addr (or MASTER_ADDR)")
        cmd += [f"--node_rank={args.node_rank}", f"--master_addr={addr}", f"--master_port={args.master_port}"]
    else:
        cmd += ["--standalone"]
    return [*cmd, str(script), *script_args]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, PARENT_DIED)
# torchrun, ending with 128 + N instead of its traceback when signal N stopped it (its workers report the stop),
# and with the workers' own status when they ended with a one-line report of theirs (utils.cli: a user error, a
# stop by a signal, a collective timeout) instead of its ChildFailedError report; real crashes keep that report
_TORCHRUN = f"""
import sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main
sys.argv[0] = "torchrun"
try:
    main()
except SignalException as e:
    raise SystemExit(128 + int(e.sigval)) from None
except ChildFailedError as e:
    codes = {{failure.exitcode for failure in e.failures.values()}}
    if codes and codes <= {set(REPORTED_EXITS)!r}:
        raise SystemExit(max(codes)) from None
    raise
"""


def _child_setup() -> None:
    """In the task's process before it starts: SIGHUP when run.py dies, however it dies (Linux); the task
    stops as for SIGTERM (utils.parent_death)."""
    die_with_parent(PARENT_DIED)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc; empty elsewhere)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(f"/proc/{entry.name}/stat").read_text()
                except OSError:
                    continue
                table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    table = _parents()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in table.items():
            if ppid == parent and child not in found:
                found.append(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _reap() -> None:
    """Collect the exit status of every child that ended (orphans handed to run.py as subreaper)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def run_child(cmd: list[str], stop_timeout: float = 120.0, env: dict[str, str] | None = None,
              received: list[tuple[float, int]] | None = None) -> int:
    """Run ``cmd`` and return its exit status (128 + N when a signal N ended it). SIGTERM / SIGINT sent to
    run.py go to the child; ``stop_timeout`` seconds after the first, the child and everything below it are
    killed. Processes the child leaves behind (run.py is their subreaper on Linux) get ``stop_timeout`` seconds
    to end, then SIGKILL. ``received`` collects (time, signal) of the signals run.py got meanwhile."""
    subreaper = become_subreaper()
    if cmd[1:3] == ["-m", "torch.distributed.run"]:
        cmd = [cmd[0], "-c", _TORCHRUN, *cmd[3:]]
    # its own session: Ctrl-C in a terminal reaches run.py only, which passes it on once
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,  # noqa: PLW1509
                            preexec_fn=_child_setup)
    received = [] if received is None else received

    def forward(signum: int, frame: object) -> None:
        received.append((time.monotonic(), signum))
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    tracked: set[int] = set()  # every process seen below the child: orphans are known even before re-parenting
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                tracked = {p for p in tracked if _alive(p)} | set(descendants(proc.pid))
                if received and time.monotonic() - received[0][0] > stop_timeout:
                    print(f"run.py: the task did not stop within {stop_timeout:g} s; killing it", file=sys.stderr)
                    _signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
    finally:
        if proc.poll() is None:  # run.py itself is failing: take the task with it
            _signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
            proc.wait()
        def leftover() -> list[int]:
            """Live processes of the task: below run.py, or still under a dead process of the task (not yet
            re-parented); a reused pid elsewhere has another parent and is left alone."""
            _reap()
            parents, own = _parents(), set(descendants(os.getpid()))
            family = own | tracked | {proc.pid}
            return sorted(p for p in own | tracked if _alive(p) and (p in own or parents.get(p) in family))

        left = leftover() if subreaper else []
        if left:  # orphans of the task, e.g. torchrun's workers after torchrun was killed: they have had their
            # SIGHUP from the kernel (utils.parent_death) and are checkpointing; a SIGTERM would stop them at once
            deadline = time.monotonic() + stop_timeout
            while (left := leftover()) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_all(left, signal.SIGKILL)
            time.sleep(0.1)
            _reap()
        for s, handler in previous.items():
            signal.signal(s, handler)
    rc = 128 - rc if rc < 0 else rc
    return 128 + received[0][1] if received and rc != 0 else rc  # stopped by a signal to run.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The task scripts' own options: python <script> --help ("
                                       + ", ".join(f"{t}: {s}" for t, s in sorted(TASKS.items())) + ").")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="which task script to run")
    p.add_argument("--dist", default="1", help="processes on this node: N, 'all' (every GPU) or 'cpu' (one, on CPU)")
    p.add_argument("--nnodes", type=int, default=int(os.environ.get("NNODES", "1")),
                   help="nodes in the job (default: $NNODES or 1); run the same command on every node")
    p.add_argument("--node_rank", type=int, default=int(os.environ.get("NODE_RANK", "0")),
                   help="this node's index, 0 .. nnodes-1 (default: $NODE_RANK or 0)")
    p.add_argument("--master_addr", default=None, help="address of node 0 (several nodes; default: $MASTER_ADDR)")
    p.add_argument("--master_port", type=int, default=int(os.environ.get("MASTER_PORT", "29500")),
                   help="port on node 0 (default: $MASTER_PORT or 29500)")
    p.add_argument("--stop_timeout", type=float, default=120.0,
                   help="seconds the task gets to checkpoint and exit after SIGTERM / SIGINT before it is killed "
                        "(default 120)")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, default=0,
                   help="restart the task this many times after a failure (torchrun's --max-restarts; one process: "
                        "run.py restarts it); a restarted task resumes from its latest step checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args, script_args = p.parse_known_args()
    cmd = launch_command(args, script_args)
    if args.dry_run:
        print(" ".join(cmd))
        return
    restarts = 0 if "torch.distributed.run" in cmd else args.max_restarts  # torchrun restarts by itself
    attempt = 0
    while True:
        received: list[tuple[float, int]] = []
        # a restarted task resumes from its latest checkpoint (utils.trainer.restart_resume), as under torchrun
        env = {**os.environ, "TORCHELASTIC_RESTART_COUNT": str(attempt)} if attempt else None
        rc = run_child(cmd, args.stop_timeout, env=env, received=received)
        if rc in (0, USER_ERROR) or received or attempt >= restarts:
            raise SystemExit(rc)
        attempt += 1
        print(f"run.py: the task failed (exit status {rc}); restart {attempt} of {restarts} from its latest "
              "checkpoint", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
