"""The OFFICIAL X²-VLM pretraining step, eager or under torch.compile (CUDA graphs with ``reduce-overhead``), one
configuration per process: the anchor that ``benchmarks/pretrain_throughput.py`` (ours) is compared with.

The timing harness, the compatibility shims and the batches in the official collate layout are those of the
workplace's ``official_pretrain_step.py`` (the shared ``bench/`` folder, not part of this repository); this file
imports it and adds what it lacks: the compile modes, a FLOP count of one step of the bare model
(``torch.utils.flop_counter.FlopCounterMode``, as its own FLOP count) in every configuration, and one JSON row in
the row format of ``benchmarks/pretrain_compare.py``. The official code itself is an ignored copy in
``./bench_official`` (``X2VLM_OFFICIAL``). The harness is looked for at ``$X2VLM_OFFICIAL_BENCH``,
``bench_official/official_pretrain_step.py`` (copy it there to take it to a GPU machine: only the repository and
its carried ignored folders travel), ``../shared/bench/`` and ``shared/bench/``.

    python benchmarks/official_step.py --batch 128 --amp bf16 --compile reduce-overhead --device cuda
    python benchmarks/official_step.py --batch 2 --steps 1 --warmup 1 --device cpu --shrink --compile-backend eager
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder only: the repository root's utils / models
from steptimer import time_steps  # noqa: E402  (would shadow the official code's packages)

ROOT = Path(__file__).resolve().parents[1]
HARNESS = "official_pretrain_step.py"


def harness_path() -> Path | None:
    """Where the official harness is, or None."""
    env = os.environ.get("X2VLM_OFFICIAL_BENCH")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "bench_official" / HARNESS, ROOT.parent / "shared" / "bench" / HARNESS,
                   ROOT / "shared" / "bench" / HARNESS]
    return next((c for c in candidates if c.is_file()), None)


def official_code_present() -> bool:
    """Whether the harness and the (git-ignored, so absent on a fresh clone) official code are both here."""
    return harness_path() is not None and (Path(os.environ.get("X2VLM_OFFICIAL", ROOT / "bench_official"))
                                           / "models").is_dir()


def load_harness() -> ModuleType:
    path = harness_path()
    if path is None:
        raise SystemExit(f"official_step.py: no {HARNESS} (looked at $X2VLM_OFFICIAL_BENCH, bench_official/, "
                         "../shared/bench/, shared/bench/); copy it into bench_official/ (docs/performance.md, "
                         "the GPU check)")
    os.environ.setdefault("X2VLM_OFFICIAL", str(ROOT / "bench_official"))
    spec = importlib.util.spec_from_file_location("official_pretrain_step", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not os.path.isdir(module.OFFICIAL):
        raise SystemExit(f"official_step.py: the official code is not at {module.OFFICIAL} (X2VLM_OFFICIAL; it is "
                         "git-ignored: make it as docs/performance.md says under the GPU check)")
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="image-text pairs per step")
    p.add_argument("--mode", choices=["image", "mixed"], default="image",
                   help="image: the image-text step; mixed: the official image + region step")
    p.add_argument("--region-images", type=int, default=50, help="images of the region batch (mixed)")
    p.add_argument("--amp", choices=["bf16", "fp16", "fp32"], default="bf16", help="autocast dtype")
    p.add_argument("--compile", default="off",
                   help="off, or a torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (eager / aot_eager: tracing only, the mode is ignored)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--shrink", action="store_true",
                   help="a small official model for CPU checks: 64 px, 2 vision layers, 2 text + 1 fusion layer")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args()

    import torch
    bench = load_harness()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import warnings
    warnings.filterwarnings("ignore")
    XVLM, create_optimizer, _notes = bench.load_official()
    cfg = bench.official_config()
    if args.shrink:
        cfg.update(image_res=64, vision_num_hidden_layers=2, text_num_hidden_layers=3, text_fusion_start_at=2)
    bench.init_dist(device.type)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the official main()
    torch.manual_seed(42)
    model = XVLM(config=cfg, load_vision_params=False, load_text_params=False).to(device).train()
    optimizer = create_optimizer(SimpleNamespace(**cfg["optimizer"]), model)  # names of the bare model
    compiled = args.compile != "off"
    if not compiled:
        engine = model
    elif args.compile_backend == "inductor":
        engine = torch.compile(model, mode=args.compile)
    else:
        engine = torch.compile(model, backend=args.compile_backend)
    graphed = (compiled and args.compile_backend == "inductor" and device.type == "cuda"
               and args.compile in ("reduce-overhead", "max-autotune"))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.amp]
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    gen = torch.Generator().manual_seed(0)
    img = [[t.to(device) for t in bench.make_image_batch(gen, args.batch, cfg)] for _ in range(2)]
    reg: list[Any] = [None, None]
    if args.mode == "mixed":
        reg = [[t.to(device) for t in bench.make_region_batch(gen, args.batch, args.region_images, cfg)]
               for _ in range(2)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(i: int, net: Any = engine) -> Any:
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()
        return bench.train_step(net, optimizer, scaler, img[i % 2], reg[i % 2], amp_dtype, device.type)

    timed = time_steps(step, args.warmup, args.steps, device)
    loss, times, warmup_s = timed.last, timed.times, timed.warmup_s
    median = statistics.median(times)
    texts = args.batch * (2 if args.mode == "mixed" else 1)
    images = args.batch + (args.region_images if args.mode == "mixed" else 0)
    row: dict[str, Any] = {
        "impl": "official", "mode": args.mode, "precision": args.amp, "compile": compiled,
        "compile_mode": args.compile if compiled else None,
        "compile_backend": args.compile_backend if compiled else None, "batch": args.batch,
        "image_res": cfg["image_res"], "texts": texts, "images": images, "shrink": args.shrink,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "warmup_steps": args.warmup, "timed_steps": args.steps, "warmup_s": round(warmup_s, 2),
        "step_ms_median": round(median * 1e3, 2), "step_ms_min": round(min(times) * 1e3, 2),
        "texts_per_s": round(texts / median, 2), "images_per_s": round(images / median, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
        "final_loss": round(float(loss), 4) if loss is not None else None,
        "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    if compiled:
        from torch._dynamo.utils import counters
        row |= {"dynamo_graph_breaks": int(sum(counters["graph_break"].values())),
                "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}
    if not args.no_flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step(args.warmup + args.steps, model)  # the bare model: model FLOPs, whatever the compile mode
        sync()
        total = int(counter.get_total_flops())
        row |= {"flops_per_step": total, "gflops_per_text": round(total / texts / 1e9, 3),
                "achieved_tflops": round(total / median / 1e12, 3)}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    # not utils.cli: this process's ``models`` / ``utils`` packages are the official ones (the harness's shims)
    main()
