"""Convert annotation files (JSON array / JSON-lines, image as base64 or path) to webdataset tar shards.

Each sample becomes ``KEY.jpg`` (the image bytes, unchanged) + ``KEY.json`` (the record without the image field).
Example: python scripts/json_to_wds.py data/cc3m.jsonl out/cc3m-%06d.tar --image-key binary --maxcount 10000
"""
from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.io import AnnotationIndex, BadSample  # noqa: E402
from dataset.webdata import write_shards  # noqa: E402


def records(files: list[str], image_key: str, is_path: bool, root: str | None, skipped: list[str]) -> Iterator[dict]:
    index = AnnotationIndex(files)
    for i in range(len(index)):
        try:
            rec = index.get(i)
            value = rec[image_key]
            if is_path:
                path = Path(root) / value if root else Path(value)
                rec[image_key] = path.read_bytes()
            else:
                rec[image_key] = base64.b64decode(value)
        except (BadSample, KeyError, OSError, ValueError) as e:
            skipped.append(f"{index.where(i)}: {e}")
            continue
        yield rec


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", help="annotation files or folders, then the output pattern (…-%%06d.tar)")
    p.add_argument("--image-key", default="binary")
    p.add_argument("--is-image-rpath", action="store_true", help="the image field is a path, not base64")
    p.add_argument("--root", default=None, help="folder relative image paths are joined to")
    p.add_argument("--maxcount", type=int, default=10000, help="samples per shard")
    args = p.parse_args(argv)
    *files, pattern = args.inputs
    if not files or "%" not in pattern:
        p.error("give input files then an output pattern containing %d, e.g. out/shard-%06d.tar")
    skipped: list[str] = []
    shards = write_shards(records(files, args.image_key, args.is_image_rpath, args.root, skipped), pattern,
                          image_key=args.image_key, maxcount=args.maxcount)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {len(shards)} shards; skipped {len(skipped)} records")
    return shards


if __name__ == "__main__":
    main()
