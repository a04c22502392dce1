"""Data-loader throughput (samples/s, CPU) on the synthetic dataset with the tiny preset.

python benchmarks/data_throughput.py [--workers 2] [--steps 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset import create_pretrain_loader  # noqa: E402
from dataset.synthetic import generate  # noqa: E402
from utils.config import load_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes per source")
    p.add_argument("--steps", type=int, default=20, help="batches timed per source")
    p.add_argument("--image-res", type=int, default=64, help="model.image_res (output image size)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f = generate(tmp, seed=0, n_images=256, n_videos=32)
        for sources in (["images"], ["regions"], ["videos"], ["images", "regions", "videos"]):
            over = [f"model.text.tokenizer={f['vocab']}", f"data.num_workers={args.workers}",
                    f"model.image_res={args.image_res}", "data.images.batch_size=32", "data.regions.batch_size=32",
                    "data.regions.max_images=8", "data.videos.batch_size=8"]
            over += [f"data.train_file=[{f['image_text']}]"] if "images" in sources else []
            over += [f"data.train_file_regions=[{f['regions']}]"] if "regions" in sources else []
            over += [f"data.train_file_videos=[{f['videos']}]"] if "videos" in sources else []
            cfg = load_config("configs/models/tiny.yaml", over)
            loader = create_pretrain_loader(cfg, steps=args.steps + 2)
            it = iter(loader)
            for _ in range(2):  # warm-up: worker start
                next(it)
            t0, texts, visuals = time.perf_counter(), 0, 0
            for batch in it:
                texts += batch["text_ids"].shape[0]
                visuals += sum(batch[k].shape[0] for k in ("images", "videos") if k in batch)
            dt = time.perf_counter() - t0
            print(f"{'+'.join(sources):22s} workers={args.workers} res={args.image_res}: "
                  f"{texts / dt:8.1f} texts/s  {visuals / dt:8.1f} images-or-videos/s  ({args.steps} steps, {dt:.1f}s)")


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
