"""ATen operators dispatched by one pretraining step (forward + loss + backward): ours vs the official X²-VLM.

Every operator call that reaches the dispatcher is counted by a ``TorchDispatchMode`` (:class:`OpCounter`),
views, copies and in-place ops included, autograd's backward ops too. Fewer operators per step means less
launch / dispatch overhead, the cost that dominates small batches and that ``torch.compile`` otherwise has
to fuse away. The optimiser step is not counted (both sides use the same AdamW).

    # the base model on CPU, fp32, 224 px: 2 image-text pairs + 2 region texts on 1 region image
    python benchmarks/op_count.py --threads 1 --out op_count.jsonl
    # ours only, the tiny preset (the official side exists at base size only)
    python benchmarks/op_count.py --preset tiny
    python benchmarks/op_count.py --device cuda

OUR step is ``model(batch)["loss"].backward()`` on :func:`pretrain_throughput.synthetic_batch` (3 images,
4 texts by default). The OFFICIAL step is that of ``../shared/bench/official_pretrain_step.py``'s timing
harness (``train_step``: the image-text forward, then the region forward, their losses summed, backward), on
that harness's synthetic batches in the official collate layout, the model built from the official code in
the git-ignored ``bench_official/`` (``$X2VLM_OFFICIAL`` overrides; never commit that copy). Each side runs in
its own fresh process (both code bases have top-level ``models``/``utils``/``dataset`` packages), one untimed
warm-up step first, then one counted step. Prints both totals, the ratio ours / official and each side's top
operators; ``--out`` appends the run as one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OFFICIAL_HARNESS = ROOT.parent / "shared" / "bench" / "official_pretrain_step.py"
OFFICIAL_CODE = ROOT / "bench_official"
OFFICIAL_PRESET = "x2vlm_base"  # the harness builds the official base model only
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
TOP = 15


class OpCounter(TorchDispatchMode):
    """Counts every operator call (``func`` of ``__torch_dispatch__``) while active, by overload name
    (``aten.add.Tensor``). ``mark()`` remembers the running total (the forward / backward split)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.marked = 0

    def __torch_dispatch__(self, func: torch._ops.OpOverload, types: tuple[type, ...], args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def mark(self) -> None:
        self.marked = self.total

    def top(self, n: int = TOP) -> list[tuple[str, int]]:
        return self.counts.most_common(n)


def count_step(forward: Callable[[], torch.Tensor], model: torch.nn.Module, warmup: int = 1) -> OpCounter:
    """``warmup`` uncounted steps (lazy init), then one counted ``forward().backward()``. Gradients are set to
    None before every step (as the trainers' ``zero_grad(set_to_none=True)``): each backward creates them."""
    for _ in range(warmup):
        model.zero_grad(set_to_none=True)
        forward().backward()
    model.zero_grad(set_to_none=True)
    counter = OpCounter()
    with counter:
        loss = forward()
        counter.mark()
        loss.backward()
    return counter


def summary(counter: OpCounter) -> dict[str, Any]:
    return {"forward_ops": counter.marked, "backward_ops": counter.total - counter.marked, "total_ops": counter.total,
            "distinct_ops": len(counter.counts), "top": counter.top(), "counts": dict(counter.counts)}


# ---------------------------------------------------------------------------------------------- our step
def count_ours(preset: str = OFFICIAL_PRESET, image_res: int = 0, pairs: int = 2, region_images: int = 1,
               region_rows: int = 2, text_len: int = 30, masks: int = 4, device: str = "cpu",
               precision: str = "fp32", warmup: int = 1) -> dict[str, Any]:
    """Operators of our pretraining step on :func:`pretrain_throughput.synthetic_batch` (the model built as in
    ``pretrain_throughput.measure``)."""
    from benchmarks.pretrain_throughput import device_name, synthetic_batch
    from models.x2vlm import X2VLM
    from utils.config import load_config

    dev = torch.device(device)
    overrides = [f"model.image_res={image_res}"] if image_res else []
    cfg = load_config(ROOT / "configs" / "models" / f"{preset}.yaml", overrides)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg, load_weights=False).to(dev).train()
    batch: dict[str, Any] = synthetic_batch(model, pairs, region_images, region_rows, text_len, masks, dev)
    dtype = DTYPES[precision]
    step = iter(range(1_000_000))

    def forward() -> torch.Tensor:
        batch["sample_seed"] = 1_000_003 * 42 + next(step)  # as the trainer: seeds the ITM negative draws
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            return model(batch)["loss"]

    row = summary(count_step(forward, model, warmup))
    return {"side": "ours", "preset": preset, "image_res": cfg["model"]["image_res"], "device": device_name(dev),
            "threads": torch.get_num_threads(),
            "images": int(batch["images"].shape[0]), "texts": int(batch["text_ids"].shape[0]),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), **row}


