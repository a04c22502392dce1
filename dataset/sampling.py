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

import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

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


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class EpochStream:
    """Endless iteration over ``loader``'s epochs (``set_epoch`` of the sampler and the dataset each time)
    with a resumable position.

    :meth:`state_dict` is ``{"epoch", "consumed"}`` (batches drawn in the current epoch). After
    :meth:`load_state_dict` the stream continues exactly: a :class:`ResumableDistributedSampler` skips the
    consumed indices; any other loader (e.g. a webdataset stream) re-reads and drops the consumed batches.

    It also sums the batches' bookkeeping ints (left in the batch): ``_truncated`` / ``_texts`` (texts cut at
    ``max_tokens`` / texts tokenised, :class:`dataset.collate.TokenizeCollate` and the pretraining collates)
    and ``_skipped`` (broken samples replaced). :meth:`counters` gives the totals of this process (for the
    training log); at the end of each epoch one line reports the epoch's counts when any is non-zero
    (rank 0; counts start at zero in a resumed process).
    """

    def __init__(self, loader: DataLoader, name: str = "data"):
        self.loader, self.name = loader, name
        self.epoch = 0
        self.consumed = 0
        self._replay = 0
        self._iter: Iterator | None = None
        self.totals = {"truncated": 0, "texts": 0, "skipped": 0}
        self._epoch_counts = dict(self.totals)
        self._reported_epoch = -1
        self._warned_truncation = False

    def counters(self) -> dict[str, int]:
        """Totals since this process started: ``truncated_texts`` (cut at ``max_tokens``), ``skipped_samples``."""
        return {"truncated_texts": self.totals["truncated"], "skipped_samples": self.totals["skipped"]}

    def _count(self, batch: Any) -> None:
        if not isinstance(batch, dict):
            return
        for key in self.totals:
            n = batch.get(f"_{key}", 0)
            if isinstance(n, int) and n:
                self.totals[key] += n
                self._epoch_counts[key] += n
        if batch.get("_truncated") and not self._warned_truncation and _is_main_process():
            self._warned_truncation = True
            log.warning("data source %s: texts longer than max_tokens (data.max_tokens) are being cut (%d of %d in "
                        "this batch); the count is logged as truncated_texts and at each epoch end",
                        self.name, batch["_truncated"], batch.get("_texts", 0))

    def _epoch_length(self) -> int | None:
        if isinstance(getattr(self.loader, "dataset", None), IterableDataset):
            return None
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _end_epoch(self) -> None:
        """One line with the finished epoch's counts (if any is non-zero); then they restart."""
        if self._reported_epoch == self.epoch:
            return
        self._reported_epoch = self.epoch
        c, self._epoch_counts = self._epoch_counts, dict.fromkeys(self.totals, 0)
        if not (c["truncated"] or c["skipped"]) or not _is_main_process():
            return
        parts = []
        if c["truncated"]:
            share = f" ({100 * c['truncated'] / c['texts']:.1f} %)" if c["texts"] else ""
            parts.append(f"{c['truncated']} of {c['texts']} texts{share} were longer than max_tokens and cut "
                         f"(raise data.max_tokens to keep them whole)")
        if c["skipped"]:
            parts.append(f"{c['skipped']} broken samples skipped")
        log.warning("data source %s, epoch %d: %s", self.name, self.epoch, "; ".join(parts))

    @property
    def records(self) -> int | None:
        """Samples in the loader's dataset (None for a stream without a length)."""
        dataset = getattr(self.loader, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset):
            return None
        try:
            return len(dataset)
        except TypeError:
            return None

    def state_dict(self) -> dict[str, int | None]:
        return {"epoch": self.epoch, "consumed": self.consumed, "records": self.records}

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        """Continue from ``state``; a :class:`ValueError` when it was taken on a source of another size (other
        data: the position would mean other samples)."""
        saved, now = state.get("records"), self.records
        if saved is not None and now is not None and saved != now:
            raise ValueError(f"data source '{self.name}' had {saved} samples when the checkpoint was written, "
                             f"it has {now} now")
        self._iter = None
        epoch, consumed = state["epoch"], state["consumed"]
        if epoch is None or consumed is None:
            raise TypeError(f"data source '{self.name}': the saved position has no epoch / consumed count")
        self.epoch, self.consumed = int(epoch), int(consumed)
        sampler: Any = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_start"):
            if self.loader.batch_size is None:
                raise TypeError(f"data source '{self.name}': a resumable sampler needs a loader with a batch_size")
            sampler.set_start(self.consumed * self.loader.batch_size)
        else:
            self._replay = self.consumed
            if self._replay:
                log.info("data source %s: re-reading %d batches to reach the resume position", self.name,
                         self._replay)

    def __next__(self) -> Any:
        for _ in range(2):
            if self._iter is None:
                part: Any
                for part in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
                    if hasattr(part, "set_epoch"):
                        part.set_epoch(self.epoch)
                self._iter = iter(self.loader)
                for _ in range(self._replay):
                    next(self._iter)
                self._replay = 0
            try:
                batch = next(self._iter)
            except StopIteration:
                self._end_epoch()
                self._iter = None
                self.epoch += 1
                self.consumed = 0
                continue
            self.consumed += 1
            self._count(batch)
            n = self._epoch_length()
            if n is not None and self.consumed >= n:
                self._end_epoch()  # now, not at the next draw: the last epoch's line comes before training ends
            return batch
        raise RuntimeError(f"data source '{self.name}' yields no batches (fewer samples than one batch?)")

    def __iter__(self) -> EpochStream:
        return self
