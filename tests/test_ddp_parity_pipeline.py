"""What "2 processes train like 1" means through the real data pipeline (``create_pretrain_loader`` and
``run.py --dist 2``), at the same global batch (per-rank batch sizes halved):

* the global batch is the same: every step the two ranks' images (image-text and region sources), texts and MLM
  masks together are exactly the one process's, each sample on one rank (the sampler deals the same shuffled
  order out to the ranks; a sample's augmentation and masks are seeded by its index, not by where it runs);
* ITC (features gathered over ranks) and MLM (mean over the global batch's masked tokens) are then equal, and so
  is the training they drive (losses of every step);
* not equal, by design, as in the official code: ITM hard negatives are drawn within each rank's own batch (a
  pool of half the size, other texts), and region rows are drawn per rank from its own images
  (``data.regions.batch_size`` rows out of those images' rows), so with ITM or region texts the losses differ
  from step 1 (measured, not asserted: see docs/reliability.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.test_stop import env, pretrain_args

SINGLE = ["data.images.batch_size=8", "data.regions.batch_size=8", "data.regions.max_images=4"]
PER_RANK = ["data.images.batch_size=4", "data.regions.batch_size=4", "data.regions.max_images=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("pipeline") / "syn", seed=0, n_images=40, n_videos=0)


def config(data: dict, *overrides: str) -> dict:
    from utils.config import load_config
    args = pretrain_args(data, Path("unused"), *overrides)
    return load_config(args[1], [args[i + 1] for i in range(4, len(args), 2)])


def _rows(batch: dict, pairs: int, pool: str) -> list[tuple]:
    """The samples of one merged batch (image-text source first: ``pairs`` images and texts) as sorted hashable
    rows: the image-text pairs as (pixels, text ids, MLM labels), or the region source's image pixels."""
    images = batch["images"]
    if pool == "images":
        return sorted((images[i].numpy().tobytes(), tuple(batch["text_ids"][i].tolist()),
                       tuple(batch["mlm_labels"][i].tolist())) for i in range(pairs))
    return sorted(image.numpy().tobytes() for image in images[pairs:])


def test_the_ranks_global_batch_is_the_single_process_batch(data: dict) -> None:
    from dataset import create_pretrain_loader
    single = iter(create_pretrain_loader(config(data, *SINGLE), rank=0, world_size=1))
    ranks = [iter(create_pretrain_loader(config(data, *PER_RANK), rank=r, world_size=2)) for r in (0, 1)]
    for _ in range(6):  # more than an epoch of the region source (40 images, 4 per step)
        one = next(single)
        parts = [next(r) for r in ranks]
        for pool in ("images", "regions"):
            together = sorted(row for part in parts for row in _rows(part, 4, pool))
            assert together == _rows(one, 8, pool), pool
        assert all(not p["is_region"][:4].any() for p in parts) and not one["is_region"][:8].any()
        assert sum(len(p["images"]) for p in parts) == len(one["images"]) == 8 + 4


def _losses(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _train(data: dict, out: Path, launcher: list[str], sizes: list[str], *overrides: str) -> list[dict]:
    args = pretrain_args(data, out, "train.steps=4", "data.train_file_regions=[]", *sizes, *overrides)
    cmd = [sys.executable, str(ROOT / "run.py"), "--task", "pretrain", *launcher, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _losses(out)


@pytest.mark.slow  # two training runs (~25 s): CI's slow stage
def test_two_processes_train_like_one_through_the_real_pipeline(data: dict, tmp_path: Path) -> None:
    """Image-text data, ITC + MLM: 4 steps of ``run.py --dist 2`` (per-rank batch 4) give the losses of one
    process (batch 8)."""
    switches = ("loss.itm=false", "loss.bbox=false")
    one = _train(data, tmp_path / "one", ["--dist", "cpu"], SINGLE, *switches)
    two = _train(data, tmp_path / "two", ["--dist", "2"], PER_RANK, *switches)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "loss_itc", "loss_mlm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    assert one[-1]["loss"] < one[0]["loss"]  # it trained
    assert torch.isfinite(torch.tensor([r["loss"] for r in one])).all()
