"""Webdataset tar shards streamed with ``webdataset`` and split by rank and worker.

Each epoch the shard list is permuted with ``seed + epoch`` (same order on every rank), then shard ``k`` goes
to rank ``k % world_size`` and, within the rank, to DataLoader worker ``j % num_workers`` — so every sample
is read exactly once per epoch across all ranks and workers (when there are at least ranks × workers shards).

Members of one sample (``KEY`` has no dots; written by :func:`write_shards` / ``scripts/json_to_wds.py``):

* ``KEY.json`` — the annotation record without its media field (required);
* image-text / region-text: ``KEY.jpg`` (or ``.jpeg``/``.png``/``.webp``) — the encoded image, put back under
  ``image_key``;
* video-text, either form (put back under ``video_key``):

  - frames: ``KEY.frame0000.jpg``, ``KEY.frame0001.jpg``, … (one encoded image per frame, in order) → a list
    of image bytes; clip-list videos (the official ``[[clip 0 frames], [clip 1 frames], …]`` layout, see
    :class:`dataset.pretrain.VideoTextDataset`) as ``KEY.clip000.frame0000.jpg``, … → a list of lists;
  - a video file: ``KEY.mp4`` (or ``.webm``/``.mkv``/``.avi``/``.mov``/``.gif``…) → its bytes, decoded with
    PyAV at read time.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice

from torch.utils.data import IterableDataset, get_worker_info

from dataset.io import BadSample
from dataset.robust import SKIPPABLE, SkipGuard
from dataset.sampling import sample_seed, seeded_random

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "mpg", "mpeg", "gif")
FRAME_MEMBER = re.compile(r"^(?:clip(\d+)\.)?frame(\d+)\.(?:" + "|".join(IMAGE_EXTS) + r")$")


def frames_from_members(raw: dict) -> list | None:
    """Frame members of one raw sample → list of image bytes (or list of clips); None if there are none."""
    found = []
    for name, value in raw.items():
        m = FRAME_MEMBER.match(name)
        if m:
            found.append((-1 if m.group(1) is None else int(m.group(1)), int(m.group(2)), value))
    if not found:
        return None
    found.sort(key=lambda t: t[:2])
    if all(c < 0 for c, _, _ in found):
        return [v for _, _, v in found]
    if any(c < 0 for c, _, _ in found):
        raise BadSample("sample mixes clip frames (clipNNN.frameNNNN) with plain frames (frameNNNN)")
    clips: dict[int, list[bytes]] = {}
    for c, _, v in found:
        clips.setdefault(c, []).append(v)
    return [clips[c] for c in sorted(clips)]


def _image_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def media_members(value: bytes | list | dict, image_ext: str = "jpg") -> dict[str, bytes]:
    """Tar members (extension → bytes) for one media value: image bytes → ``{image_ext: …}``; a list of frame
    bytes → ``frameNNNN.<ext>``; a list of clips (lists of frame bytes) → ``clipNNN.frameNNNN.<ext>``; a dict
    is taken as ready-made members (e.g. ``{"mp4": video bytes}``)."""
    if isinstance(value, bytes):
        return {image_ext: value}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, list) or not value:
        raise BadSample(f"media must be bytes, a frame list or a clip list, got {type(value).__name__}")
    out: dict[str, bytes] = {}
    if all(isinstance(c, list) for c in value):
        for c, clip in enumerate(value):
            for k, frame in enumerate(clip):
                out[f"clip{c:03d}.frame{k:04d}.{_image_ext(frame)}"] = frame
    else:
        for k, frame in enumerate(value):
            if not isinstance(frame, bytes):
                raise BadSample(f"frame {k} must be image bytes, got {type(frame).__name__}")
            out[f"frame{k:04d}.{_image_ext(frame)}"] = frame
    return out


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Shard list from paths, brace patterns (``a-{000..009}.tar``), globs, or folders of ``.tar`` files."""
    from braceexpand import braceexpand  # here: only shard users need it installed (as webdataset below)
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

    ``record`` is the parsed JSON with ``__key__``/``__url__`` added and the media put back: image bytes under
    ``image_key``; frame bytes (list, or list of clips) or video-file bytes under ``video_key`` (default:
    ``image_key``). In training, broken samples are skipped and counted (:class:`SkipGuard`); in evaluation
    they raise.
    """

    def __init__(self, shards: str | Sequence[str], make_sample: Callable[[dict], dict], image_key: str = "binary",
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 0,
                 training: bool = True, max_bad_fraction: float = 0.05, bad_window: int = 1000,
                 video_key: str | None = None):
        self.shards = expand_shards(shards)
        self.make_sample, self.image_key = make_sample, image_key
        self.video_key = video_key or image_key
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

    def _records(self) -> Iterator[tuple[dict, str]]:
        shards = list(self.shards)
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(shards)
        rank, world = self.rank, self.world_size

        def by_rank(src):
            return islice(src, rank, None, world)

        import webdataset as wds
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
                frames = frames_from_members(raw)
                video_ext = next((e for e in VIDEO_EXTS if e in raw), None)
                image_ext = next((e for e in IMAGE_EXTS if e in raw), None)
                if frames is not None:
                    rec[self.video_key] = frames
                elif video_ext is not None:
                    rec[self.video_key] = raw[video_ext]
                elif image_ext is not None:
                    rec[self.image_key] = raw[image_ext]
                rec["__key__"], rec["__url__"] = raw.get("__key__"), raw.get("__url__")
                yield rec, where
            except BadSample as e:
                self._handler(e)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id = worker.id if worker else 0
        for n, (rec, where) in enumerate(self._records()):
            # the n-th record of this worker's stream: the same draws when the epoch is re-read on resume
            seed = sample_seed(self.seed, self.epoch, self.rank, worker_id, n)
            try:
                with seeded_random(seed):
                    sample = self.make_sample(rec)
                sample["seed"] = seed
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
    """Write records as shards ``pattern % k``; returns the shard paths. The media under ``image_key`` is image
    bytes, a list of frame bytes, a list of clips, or ready-made members (see :func:`media_members`)."""
    import webdataset as wds
    os.makedirs(os.path.dirname(pattern) or ".", exist_ok=True)
    written: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for k, rec in enumerate(records):
            rec = dict(rec)
            members = media_members(rec.pop(image_key), image_ext)
            sink.write({"__key__": f"{k:09d}", **members, "json": json.dumps(rec).encode("utf-8")})
            if sink.fname and (not written or written[-1] != sink.fname):
                written.append(sink.fname)
    return written
