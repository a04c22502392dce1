"""Train the tiny model a few steps on fixed global batches, one process or one torchrun rank of several,
and write the per-step losses and final parameters (rank 0) for the DDP / DeepSpeed parity tests.

    python tests/workers/parity_run.py OUT_DIR [--stop_after N] [--resume latest] [override ...]
    torchrun --nproc_per_node 2 tests/workers/parity_run.py OUT_DIR [override ...]

Every global batch is made of 2 shares; each rank trains on its part of them (one process: both shares,
merged). ``loss.itm_neg_group`` = one share, so hard negatives come from the same texts either way.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dataset.pretrain import merge_batches  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from tests.conftest import TINY_CONFIG, random_batch  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.dist import cleanup, init_distributed  # noqa: E402
from utils.trainer import Trainer  # noqa: E402

SHARES = 2  # a global batch is made of this many per-rank shares
TEXTS_PER_SHARE = 4


def share(cfg: dict, step: int, k: int) -> dict:
    """Share ``k`` of the global batch of micro-step ``step``: 2 images, 4 texts (2 regions), 7 MLM labels."""
    batch = random_batch(cfg, n_images=2, n_texts=TEXTS_PER_SHARE,
                         generator=torch.Generator().manual_seed(1000 * step + k))
    batch["ids"] = batch["ids"] + 100 * k  # ITC ids are unique over the global batch
    return batch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--stop_after", type=int, help="stop (and checkpoint) after this step")
    p.add_argument("--resume", help="'latest' or a checkpoint path")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, [f"output_dir={args.out}", "train.log_every=1", "train.ckpt_every=1000",
                                    "optimizer.lr=0.001", "scheduler.warmup=1", f"loss.itm_neg_group={TEXTS_PER_SHARE}",
                                    *args.overrides])
    info = init_distributed("cpu")
    if SHARES % info.world_size:
        raise SystemExit(f"world size {info.world_size} does not divide {SHARES} shares")
    mine = range(info.rank * SHARES // info.world_size, (info.rank + 1) * SHARES // info.world_size)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg)
    init = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    trainer = Trainer(cfg, model, info)
    trainer.resume(args.resume)

    def batches(start: int):
        step = start
        while True:
            yield merge_batches([share(cfg, step, k) for k in mine])
            step += 1

    trainer.fit(batches, stop_after=args.stop_after)
    if info.is_main:
        losses = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
        params = {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}
        result = {"log": [r for r in losses if "loss" in r], "params": params, "init": init}
        torch.save(result, Path(args.out) / "result.pt")
    cleanup()


if __name__ == "__main__":
    main()
