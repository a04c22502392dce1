"""A tiny torchrun training job (gloo, CPU) whose rank ``FREEZE_RANK`` stops answering at step ``FREEZE_STEP``
(it sleeps; SIGTERM ends it), for the collective-timeout test. The other ranks must exit with one line naming it.

    torchrun --nproc_per_node 2 tests/workers/freeze_run.py OUT_DIR FREEZE_RANK FREEZE_STEP [override ...]
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dataset.pretrain import merge_batches  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from tests.conftest import TINY_CONFIG  # noqa: E402
from tests.workers.parity_run import SHARES, TEXTS_PER_SHARE, share  # noqa: E402
from utils.cli import cli_main  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.dist import cleanup, init_distributed  # noqa: E402
from utils.trainer import Trainer  # noqa: E402


def main() -> None:
    out, freeze_rank, freeze_step, *overrides = sys.argv[1:]
    torch.set_num_threads(1)
    cfg = load_config(TINY_CONFIG, [f"output_dir={out}", "train.log_every=1", "train.ckpt_every=1000",
                                    "train.steps=6", f"loss.itm_neg_group={TEXTS_PER_SHARE}", *overrides])
    info = init_distributed("cpu", timeout=cfg["train"]["dist_timeout"])
    mine = range(info.rank * SHARES // info.world_size, (info.rank + 1) * SHARES // info.world_size)
    torch.manual_seed(0)
    trainer = Trainer(cfg, X2VLM.from_config(cfg), info)

    def batches(start: int):
        step = start
        while True:
            if info.rank == int(freeze_rank) and step == int(freeze_step):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # frozen: only a kill ends it
                time.sleep(600)
            yield merge_batches([share(cfg, step, k) for k in mine])
            step += 1

    trainer.fit(batches)
    cleanup()


if __name__ == "__main__":
    cli_main(main, prog="freeze_run.py")
