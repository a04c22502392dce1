"""Launch a task script on one process, N local GPUs, or several nodes through torchrun.

    python run.py --task pretrain --dist 8 --config configs/pretrain/x2vlm_base_4m.yaml --output_dir out/pt
    python run.py --task pretrain --dist cpu --config configs/pretrain/demo.yaml
    python run.py --task retrieval --dist 8 --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --config ...

Everything after the launcher's own options (``--config``, ``--override``, ``--output_dir``,
``--resume``, ...) is passed to the task script unchanged.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
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
    if args.nnodes > 1:
        addr = args.master_addr or os.environ.get("MASTER_ADDR")
        if not addr:
            raise SystemExit("run.py: several nodes need --master_addr (or MASTER_ADDR)")
        cmd += [f"--node_rank={args.node_rank}", f"--master_addr={addr}", f"--master_port={args.master_port}"]
    else:
        cmd += ["--standalone"]
    return [*cmd, str(script), *script_args]


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
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args, script_args = p.parse_known_args()
    cmd = launch_command(args, script_args)
    if args.dry_run:
        print(" ".join(cmd))
        return
    raise SystemExit(subprocess.call(cmd, cwd=ROOT))


if __name__ == "__main__":
    main()