# ---------------------------------------------------------------------------------------------- the official step
def official_missing(harness: Path = OFFICIAL_HARNESS) -> str | None:
    """Why the official step cannot be counted here (None when it can)."""
    if not harness.is_file():
        return f"official harness not found: {harness} (expected at ../shared/bench/ from the repo root)"
    code = Path(os.environ.get("X2VLM_OFFICIAL", OFFICIAL_CODE))
    if not (code / "models" / "model_pretrain.py").is_file():
        return (f"official X²-VLM code not found in {code} (copy the official models/ dataset/ utils/ configs/ "
                "optim.py there, git-ignored, or set X2VLM_OFFICIAL)")
    return None


def load_official_harness(path: Path = OFFICIAL_HARNESS) -> ModuleType:
    """Import ``official_pretrain_step.py`` from its path (it stays outside this repository), pointed at the
    official code in ``bench_official/`` unless ``$X2VLM_OFFICIAL`` is set."""
    missing = official_missing(path)
    if missing:
        raise SystemExit(missing + "; run with --no-official to count our step only")
    clash = sorted(m for m in ("models", "utils", "dataset") if m in sys.modules)
    if clash:
        raise RuntimeError(f"our {clash} packages are already imported; count the official step in a fresh process")
    os.environ.setdefault("X2VLM_OFFICIAL", str(OFFICIAL_CODE))  # the harness reads it at import
    spec = importlib.util.spec_from_file_location("official_pretrain_step", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_official(image_res: int = 224, pairs: int = 2, region_images: int = 1, region_rows: int = 2,
                   text_len: int = 30, masks: int = 4, device: str = "cpu", precision: str = "fp32",
                   warmup: int = 1) -> dict[str, Any]:
    """Operators of the official mixed step (``train_step`` of the harness without the optimiser part)."""
    harness = load_official_harness()
    xvlm, _, _ = harness.load_official()
    cfg = harness.official_config()
    cfg.update(image_res=image_res, max_tokens=text_len, max_masks=masks)
    dev = torch.device(device)
    harness.init_dist(dev.type)
    torch.manual_seed(42)
    model = xvlm(config=cfg, load_vision_params=False, load_text_params=False).to(dev).train()
    gen = torch.Generator().manual_seed(0)
    image_batch = [t.to(dev) for t in harness.make_image_batch(gen, pairs, cfg)]
    region_batch = [t.to(dev) for t in harness.make_region_batch(gen, region_rows, region_images, cfg)]
    dtype = DTYPES[precision]

    def forward() -> torch.Tensor:  # the forward half of harness.train_step
        with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            image, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids = image_batch
            loss = model(image, text_ids, text_atts, text_ids_masked=text_ids_masked,
                         masked_pos=masked_pos, masked_ids=masked_ids, ret_match_loss=True)
            total = loss["loss_itc"] + loss["loss_itm"] + loss["loss_mlm"]
            (image, idx_to_group_img, text_ids, text_atts, text_ids_masked, masked_pos, masked_ids,
             image_atts, target_bbox, is_image) = region_batch
            rl = model(image, text_ids, text_atts, text_ids_masked=text_ids_masked, masked_pos=masked_pos,
                       masked_ids=masked_ids, image_atts=image_atts, idx_to_group_img=idx_to_group_img,
                       target_bbox=target_bbox, is_image=is_image, ret_bbox_loss=True, ret_match_loss=True)
            return total + rl["loss_itc"] + rl["loss_itm"] + rl["loss_mlm"] + rl["loss_bbox"] + rl["loss_giou"]

    row = summary(count_step(forward, model, warmup))
    return {"side": "official", "preset": "official x2vlm_base_4m", "image_res": image_res,
            "images": pairs + region_images, "texts": pairs + region_rows,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2), **row}


