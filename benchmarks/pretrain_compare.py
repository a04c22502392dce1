"""Our pretraining step and the official one side by side, eager / compiled / CUDA-graphed, within a time budget.

Each configuration runs in its own process: ours through ``benchmarks/pretrain_throughput.py``, the official one
through ``benchmarks/official_step.py``, both on the same batch shape (``--mode image``: ``--batch`` image-text
pairs, ITC + ITM + MLM, as the official image step; ``--mode mixed``: plus the region batch of ``--region-images``
images and ``--batch`` region texts with the box losses, as the 4M recipes' merged step). Per row: step time
(median), pairs/s (texts per second: image-text pairs, plus region texts in mixed mode), the FLOPs of one step of
the bare model (``FlopCounterMode``), achieved TFLOP/s, MFU = achieved / the measured bf16 matmul rate
(``--matmul-tflops``, or ``bf16_matmul_tflops`` of ``--env-json``, written by ``benchmarks/env_report.py``), peak GiB
(CUDA allocator peak of the timed steps) and the warm-up (compile) seconds.

The plan runs in order and stops starting configurations once ``--budget`` seconds are spent; each configuration
gets at most ``--eager-timeout`` / ``--compile-timeout`` seconds (its whole process group is ended then), so a
slow compile costs its own row only.

    python benchmarks/pretrain_compare.py --device cuda --batch 128 --env-json OUT/env.json --budget 270
    python benchmarks/pretrain_compare.py --device cpu --preset tiny --batch 2 --warmup 1 --steps 1 \\
        --compile-backend eager --official-shrink --budget 200          # the CPU dry run of gpu_suite.sh
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.subproc import end_children_on_sigterm, error_tail, run_limited  # noqa: E402

DEFAULT_PLAN = "ours:off,official:off,ours:default,ours:reduce-overhead,official:default,official:reduce-overhead"


def ours_command(args: argparse.Namespace, mode: str) -> list[str]:
    region = ["--region-images", "0", "--region-rows", "0"] if args.mode == "image" else \
        ["--region-images", str(args.region_images), "--region-rows", str(args.batch)]
    warmup = args.warmup if mode == "off" else args.compile_warmup
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pretrain_throughput.py"), "--single", f"{args.precision}:{mode}",
           "--preset", args.preset, "--batch", str(args.batch), *region, "--device", args.device,
           "--compile-mode", "default", "--compile-backend", args.compile_backend, "--warmup", str(warmup),
           "--steps", str(args.steps), "--text-len", "40", "--masks", "12", "--flops"]
    if args.image_res:
        cmd += ["--image-res", str(args.image_res)]
    return cmd


def official_command(args: argparse.Namespace, mode: str) -> list[str]:
    warmup = args.warmup if mode == "off" else args.compile_warmup
    cmd = [sys.executable, str(ROOT / "benchmarks" / "official_step.py"), "--batch", str(args.batch),
           "--mode", args.mode, "--region-images", str(args.region_images), "--amp", args.precision,
           "--compile", mode, "--compile-backend", args.compile_backend, "--warmup", str(warmup),
           "--steps", str(args.steps), "--device", args.device]
    return cmd + (["--shrink"] if args.official_shrink else [])


def normalise(impl: str, raw: dict[str, Any], matmul_tflops: float | None) -> dict[str, Any]:
    """One row shape for both implementations."""
    texts = raw.get("texts")
    step_s = raw["step_ms_median"] / 1e3
    row = {"impl": impl, "compile_mode": raw.get("compile_mode") or "off",
           "compile_backend": raw.get("compile_backend"), "precision": raw["precision"],
           "image_res": raw.get("image_res"), "texts_per_step": texts,
           "images_per_step": raw.get("images"), "step_ms": raw["step_ms_median"],
           "pairs_per_s": round(texts / step_s, 1), "images_per_s": raw.get("images_per_s"),
           "flops_per_step": raw.get("flops_per_step"), "gflops_per_pair": raw.get("gflops_per_text"),
           "achieved_tflops": raw.get("achieved_tflops"), "peak_gib": raw.get("peak_mem_gib"),
           "peak_kind": raw.get("peak_mem_kind", "cuda_max_allocated" if raw.get("peak_mem_gib") else None),
           "warmup_s": raw.get("warmup_s"), "params_m": raw.get("params_m"), "device": raw.get("device"),
           "torch": raw.get("torch"), "graph_breaks": raw.get("dynamo_graph_breaks"),
           "cudagraph_skips": raw.get("cudagraph_skips")}
    if matmul_tflops and row["flops_per_step"]:
        row["mfu"] = round(row["flops_per_step"] / step_s / (matmul_tflops * 1e12), 4)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--preset", default="x2vlm_base", help="our model preset (configs/models/<preset>.yaml)")
    p.add_argument("--image-res", type=int, default=0, help="our resolution override (0: the preset's; base: 224)")
    p.add_argument("--batch", type=int, default=128, help="image-text pairs per step (the 4M recipe's per-GPU 128)")
    p.add_argument("--mode", choices=["image", "mixed"], default="image", help="the step compared (see above)")
    p.add_argument("--region-images", type=int, default=50, help="region images per step in mixed mode")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="autocast dtype of both")
    p.add_argument("--plan", default=DEFAULT_PLAN, help="comma list of impl:compile (impl: ours, official; "
                                                        "compile: off, default, reduce-overhead, max-autotune)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of an eager configuration")
    p.add_argument("--compile-warmup", type=int, default=3, help="untimed steps of a compiled one (compile included)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    p.add_argument("--official-shrink", action="store_true", help="the small official model (CPU checks)")
    p.add_argument("--eager-timeout", type=float, default=45, help="seconds allowed per eager configuration")
    p.add_argument("--compile-timeout", type=float, default=100, help="seconds allowed per compiled configuration")
    p.add_argument("--budget", type=float, default=270, help="seconds for the whole plan; later rows are skipped")
    p.add_argument("--min-start", type=float, default=20, help="do not start a configuration with less time left")
    p.add_argument("--matmul-tflops", type=float, default=0, help="the bf16 matmul rate for MFU (TFLOP/s)")
    p.add_argument("--env-json", help="read the matmul rate from env_report.py's JSON")
    p.add_argument("--out", help="append the rows (JSON lines) to this file")
    args = p.parse_args()

    end_children_on_sigterm()
    matmul = args.matmul_tflops
    if not matmul and args.env_json and Path(args.env_json).is_file():
        matmul = float(json.loads(Path(args.env_json).read_text())["bf16_matmul_tflops"])
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for item in [x.strip() for x in args.plan.split(",") if x.strip()]:
        impl, _, mode = item.partition(":")
        mode = mode or "off"
        if impl not in ("ours", "official"):
            raise SystemExit(f"unknown implementation '{impl}' in --plan (ours, official)")
        left = args.budget - (time.perf_counter() - start)
        base = {"impl": impl, "compile_mode": mode, "precision": args.precision}
        if left < args.min_start:
            row = {**base, "status": "skipped", "error": f"stage budget ({args.budget:.0f} s) spent"}
        else:
            limit = min(args.eager_timeout if mode == "off" else args.compile_timeout, left)
            cmd = ours_command(args, mode) if impl == "ours" else official_command(args, mode)
            t0 = time.perf_counter()
            res = run_limited(cmd, limit, cwd=ROOT)
            wall = round(time.perf_counter() - t0, 1)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.rc == 0 and lines:
                row = {**normalise(impl, json.loads(lines[-1]), matmul), "status": "ok", "process_s": wall}
            else:
                why = f"timed out after {limit:.0f} s" if res.timed_out else f"exit {res.rc}"
                row = {**base, "status": "timeout" if res.timed_out else "fail", "process_s": wall,
                       "error": f"{why}: {error_tail(res.stderr or res.stdout)}"}
        row |= {"mode": args.mode, "batch": args.batch, "matmul_tflops": matmul or None,
                "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(f"pretrain {impl} {mode}: " + (
            f"{row['step_ms']} ms/step, {row['pairs_per_s']} pairs/s, MFU {row.get('mfu')}, peak {row['peak_gib']} "
            f"GiB, warm-up {row['warmup_s']} s (process {row['process_s']} s)" if row["status"] == "ok"
            else f"{row['status'].upper()} {row['error'][-500:]}"), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    print(f"| impl | compile | step ms | pairs/s | GFLOP/pair | TFLOP/s | MFU | peak GiB | warm-up s |  "
          f"({args.mode} step, batch {args.batch}, {args.precision}, matmul {matmul or '?'} TFLOP/s)")
    for r in rows:
        if r["status"] == "ok":
            print(f"| {r['impl']} | {r['compile_mode']} | {r['step_ms']} | {r['pairs_per_s']} | {r['gflops_per_pair']} "
                  f"| {r['achieved_tflops']} | {r.get('mfu')} | {r['peak_gib']} | {r['warmup_s']} |")
        else:
            print(f"| {r['impl']} | {r['compile_mode']} | {r['status']}: {r['error'][-160:]} |")
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"pretrain summary: {ok}/{len(rows)} configurations measured in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
