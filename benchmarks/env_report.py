"""The environment line of a benchmark run: Python and package versions, the device, and its measured bf16 matmul
rate (the denominator of every MFU figure of ``benchmarks/pretrain_compare.py``).

The rate is ``2 n^3`` FLOP per ``n x n`` bf16 product over the mean of ``--repeats`` timed products after three
warm-ups (8192 on a GPU, as the workplace's own reading of 788 TFLOP/s on an H200; 1024 on a CPU).

    python benchmarks/env_report.py --device cuda --out env.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time

PACKAGES = ("torch", "torchvision", "transformers", "timm", "safetensors", "yaml", "webdataset", "av",
            "pycocoevalcap", "pycocotools", "deepspeed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--n", type=int, default=0, help="matrix size (0: 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--repeats", type=int, default=10, help="timed products")
    p.add_argument("--out", help="write the JSON row to this file")
    args = p.parse_args()

    import torch
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a missing or broken package is what this line reports
            versions[name] = f"missing ({type(e).__name__})"
    device = torch.device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "sms": props.multi_processor_count, "cuda": torch.version.cuda}
    else:
        dev = {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    n = args.n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(args.repeats):
        a @ b
    sync()
    dt = (time.perf_counter() - t) / args.repeats
    row = {"python": sys.version.split()[0], "packages": versions, "device": dev, "matmul_n": n,
           "bf16_matmul_tflops": round(2 * n**3 / dt / 1e12, 3), "date": time.strftime("%Y-%m-%d")}
    print(f"env: python {row['python']} | " + " | ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"env: device {dev} | bf16 matmul {n}^3: {row['bf16_matmul_tflops']} TFLOP/s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(row, f)


if __name__ == "__main__":
    main()