# ---------------------------------------------------------------------------------------------- driver
def run_side(args: argparse.Namespace, side: str) -> dict[str, Any]:
    """One side in a fresh interpreter; its row is the last stdout line (JSON)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", side]
    for flag in ("preset", "image_res", "pairs", "region_images", "region_rows", "text_len", "masks", "device",
                 "precision", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise SystemExit(f"{side} step failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(lines[-1])


def print_side(row: dict[str, Any]) -> None:
    print(f"{row['side']}: {row['total_ops']:,} ops ({row['forward_ops']:,} forward + loss, "
          f"{row['backward_ops']:,} backward; {row['distinct_ops']} distinct) | {row['preset']}, "
          f"{row['params_m']}M params, {row['images']} images, {row['texts']} texts, {row['image_res']} px")
    for name, n in row["top"]:
        print(f"    {n:>6,}  {name}")


def single(args: argparse.Namespace) -> dict[str, Any]:
    sizes = dict(pairs=args.pairs, region_images=args.region_images, region_rows=args.region_rows,
                 text_len=args.text_len, masks=args.masks, device=args.device, precision=args.precision)
    if args.single == "ours":
        return count_ours(args.preset, args.image_res, **sizes)
    return count_official(args.image_res, **sizes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=OFFICIAL_PRESET, help="configs/models/<preset>.yaml for our side")
    p.add_argument("--image-res", type=int, default=0, help="image resolution (default: the preset's)")
    p.add_argument("--pairs", type=int, default=2, help="image-text pairs (one caption each)")
    p.add_argument("--region-images", type=int, default=1, help="region images")
    p.add_argument("--region-rows", type=int, default=2, help="texts on the region images")
    p.add_argument("--text-len", type=int, default=30, help="tokens per text")
    p.add_argument("--masks", type=int, default=4, help="MLM positions per text")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--no-official", action="store_true", help="count our step only")
    p.add_argument("--out", help="append the run (one JSON line) to this file")
    p.add_argument("--single", choices=("ours", "official"), help=argparse.SUPPRESS)  # internal: one side here
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(single(args)), flush=True)
        return

    with_official = not args.no_official and args.preset == OFFICIAL_PRESET
    if with_official and official_missing():
        raise SystemExit(f"{official_missing()}; run with --no-official to count our step only")
    ours = run_side(args, "ours")
    args.image_res = ours["image_res"]  # the official batch at our resolution
    official = run_side(args, "official") if with_official else None
    if not args.no_official and not with_official:
        print(f"official side skipped: the harness builds the official base model only (--preset {OFFICIAL_PRESET})")
    print(f"torch {torch.__version__} | {ours['device']}, {ours['threads']} threads | {args.precision} | "
          f"{args.pairs} pairs + {args.region_rows} region texts on {args.region_images} region image(s), "
          f"text length {args.text_len}, {args.masks} masks | one step counted after one warm-up step")
    print_side(ours)
    ratio = None
    if official is not None:
        print_side(official)
        ratio = round(ours["total_ops"] / official["total_ops"], 3)
        print(f"ours / official: {ours['total_ops']:,} / {official['total_ops']:,} = {ratio}x")
    if args.out:
        row = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "device": ours["device"],
               "precision": args.precision, "pairs": args.pairs, "region_images": args.region_images,
               "region_rows": args.region_rows, "text_len": args.text_len, "masks": args.masks,
               "ours": ours, "official": official, "ratio_ours_over_official": ratio}
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()  # not utils.cli.cli_main: that imports our utils package, which the official child must not see
