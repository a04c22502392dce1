"""Video frames: uniform segment sampling and decoding (video files with PyAV, frame folders, base64 frame lists)."""
from __future__ import annotations

import io
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torchvision.transforms.v2.functional as F

from dataset.io import BadSample, load_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoDecoderMissing(ImportError):
    """PyAV is needed to decode video files."""


def sample_frame_indices(n_frames: int, n_samples: int, training: bool, rng: random.Random | None = None) -> list[int]:
    """Split ``n_frames`` into ``n_samples`` equal segments; take a random frame of each (training) or its centre.

    With fewer frames than samples, frames repeat (training: every frame plus random extras; eval: cycled).
    """
    if n_frames <= 0:
        raise BadSample("video has no frames")
    rng = rng or cast(random.Random, random)
    if n_frames < n_samples:
        if training:
            extra = [rng.randrange(n_frames) for _ in range(n_samples - n_frames)]
            return sorted(list(range(n_frames)) + extra)
        return sorted(i % n_frames for i in range(n_samples))
    out = []
    for k in range(n_samples):
        lo = (k * n_frames) // n_samples
        hi = ((k + 1) * n_frames) // n_samples  # exclusive, hi > lo since n_frames >= n_samples
        out.append(rng.randrange(lo, hi) if training else (lo + hi - 1) // 2)
    return out


SKIP_CLIP_CAPTIONS = frozenset({"[Music]"})  # clip captions that describe no visual content (HowTo100M ASR)


def select_clips(clips: Sequence[Sequence], captions: Sequence[str] | None, continuous: bool, min_frames: int,
                 rng: random.Random | None = None, skip: frozenset[str] = SKIP_CLIP_CAPTIONS) -> list[int]:
    """Which clips of a clip-list video record to use (ascending indexes).

    * one clip: that clip;
    * ``continuous`` (the clips are consecutive pieces of one video, e.g. ASR segments): start from a random
      clip and grow a contiguous run one neighbour at a time (left or right at random; only one way at a
      border) until its clips hold at least ``min_frames`` frames or the run covers every clip. Clips whose
      caption is in ``skip`` count no frames and are dropped from the run at the end;
    * otherwise: one random clip whose caption is not in ``skip``.
    """
    n = len(clips)
    if n == 0:
        raise BadSample("video has an empty clip list")
    if n == 1:
        return [0]
    rng = rng or cast(random.Random, random)
    caps = None if captions is None else [str(c).strip() for c in captions]
    usable = [caps is None or caps[i] not in skip for i in range(n)]
    if not continuous:
        choices = [i for i in range(n) if usable[i]]
        if not choices:
            raise BadSample(f"every clip caption is a placeholder ({', '.join(sorted(skip))})")
        return [rng.choice(choices)]
    lo = hi = rng.randrange(n)
    n_frames = len(clips[lo]) if usable[lo] else 0
    while n_frames < min_frames and hi - lo + 1 < n:
        grow_right = lo == 0 or (hi < n - 1 and rng.random() < 0.5)
        if grow_right:
            hi += 1
            new = hi
        else:
            lo -= 1
            new = lo
        n_frames += len(clips[new]) if usable[new] else 0
    ids = [i for i in range(lo, hi + 1) if usable[i]]
    if not ids:
        raise BadSample(f"the selected clips all have placeholder captions ({', '.join(sorted(skip))})")
    return ids


def _require_av():
    try:
        import av
    except ImportError as e:
        raise VideoDecoderMissing(
            "decoding video files needs PyAV: pip install av (or point the annotation at a folder of "
            "pre-extracted frames)") from e
    return av


def decode_video_file(source: str | os.PathLike | bytes, n_samples: int, training: bool,
                      rng: random.Random | None = None, where: str = "") -> torch.Tensor:
    """Decode all frames with PyAV (from a path, or from the bytes of an encoded video file, e.g. an ``.mp4``
    member of a webdataset shard), keep ``n_samples`` of them: uint8 (T, 3, H, W)."""
    av = _require_av()
    what = where or ("video bytes" if isinstance(source, bytes) else str(source))
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with av.open(handle) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise BadSample(f"{what}: unreadable video ({e.__class__.__name__}: {e})") from e
    if not frames:
        raise BadSample(f"{what}: video has no decodable frames")
    picks = sample_frame_indices(len(frames), n_samples, training, rng)
    return torch.stack([torch.from_numpy(frames[i]).permute(2, 0, 1).contiguous() for i in picks])


def load_frames(source: str | bytes | Sequence[str | bytes], n_samples: int, training: bool,
                root: str | os.PathLike | None = None, is_path: bool = False, rng: random.Random | None = None,
                where: str = "") -> torch.Tensor:
    """Frames from a list (base64 strings, frame paths with ``is_path``, or encoded image bytes), a folder of
    images, a video file (path, or its bytes), or a ``.json`` file holding a list of base64 frames.
    Returns uint8 (T, 3, H, W)."""
    if isinstance(source, bytes):
        return decode_video_file(source, n_samples, training, rng, where=where)
    if isinstance(source, str):
        path = Path(root) / source if root and not os.path.isabs(source) else Path(source)
        if path.is_dir():
            names = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            return load_frames(names, n_samples, training, is_path=True, rng=rng, where=str(path))
        if path.suffix.lower() == ".json":
            from dataset.io import read_json
            return load_frames(read_json(path), n_samples, training, rng=rng, where=str(path))
        if not path.is_file():
            raise BadSample(f"{where + ': ' if where else ''}video {path} not found")
        return decode_video_file(path, n_samples, training, rng)
    if not isinstance(source, list | tuple) or not source:
        raise BadSample(f"{where}: video frame list is empty or not a list")
    picks = sample_frame_indices(len(source), n_samples, training, rng)
    frames = [F.pil_to_tensor(load_image(source[i], is_path=is_path, root=root, where=where, defer=False))
              for i in picks]
    if len({f.shape for f in frames}) != 1:
        frames = [F.resize(f, list(frames[0].shape[-2:]), antialias=True) for f in frames]
    return torch.stack(frames)
