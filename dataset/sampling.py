"""Resumable data order: a rank-split sampler that can start an epoch part-way, an endless stream over a
DataLoader's epochs whose position (epoch, batches drawn) is saved and restored with the checkpoints, and
per-sample random draws that depend only on (seed, epoch, index) — not on which worker process made the
sample or on what it made before — so a resumed run sees the same augmentations and masks."""
from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger("x2vlm.data")


def sample_seed(*keys: int) -> int:
    """One 64-bit seed from integer keys (e.g. base seed, epoch, sample index); equal in every process."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


@contextlib.contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """Python's global ``random`` seeded with ``seed`` inside the block, its previous state restored after
    (the data pipeline draws crops, flips, masks and captions from it)."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` whose next epoch can skip its first ``start`` indices (this rank's).

    The order is the parent's (seed + epoch), so skipping ``k`` indices lands exactly where an uninterrupted
    run would be after ``k`` samples; ``start`` applies to one epoch only.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside this rank's epoch of {self.num_samples} samples")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start:]
        self.start = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


class EpochStream:
    """Endless iteration over ``loader``'s epochs (``set_epoch`` of the sampler and the dataset each time)
    with a resumable position.

    :meth:`state_dict` is ``{"epoch", "consumed"}`` (batches drawn in the current epoch). After
    :meth:`load_state_dict` the stream continues exactly: a :class:`ResumableDistributedSampler` skips the
    consumed indices; any other loader (e.g. a webdataset stream) re-reads and drops the consumed batches.
    """

    def __init__(self, loader: DataLoader, name: str = "data"):
        self.loader, self.name = loader, name
        self.epoch = 0
        self.consumed = 0
        self._replay = 0
        self._iter: Iterator | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._iter = None
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(self.consumed * self.loader.batch_size)
        else:
            self._replay = self.consumed
            if self._replay:
                log.info("data source %s: re-reading %d batches to reach the resume position", self.name,
                         self._replay)

    def __next__(self) -> Any:
        for _ in range(2):
            if self._iter is None:
                for part in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
                    if hasattr(part, "set_epoch"):
                        part.set_epoch(self.epoch)
                self._iter = iter(self.loader)
                for _ in range(self._replay):
                    next(self._iter)
                self._replay = 0
            try:
                batch = next(self._iter)
                self.consumed += 1
                return batch
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.consumed = 0
        raise RuntimeError(f"data source '{self.name}' yields no batches (fewer samples than one batch?)")

    def __iter__(self) -> EpochStream:
        return self
