"""Throughput and peak memory of the full X²-VLM pretraining step, over precision × torch.compile.

One step is what ``utils/trainer.py`` does per optimiser step: forward with all four losses (ITC, ITM
with in-batch hard negatives, MLM, bbox L1 + GIoU) on a merged image-text + region batch, backward,
the non-finite check, gradient clipping, the AdamW step (``utils.optim.build_optimizer``, fused on
CUDA), the LR schedule step and the temperature clamp. Inputs are random but shaped like a real merged
batch (see :func:`synthetic_batch`), so no data pipeline time is included (``data_throughput.py``
measures that side).

    # CPU, CI-sized: fp32/bf16 × compile off/on with the tiny preset
    python benchmarks/pretrain_throughput.py --preset tiny --batch 16
    # the FIBER-style architecture (fusion in the backbone) at the same backbone sizes
    python benchmarks/pretrain_throughput.py --preset fiber_tiny --batch 16
    # GPU, the base model at the 4M recipe's per-GPU batch (128 pairs + 50 region images / 128 region texts)
    python benchmarks/pretrain_throughput.py --preset x2vlm_base --batch 128 --precision bf16 --device cuda
    # GPU, eager / compiled / CUDA-graphed (torch.compile mode reduce-overhead), with FLOPs per step for MFU
    python benchmarks/pretrain_throughput.py --preset x2vlm_base --batch 128 --precision bf16 --device cuda \
        --compile off,default,reduce-overhead --no-baseline --flops

``--compile`` takes ``off``, ``on`` (``--compile-mode``'s mode) or a torch.compile mode by name (``default``,
``reduce-overhead`` — CUDA graphs —, ``max-autotune``, ``max-autotune-no-cudagraphs``); ``--compile-backend`` other
than inductor (``eager``, ``aot_eager``: quick plumbing checks on CPU) ignores the mode. ``--flops`` counts the
FLOPs of one more step of the bare (uncompiled) model with ``torch.utils.flop_counter.FlopCounterMode`` after the
timed steps (``flops_per_step``, ``gflops_per_text``: model FLOPs, the same whatever the compile mode).

Every configuration runs in its own fresh subprocess, so peak memory is per configuration: the CUDA
allocator peak (``torch.cuda.max_memory_allocated``, timed steps only) on GPU, and the process's peak RSS
(``ru_maxrss``, a whole-process high-water mark: imports, model build and every step) on CPU. The
fp32 / compile-off baseline is always run first (``--no-baseline`` skips it) and every row carries its
ratios to it. Step time is the median over ``--steps`` timed steps after ``--warmup`` untimed ones
(compilation happens in the warm-up; its time is reported as ``warmup_s``). Rows are printed as a table
and appended as JSON lines to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.steptimer import time_steps  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.optim import build_optimizer, build_scheduler  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
FIRST_WORD_ID = 5  # keep clear of the special tokens at the start of the vocabulary


def synthetic_batch(model: X2VLM, images: int, region_images: int, region_rows: int, text_len: int,
                    num_masks: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch in the pretraining contract (top of ``models/x2vlm.py``), shaped like the merged
    batch of ``dataset.pretrain.MixedLoader``: ``images`` image-text pairs (one caption each, whole-image
    box, not a region), then ``region_images`` images carrying ``region_rows`` texts — the first row of
    each region image is its whole-image caption, the others describe random boxes (``is_region``)."""
    g = torch.Generator().manual_seed(seed)
    res = model.cfg["image_res"]
    vocab = model.text_encoder.config.vocab_size
    low = min(FIRST_WORD_ID, vocab - 1)
    n = images + region_rows
    index = torch.cat([torch.arange(images), images + torch.arange(region_rows) % max(region_images, 1)])
    is_region = torch.zeros(n, dtype=torch.bool)
    is_region[images + region_images:] = True
    boxes = torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(n, 1)
    boxes[is_region] = torch.rand(int(is_region.sum()), 4, generator=g) * 0.5 + 0.25
    batch = {
        "images": torch.randn(images + region_images, 3, res, res, generator=g),
        "text_ids": torch.randint(low, vocab, (n, text_len), generator=g),
        "text_atts": torch.ones(n, text_len, dtype=torch.long),
        "image_index": index,
        "ids": torch.arange(n),
        "mlm_ids": torch.randint(low, vocab, (n, text_len), generator=g),
        "mlm_positions": torch.randint(1, text_len, (n, num_masks), generator=g),
        "mlm_labels": torch.randint(low, vocab, (n, num_masks), generator=g),
        "boxes": boxes,
        "is_region": is_region,
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU {name} ({os.cpu_count()} cores)".replace("  ", " ")


def rss_gib() -> float:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        return 0.0


def region_images_default(batch: int) -> int:
    # the 4M recipes pair 128 (base) / 64 (large) image-text pairs with 50 / 25 region images
    return max(1, round(batch * 50 / 128))


# ---------------------------------------------------------------------------------------------- one run
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def measure(args: argparse.Namespace, precision: str, compile_mode: str | None) -> dict[str, Any]:
    """Build the model and optimiser, run warm-up + timed steps of one configuration, return its row."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    overrides = list(args.override)
    if args.image_res:
        overrides.append(f"model.image_res={args.image_res}")
    cfg = load_config(ROOT / "configs" / "models" / f"{args.preset}.yaml", overrides)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg, load_weights=False).to(device).train()
    optimizer = build_optimizer(model, cfg["optimizer"], model.fresh_parameters)
    scheduler = build_scheduler(optimizer, cfg["scheduler"], cfg["train"]["steps"])
    compiled = compile_mode is not None
    if not compiled:
        engine = model
    elif args.compile_backend == "inductor":
        engine = torch.compile(model, mode=compile_mode)
    else:  # eager / aot_eager: dynamo tracing only (no mode)
        engine = torch.compile(model, backend=args.compile_backend)
    graphed = (compiled and args.compile_backend == "inductor" and device.type == "cuda"
               and compile_mode in ("reduce-overhead", "max-autotune"))  # the modes that use CUDA graphs
    region_images = args.region_images if args.region_images >= 0 else region_images_default(args.batch)
    region_rows = args.region_rows if args.region_rows >= 0 else (args.batch if region_images else 0)
    batch = synthetic_batch(model, args.batch, region_images, region_rows, args.text_len, args.masks, device)
    dtype = DTYPES[precision]
    clip = cfg["train"]["clip_grad"] if args.clip_grad is None else args.clip_grad
    n_images = batch["images"].shape[0]
    n_texts = batch["text_ids"].shape[0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    finite = torch.ones((), dtype=torch.bool, device=device)

    def step(i: int, net: Any = engine) -> dict[str, torch.Tensor]:
        if graphed:  # CUDA graph trees: a new training iteration starts here
            torch.compiler.cudagraph_mark_step_begin()
        # as the trainer: a 0-d device tensor (a Python int would recompile a compiled step) seeds the ITM negatives
        batch["sample_seed"] = torch.full((), 1_000_003 * 42 + i, dtype=torch.int64, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = net(batch)
        out["loss"].backward()
        finite.logical_and_(torch.isfinite(out["loss"].detach()))  # on the device, as the trainer: no sync here
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        model.clamp_temperature()
        return out

    rss_built = rss_gib()
    timed = time_steps(step, args.warmup, args.steps, device)
    out, times, warmup_s = timed.last, timed.times, timed.warmup_s
    if not bool(finite):  # the trainer's non-finite check, read once (it reads at each log record)
        raise FloatingPointError(f"non-finite loss in the steps; the last: {out['loss'].item()}")
    median = statistics.median(times)
    dynamo = {}
    if compiled:
        from torch._dynamo.utils import counters
        dynamo = {"dynamo_graphs": int(counters["stats"]["unique_graphs"]),
                  "dynamo_graph_breaks": int(sum(counters["graph_break"].values())),
                  "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process_peak_rss"  # KiB
    flops = {}
    if args.flops:  # model FLOPs of one step of the bare model (the same whatever the compile mode)
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            out = step(args.warmup + args.steps, model)
        sync()
        total = int(counter.get_total_flops())
        flops = {"flops_per_step": total, "gflops_per_text": round(total / n_texts / 1e9, 3),
                 "achieved_tflops": round(total / median / 1e12, 3)}
    return {
        "preset": args.preset, "precision": precision, "compile": compiled,
        "compile_mode": compile_mode, "compile_backend": args.compile_backend if compiled else None,
        "images": n_images, "image_text_pairs": args.batch, "region_images": region_images,
        "texts": n_texts, "region_rows": region_rows, "text_len": args.text_len, "masks": args.masks,
        "image_res": cfg["model"]["image_res"], "clip_grad": clip,
        "tf32": args.tf32 if device.type == "cuda" else None,
        "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "warmup_steps": args.warmup, "timed_steps": args.steps, "warmup_s": round(warmup_s, 2),
        "step_ms_median": round(median * 1e3, 2), "step_ms_min": round(min(times) * 1e3, 2),
        "step_ms_max": round(max(times) * 1e3, 2),
        "images_per_s": round(n_images / median, 2), "texts_per_s": round(n_texts / median, 2),
        "peak_mem_gib": round(peak, 3), "peak_mem_kind": peak_kind,
        "rss_after_build_gib": round(rss_built, 3) if device.type == "cpu" else None,
        **dynamo, **flops,
        "final_losses": {k: round(float(v.detach()), 4) for k, v in out.items()},
    }


# ---------------------------------------------------------------------------------------------- the matrix
def child_command(args: argparse.Namespace, precision: str, compile_mode: str | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", f"{precision}:{compile_mode or 'off'}"]
    for flag, value in (("--preset", args.preset), ("--batch", args.batch), ("--region-images", args.region_images),
                        ("--region-rows", args.region_rows), ("--text-len", args.text_len),
                        ("--masks", args.masks), ("--image-res", args.image_res), ("--device", args.device),
                        ("--compile-mode", args.compile_mode), ("--compile-backend", args.compile_backend),
                        ("--warmup", args.warmup), ("--steps", args.steps)):
        cmd += [flag, str(value)]
    if args.clip_grad is not None:
        cmd += ["--clip-grad", str(args.clip_grad)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not args.tf32:
        cmd += ["--no-tf32"]
    if args.flops:
        cmd += ["--flops"]
    for o in args.override:
        cmd += ["--override", o]
    return cmd


def run_child(args: argparse.Namespace, precision: str, compile_mode: str | None) -> dict[str, Any]:
    """One configuration in a fresh interpreter; its row is the last stdout line (JSON)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(child_command(args, precision, compile_mode), capture_output=True, text=True,
                              timeout=args.config_timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"precision": precision, "compile": compile_mode is not None, "compile_mode": compile_mode,
                "error": f"timed out after {args.config_timeout}s (--config-timeout)"}
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"precision": precision, "compile": compile_mode is not None, "compile_mode": compile_mode,
                "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    row = json.loads(lines[-1])
    row["process_wall_s"] = round(wall, 1)
    return row


def add_ratios(rows: list[dict[str, Any]], baseline: dict[str, Any] | None) -> None:
    for row in rows:
        ok = baseline is not None and "error" not in baseline and "error" not in row
        row["speedup_vs_fp32_eager"] = round(row["images_per_s"] / baseline["images_per_s"], 3) if ok else None
        row["mem_vs_fp32_eager"] = round(row["peak_mem_gib"] / baseline["peak_mem_gib"], 3) if ok else None


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("precision", 9), ("compile_mode", 15), ("step_ms_median", 14), ("images_per_s", 12),
            ("speedup_vs_fp32_eager", 21), ("peak_mem_gib", 12), ("mem_vs_fp32_eager", 17), ("warmup_s", 8)]
    print(" | ".join(name.ljust(w) for name, w in cols))
    for row in rows:
        if "error" in row:
            print(f"{row['precision']:<9} | {str(row.get('compile_mode')):<15} | ERROR {row['error']}")
            continue
        print(" | ".join(str(row.get(name)).ljust(w) for name, w in cols))


