"""Webdataset tar shards (``KEY.jpg`` + ``KEY.json``) streamed with ``webdataset`` and split by rank and worker.

Each epoch the shard list is permuted with ``seed + epoch`` (same order on every rank), then shard ``k`` goes
to rank ``k % world_size`` and, within the rank, to DataLoader worker ``j % num_workers`` — so every sample
is read exactly once per epoch across all ranks and workers (when there are at least ranks × workers shards).
The JSON holds the annotation record without its image; the image bytes are put under ``image_key``.
"""
from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice

import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from dataset.io import BadSample
from dataset.robust import SKIPPABLE, SkipGuard

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard list from paths, brace patterns (``a-{000..009}.tar``), globs, or folders of ``.tar`` files."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        for item in braceexpand(str(s)):
            if os.path.isdir(item):
                out += sorted(glob.glob(os.path.join(item, "*.tar")))
            elif any(c in item for c in "*?["):
                out += sorted(glob.glob(item))
            else:
                out.append(item)
    if not out:
        raise FileNotFoundError(f"no webdataset shards match {spec!r}")
    return out


class ShardStream(IterableDataset):
    """Iterable over the samples of tar shards; ``make_sample(record) -> sample`` does decoding/augmentation.

    ``record`` is the parsed JSON with the image bytes under ``image_key`` and ``__key__``/``__url__`` added.
    In training, broken samples are skipped and counted (:class:`SkipGuard`); in evaluation they raise.
    """

    def __init__(self, shards: str | Sequence[str], make_sample: Callable[[dict], dict], image_key: str = "binary",
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 0,
                 training: bool = True, max_bad_fraction: float = 0.05, bad_window: int = 1000):
        self.shards = expand_shards(shards)
        self.make_sample, self.image_key = make_sample, image_key
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.shuffle, self.shuffle_buffer, self.training = shuffle, shuffle_buffer, training
        self.guard = SkipGuard(max_bad_fraction, bad_window, name="webdataset")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _handler(self, error: Exception) -> bool:
        if not self.training:
            raise error
        self.guard.bad(error)
        return True

    def _records(self) -> Iterator[dict]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        rank, world = self.rank, self.world_size

        def by_rank(src):
            return islice(src, rank, None, world)

        pipeline = wds.WebDataset(shards, shardshuffle=False, nodesplitter=by_rank,
                                  workersplitter=wds.split_by_worker, handler=self._handler, empty_check=False)
        if self.shuffle and self.shuffle_buffer > 1:
            worker = get_worker_info()
            pipeline = pipeline.shuffle(self.shuffle_buffer,
                                        rng=random.Random(hash((self.seed, self.epoch, rank,
                                                                worker.id if worker else 0))))
        for raw in pipeline:
            where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
            try:
                if "json" not in raw:
                    raise BadSample(f"{where}: sample has no .json member")
                try:
                    rec = json.loads(raw["json"])
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BadSample(f"{where}: .json does not parse ({e})") from e
                ext = next((e for e in IMAGE_EXTS if e in raw), None)
                if ext is not None:
                    rec[self.image_key] = raw[ext]
                rec["__key__"], rec["__url__"] = raw.get("__key__"), raw.get("__url__")
                yield rec, where
            except BadSample as e:
                self._handler(e)

    def __iter__(self) -> Iterator[dict]:
        for rec, where in self._records():
            try:
                sample = self.make_sample(rec)
            except SKIPPABLE as e:
                if not self.training:
                    raise BadSample(f"{where}: {e}") from e
                self.guard.bad(e)
                continue
            self.guard.ok()
            sample.setdefault("skipped", 0)
            yield sample


def write_shards(records: Iterable[dict], pattern: str, image_key: str = "binary", maxcount: int = 1000,
                 image_ext: str = "jpg") -> list[str]:
    """Write records (image bytes under ``image_key``) as shards ``pattern % k``; returns the shard paths."""
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for k, rec in enumerate(records):
            rec = dict(rec)
            image = rec.pop(image_key)
            sink.write({"__key__": f"{k:09d}", image_ext: image, "json": json.dumps(rec).encode("utf-8")})
            if sink.fname and (not written or written[-1] != sink.fname):
                written.append(sink.fname)
    return written
