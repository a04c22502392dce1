"""Convert annotation files (JSON array / JSON-lines) to webdataset tar shards.

Each sample becomes ``KEY.json`` (the record without its media field) plus the media, bytes unchanged:

* images (default, field ``--image-key``, base64 or a path with ``--is-image-rpath``): ``KEY.jpg``;
* videos (``--video-key FIELD``, for video-text records):

  - a list of frames (base64, or paths with ``--is-image-rpath``) → ``KEY.frame0000.jpg``, ``KEY.frame0001.jpg`` …;
  - the official clip list ``[[frames of clip 0], [frames of clip 1], …]`` →
    ``KEY.clip000.frame0000.jpg`` … (clip order and the record's per-clip captions / ``is_continuous`` kept);
  - a path (joined to ``--root`` when relative) to a video file → ``KEY.mp4`` (or the file's own suffix:
    ``.webm``, ``.avi``, …; decoded with PyAV when read), to a folder of frame images (sorted by name) or to a
    ``.json`` file holding a list of base64 frames → frame members as above.

``dataset/webdata.py`` (:class:`~dataset.webdata.ShardStream`) reads all of these back.
Examples:
  python scripts/json_to_wds.py data/cc3m.jsonl out/cc3m-%06d.tar --image-key binary --maxcount 10000
  python scripts/json_to_wds.py data/webvid.jsonl out/webvid-%06d.tar --video-key video_frames
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.io import AnnotationIndex, BadSample  # noqa: E402
from dataset.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS  # noqa: E402
from dataset.webdata import write_shards  # noqa: E402


def _path(value: str, root: str | None) -> Path:
    return Path(root) / value if root and not Path(value).is_absolute() else Path(value)


def image_bytes(value, is_path: bool, root: str | None) -> bytes:
    """One image (or frame) field → its encoded bytes: read from a path, or base64-decoded."""
    if not isinstance(value, str) or not value:
        raise BadSample(f"image/frame value must be a non-empty string, got {type(value).__name__}")
    if is_path:
        return _path(value, root).read_bytes()
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise BadSample(f"not valid base64 ({e})") from e


def video_media(value, is_path: bool, root: str | None):
    """A video field → what :func:`dataset.webdata.media_members` writes: a list of frame bytes, a list of clips
    (lists of frame bytes), or ``{suffix: video file bytes}``."""
    if isinstance(value, list):
        if not value:
            raise BadSample("video frame list is empty")
        if all(isinstance(c, list) for c in value):
            if not all(value):
                raise BadSample("video has an empty clip")
            return [[image_bytes(f, is_path, root) for f in clip] for clip in value]
        return [image_bytes(f, is_path, root) for f in value]
    if not isinstance(value, str) or not value:
        raise BadSample(f"video field must be a frame list or a path, got {type(value).__name__}")
    path = _path(value, root)
    if path.is_dir():
        frames = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not frames:
            raise BadSample(f"{path}: no frame images in the folder")
        return [p.read_bytes() for p in frames]
    suffix = path.suffix.lower()
    if suffix == ".json":
        frames = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(frames, list) or not frames:
            raise BadSample(f"{path}: expected a non-empty JSON list of base64 frames")
        return [image_bytes(f, False, None) for f in frames]
    if suffix in VIDEO_EXTENSIONS:
        return {suffix.lstrip("."): path.read_bytes()}
    raise BadSample(f"{path}: not a frame folder, .json frame list or video file ({', '.join(VIDEO_EXTENSIONS)})")


def records(files: list[str], image_key: str, is_path: bool, root: str | None, skipped: list[str],
            video: bool = False) -> Iterator[dict]:
    index = AnnotationIndex(files)
    for i in range(len(index)):
        try:
            rec = index.get(i)
            value = rec[image_key]
            rec[image_key] = video_media(value, is_path, root) if video else image_bytes(value, is_path, root)
        except (BadSample, KeyError, OSError, ValueError) as e:
            skipped.append(f"{index.where(i)}: {e.__class__.__name__}: {e}")
            continue
        yield rec


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", help="annotation files or folders, then the output pattern (…-%%06d.tar)")
    p.add_argument("--image-key", default="binary", help="image field of image-text / region-text records")
    p.add_argument("--video-key", default=None,
                   help="convert video-text records: the video field (e.g. video_frames); --image-key is ignored")
    p.add_argument("--is-image-rpath", action="store_true", help="images / frames are paths, not base64")
    p.add_argument("--root", default=None, help="folder relative image / frame / video paths are joined to")
    p.add_argument("--maxcount", type=int, default=10000, help="samples per shard")
    args = p.parse_args(argv)
    *files, pattern = args.inputs
    if not files or "%" not in pattern:
        p.error("give input files then an output pattern containing %d, e.g. out/shard-%06d.tar")
    key = args.video_key or args.image_key
    skipped: list[str] = []
    shards = write_shards(records(files, key, args.is_image_rpath, args.root, skipped, video=bool(args.video_key)),
                          pattern, image_key=key, maxcount=args.maxcount)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {len(shards)} shards; skipped {len(skipped)} records")
    return shards


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
