"""Time one pretraining forward+backward (ITC + ITM + MLM [+ bbox]) of an X²-VLM preset on random data.

    python benchmarks/model_step.py --preset tiny --batch 16              # CPU, CI-sized
    python benchmarks/model_step.py --preset x2vlm_base --batch 128 --dtype bf16 --device cuda

Prints images/s (median over timed steps), step time and peak memory (CUDA allocator peak on GPU,
process peak RSS on CPU), plus the device, and appends the row as JSON to ``--out`` if given.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.x2vlm import X2VLM  # noqa: E402
from utils.config import REPO_ROOT, load_config  # noqa: E402


def synthetic_batch(model: X2VLM, images: int, regions_per_image: int, text_len: int, num_masks: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Random batch in the pretraining contract: one caption per image plus ``regions_per_image`` boxes."""
    res = model.cfg["image_res"]
    vocab = model.text_encoder.config.vocab_size
    n = images * (1 + regions_per_image)
    index = torch.arange(images).repeat(1 + regions_per_image)
    is_region = torch.arange(n) >= images
    boxes = torch.rand(n, 4) * 0.5 + 0.25
    boxes[~is_region] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    batch = {
        "images": torch.randn(images, 3, res, res),
        "text_ids": torch.randint(1000 % vocab, vocab, (n, text_len)),
        "text_atts": torch.ones(n, text_len, dtype=torch.long),
        "image_index": index,
        "ids": torch.arange(n),
        "mlm_ids": torch.randint(1000 % vocab, vocab, (n, text_len)),
        "mlm_positions": torch.randint(1, text_len, (n, num_masks)),
        "mlm_labels": torch.randint(1000 % vocab, vocab, (n, num_masks)),
    }
    if regions_per_image:
        batch["boxes"] = boxes
        batch["is_region"] = is_region
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    overrides = list(args.override)
    if args.image_res:
        overrides.append(f"model.image_res={args.image_res}")
    cfg = load_config(REPO_ROOT / "configs" / "models" / f"{args.preset}.yaml", overrides)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_fn = torch.compile(model.forward_pretrain) if args.compile else model.forward_pretrain
    batch = synthetic_batch(model, args.batch, args.regions, args.text_len, args.masks, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = step_fn(batch)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or ''}"
    return {
        "preset": args.preset, "batch": args.batch, "regions_per_image": args.regions, "dtype": args.dtype,
        "compile": args.compile, "image_res": cfg["model"]["image_res"], "device": name.strip(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "step_ms_median": round(median * 1e3, 2), "images_per_s": round(args.batch / median, 2),
        "peak_gib": round(peak_memory_gib(device), 3),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="configs/models/<preset>.yaml (tiny, x2vlm_base, x2vlm_large)")
    p.add_argument("--batch", type=int, default=16, help="images per step (one caption each)")
    p.add_argument("--regions", type=int, default=1, help="region texts per image (bbox loss); 0 = image-text only")
    p.add_argument("--text-len", type=int, default=30)
    p.add_argument("--masks", type=int, default=8, help="MLM positions per text")
    p.add_argument("--image-res", type=int, default=0, help="override the preset's resolution")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="append the result row (JSON line) to this file")
    args = p.parse_args()
    row = run(args)
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