def parse_list(text: str, allowed: dict[str, Any]) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part not in allowed:
            raise SystemExit(f"unknown value '{part}' (choose from {', '.join(allowed)})")
        out.append(allowed[part])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny",
                   help="configs/models/<preset>.yaml (tiny, x2vlm_base, x2vlm_large, fiber_tiny, fiber_base)")
    p.add_argument("--batch", type=int, default=16, help="image-text pairs per step (one caption each)")
    p.add_argument("--region-images", type=int, default=-1,
                   help="region images per step (default: batch x 50/128, the 4M recipes' ratio; 0 = none)")
    p.add_argument("--region-rows", type=int, default=-1,
                   help="region texts per step (default: = --batch, as in the 4M recipes)")
    p.add_argument("--text-len", type=int, default=40, help="tokens per text (the recipes' max_tokens)")
    p.add_argument("--masks", type=int, default=12, help="MLM positions per text (the recipes' max_masks)")
    p.add_argument("--image-res", type=int, default=0, help="override the preset's resolution")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--compile", default="off,on",
                   help="comma list of off, on (torch.compile with --compile-mode) and mode names: "
                        + ", ".join(COMPILE_MODES) + " (reduce-overhead: CUDA graphs)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of 'on' (default, max-autotune, ...)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (inductor; eager / aot_eager trace only, the mode is ignored)")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOPs of one more step (FlopCounterMode, bare model): flops_per_step")
    p.add_argument("--no-baseline", action="store_true", help="do not add the fp32 / compile-off reference run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="CUDA: fp32 matmuls in full fp32 (default: TF32 allowed, as most fp32 training runs)")
    p.add_argument("--clip-grad", type=float, default=None, help="max grad norm (default: train.clip_grad)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--config-timeout", type=float, default=3600, help="seconds allowed per configuration")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", help="append the rows (JSON lines) to this file")
    p.add_argument("--single", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.single:
        precision, mode = args.single.split(":")
        print(json.dumps(measure(args, precision, None if mode in ("off", "0") else mode)), flush=True)
        return

    precisions = parse_list(args.precision, {k: k for k in DTYPES})
    compiles = parse_list(args.compile, {"off": None, "on": args.compile_mode, **{m: m for m in COMPILE_MODES}})
    matrix = [(pr, c) for pr in precisions for c in compiles]
    if not args.no_baseline and ("fp32", None) not in matrix:
        matrix.insert(0, ("fp32", None))
    matrix.sort(key=lambda pc: (pc != ("fp32", None),))  # baseline first
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    rows = []
    for precision, compile_mode in matrix:
        print(f"[{precision}, compile {compile_mode or 'off'}] ...", flush=True)
        row = run_child(args, precision, compile_mode)
        row["run_id"] = run_id
        rows.append(row)
    baseline = next((r for r in rows if r["precision"] == "fp32" and not r["compile"]), None)
    add_ratios(rows, baseline)
    ok = next((r for r in rows if "error" not in r), None)
    if ok:
        print(f"{ok['device']} | torch {ok['torch']} | {ok['threads']} threads | preset {ok['preset']} "
              f"({ok['params_m']}M params) | {ok['images']} images ({ok['image_text_pairs']} pairs + "
              f"{ok['region_images']} region images), {ok['texts']} texts | median of {ok['timed_steps']} steps "
              f"after {ok['warmup_steps']} warm-up | peak memory: {ok['peak_mem_kind']}")
    print_table(rows)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
