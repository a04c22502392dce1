"""Loader-only throughput per CPU core: our pretraining datasets next to the official code's, same files.

One process, no DataLoader workers, one torch / OpenCV thread, so samples/s is what one worker core gives.
Generated COCO-sized JPEGs (about 640x480, quality 90, smooth gradients + texture + shapes + noise, so the
decode cost is a photograph's, not a flat colour's) and COCO-like captions; the 4M base recipe's settings
(224 px, crop scale 0.2-1, flip, RandAugment(2, 7), 40 tokens, MLM). Ours and the official are timed in
alternating rounds; each figure is the median over the rounds.

python benchmarks/loader_per_core.py [--rounds 5] [--samples 60] [--out results.jsonl] [--official PATH]

``--official``: a checkout of the official repository (default ``bench_official`` beside ``benchmarks/``);
its dataset code needs OpenCV (``pip install opencv-python-headless``); without either, only ours is timed.
``--rss N``: also measure the memory a forked worker copies when it reads all of ``N`` generated caption
records, kept as a JSON list of dicts (the official / LAVIS way) and in our :class:`AnnotationIndex`.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (640, 512), (427, 640))
NOUNS = ("man", "woman", "dog", "cat", "table", "pizza", "street", "bus", "train", "plate", "kitchen", "field",
         "horse", "bench", "giraffe", "skateboard", "surfboard", "window", "building", "tree", "child", "car")
ADJS = ("large", "small", "red", "white", "black", "wooden", "old", "young", "busy", "green", "yellow", "empty")
VERBS = ("sitting on", "standing next to", "riding", "holding", "looking at", "walking down", "parked near",
         "lying on", "eating", "flying over")
PLACES = ("in a park", "on the beach", "at night", "in the snow", "near the water", "in a room", "on a sunny day")
NOISE = 10.0
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ----------------------------------------------------------------------------------------------- data
def photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A picture with a photograph's mix of smooth areas, edges and fine texture (not a flat colour)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b = rng.uniform(-1, 1, 2)
        base[..., c] = rng.uniform(40, 200) + 60 * (a * xx / w + b * yy / h)
    for cells, amp in ((6, 50.0), (24, 25.0), (96, 16.0), (240, 10.0)):  # octaves of value noise (fractal)
        grid = rng.uniform(-amp, amp, (cells * h // w + 1, cells, 3)).astype(np.float32)
        base += np.stack([np.asarray(Image.fromarray(grid[..., c], "F").resize((w, h), Image.Resampling.BICUBIC))
                          for c in range(3)], -1)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(8, 20))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    for _ in range(3):  # striped / checkered texture patches (fabric, grass, brick)
        x0, y0 = int(rng.integers(0, w - 80)), int(rng.integers(0, h - 80))
        pw, ph = int(rng.integers(60, w // 2)), int(rng.integers(60, h // 2))
        period = int(rng.integers(3, 9))
        for k in range(0, pw, period):
            draw.line((x0 + k, y0, x0 + k, y0 + ph), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 0.9))))
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, NOISE, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def caption(rng: random.Random) -> str:
    s = (f"A {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(ADJS)} "
         f"{rng.choice(NOUNS)} {rng.choice(PLACES)}")
    if rng.random() < 0.5:
        s += f", with a {rng.choice(NOUNS)} and two {rng.choice(NOUNS)}s nearby."
    return s


def make_data(folder: Path, n_images: int, seed: int = 0, scale: float = 1.0) -> dict[str, Any]:
    """JPEGs (COCO's sizes times ``scale``), image-text and region-text JSON-lines files (absolute paths), and a
    WordPiece vocab."""
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    paths, sizes, nbytes = [], [], 0
    for i in range(n_images):
        w, h = (round(v * scale) for v in SIZES[i % len(SIZES)])
        path = img_dir / f"{i:05d}.jpg"
        photo_like(rng, w, h).save(path, quality=90)
        paths.append(str(path))
        sizes.append((w, h))
        nbytes += path.stat().st_size
    pairs, regions = folder / "pairs.jsonl", folder / "regions.jsonl"
    with open(pairs, "w") as f:
        for p in paths:
            f.write(json.dumps({"image": p, "caption": caption(prng)}) + "\n")
    with open(regions, "w") as f:
        for p, (w, h) in zip(paths, sizes, strict=True):
            elems = []
            for _ in range(prng.randint(3, 8)):
                bw, bh = prng.randint(30, w // 2), prng.randint(30, h // 2)
                bx, by = prng.randint(0, w - bw), prng.randint(0, h - bh)
                elems.append({"bb": [bx, by, bw, bh], "caption": f"{prng.choice(ADJS)} {prng.choice(NOUNS)}",
                              "attributes": prng.choice(ADJS)})
            f.write(json.dumps({"image": p, "caption": caption(prng), "elems": elems}) + "\n")
    words: set[str] = set()
    for group in (NOUNS, ADJS, VERBS, PLACES, ("a", "the", "with", "and", "two", "nearby")):
        for text in group:
            words.update(text.split())
    words |= {w + "s" for w in NOUNS}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab_dir = folder / "bert-base-uncased"  # the official tokenizer builder keys on this name
    vocab_dir.mkdir(exist_ok=True)
    tokens = list(SPECIALS) + sorted(words) + letters + ["##" + c for c in letters] + list(",.!?'\"-/")
    (vocab_dir / "vocab.txt").write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return {"pairs": str(pairs), "regions": str(regions), "vocab_dir": str(vocab_dir), "n": n_images,
            "mean_kb": nbytes / n_images / 1024, "sizes": sorted(set(sizes))}


# ----------------------------------------------------------------------------------------------- ours
def ours(data: dict[str, Any], kind: str, overrides: list[str], root: Path = ROOT) -> Callable[[], Iterator[Any]]:
    """Samples of our pretraining dataset ``kind`` (images, regions) in a random order, epoch after epoch."""
    from dataset import create_dataset
    from dataset.annotation import AnnotationDataset
    from utils.config import load_config

    over = [f"model.text.tokenizer={data['vocab_dir']}/vocab.txt", "data.root=null",
            f"data.train_file=[{data['pairs']}]", f"data.train_file_regions=[{data['regions']}]",
            *overrides]
    cfg = load_config(root / "configs/pretrain/x2vlm_base_4m.yaml", over)
    ds = create_dataset(f"pretrain_{kind}", cfg, "train")
    assert isinstance(ds, AnnotationDataset)

    def stream() -> Iterator[Any]:
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            for i in torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch)).tolist():
                yield ds[i]
            epoch += 1
    return stream


# ----------------------------------------------------------------------------------------------- official
_OURS_TOP = ("dataset", "utils", "models")


def _swap_modules(keep: dict[str, types.ModuleType]) -> dict[str, types.ModuleType]:
    out = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _OURS_TOP}
    sys.modules.update(keep)
    return out


def baseline(root: Path, data: dict[str, Any], kind: str, overrides: list[str]) -> Callable[[], Iterator[Any]]:
    """:func:`ours` from another checkout of this repository (e.g. the last commit: ``git worktree add``),
    imported under the same package names with this one's set aside and restored after."""
    mine = _swap_modules({})
    sys.path.insert(0, str(root))
    try:
        return ours(data, kind, overrides, root)
    finally:
        sys.path.remove(str(root))
        _swap_modules(mine)


def import_official(root: Path) -> tuple[types.ModuleType, Any]:
    """The official ``dataset.pretrain_dataset`` module and ``RandomAugment``, imported under their own
    package names with our modules set aside (the names clash) and restored after. The official package
    ``__init__`` files are skipped (they import every task and evaluation tool); the pieces the pretraining
    dataset does not use (VQA / RefCOCO evaluators) are stubbed."""
    ours_mods = _swap_modules({})
    sys.path.insert(0, str(root))
    try:
        for name, sub in (("dataset", "dataset"), ("utils", "utils")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
        for name in ("vqaTools", "vqaTools.vqaEval", "refTools", "refTools.evaluation",
                     "refTools.evaluation.refEvaluation"):
            stub = types.ModuleType(name)
            stub.__path__ = []
            stub.VQAEval = stub.RefEvaluation = None  # type: ignore[attr-defined]
            sys.modules.setdefault(name, stub)
        import importlib
        tokenizers = importlib.import_module("dataset.tokenizers")
        sys.modules["dataset"].build_tokenizer = tokenizers.build_tokenizer  # type: ignore[attr-defined]
        pretrain = importlib.import_module("dataset.pretrain_dataset")
        randaug = importlib.import_module("dataset.randaugment")
    finally:
        sys.path.remove(str(root))
        _swap_modules(ours_mods)
    return pretrain, randaug.RandomAugment


def official(root: Path, data: dict[str, Any], kind: str) -> Callable[[], Iterator[Any]]:
    import cv2
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    cv2.setNumThreads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r".*randaugment")  # its own overflow notes
    pretrain, RandomAugment = import_official(root)
    with open(root / "configs/pretrain/x2vlm_base_4m.yaml") as f:
        import yaml
        cfg = yaml.safe_load(f)
    cfg["text_encoder"] = data["vocab_dir"]
    cfg["images"].update(image_key="image", is_image_rpath=True, caption_key="caption")
    cfg["regions"].update(image_key="image", is_image_rpath=True, caption_key="caption")
    cfg["print_broken_data"] = True
    # the official dataset/__init__.py create_dataset('pretrain'): pretrain_transform and box_transform
    norm = transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    ops = ["Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness"]
    pretrain_tf = transforms.Compose([
        transforms.RandomResizedCrop(cfg["image_res"], scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        RandomAugment(2, 7, isPIL=True, augs=ops + ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]),
        transforms.ToTensor(), norm])
    box_tf = transforms.Compose([RandomAugment(2, 7, isPIL=True, augs=ops), transforms.ToTensor(), norm])
    quiet = open(os.devnull, "w")  # noqa: SIM115 - its construction prints
    old, sys.stdout = sys.stdout, quiet
    try:
        if kind == "images":
            ds = pretrain.ImageTextJsonDataset(cfg, data["pairs"], shuffle=True, repeat=True, transform=pretrain_tf)
        else:
            ds = pretrain.RegionTextJsonDataset(cfg, data["regions"], shuffle=True, repeat=True,
                                                transform=pretrain_tf, box_transform=box_tf)
    finally:
        sys.stdout = old
    return lambda: iter(ds)


# ----------------------------------------------------------------------------------------------- timing
def timed(it: Iterator[Any], n: int) -> tuple[float, float]:
    """Samples per CPU second of this process (one thread: per core; other jobs on the machine barely move it)
    and per wall-clock second."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.process_time() - c0), n / (time.perf_counter() - t0)


def run_pair(name: str, loaders: dict[str, Callable[[], Iterator[Any]]], rounds: int, n: int) -> dict[str, Any]:
    its = {k: make() for k, make in loaders.items()}
    for it in its.values():  # warm-up: first files, caches, lazy imports
        timed(it, max(4, n // 10))
    cpu: dict[str, list[float]] = {k: [] for k in its}
    wall: dict[str, list[float]] = {k: [] for k in its}
    order = list(its)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            gc.collect()
            c, w = timed(its[k], n)
            cpu[k].append(c)
            wall[k].append(w)
    return {"dataset": name, "median": {k: statistics.median(v) for k, v in cpu.items()},
            "median_wall": {k: statistics.median(v) for k, v in wall.items()}, "rates": cpu, "rates_wall": wall}


def rss_probe(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Private memory a forked reader copies when it reads every record once: a JSON list of dicts vs the
    :class:`AnnotationIndex` (numpy offsets + one bytes buffer / lazy JSON-lines)."""
    from dataset.io import AnnotationIndex

    rng = random.Random(seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.json"
        with open(path, "w") as f:
            json.dump([{"image": f"images/{i:08d}.jpg", "caption": caption(rng)} for i in range(n)], f)
        lines = Path(tmp) / "big.jsonl"
        with open(path) as src, open(lines, "w") as dst:
            for rec in json.load(src):
                dst.write(json.dumps(rec) + "\n")
        for how, source in (("json list of dicts", path), ("AnnotationIndex, JSON array", path),
                            ("AnnotationIndex, JSON-lines", lines)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # a fresh process per variant, so one's memory does not colour the other's
                os.close(r)
                base_rss = _rss_kb()
                holder: Any = json.loads(source.read_text()) if how.startswith("json") else AnnotationIndex(source)
                gc.collect()
                parent_rss = _rss_kb()
                r2, w2 = os.pipe()
                child = os.fork()
                if child == 0:
                    os.close(r2)
                    before = _private_kb()
                    get = holder.__getitem__ if isinstance(holder, list) else holder.get
                    for i in range(len(holder)):
                        rec = get(i)
                        _ = rec["caption"]
                    os.write(w2, json.dumps({"copied_kb": _private_kb() - before}).encode())
                    os._exit(0)
                os.close(w2)
                out = json.loads(os.read(r2, 1 << 16))
                os.waitpid(child, 0)
                os.write(w, json.dumps({"store": how, "records": n, "parent_added_mb": (parent_rss - base_rss) / 1024,
                                        "worker_copied_mb": out["copied_kb"] / 1024}).encode())
                os._exit(0)
            os.close(w)
            rows.append(json.loads(os.read(r, 1 << 16)))
            os.waitpid(pid, 0)
    return rows


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _private_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Dirty:", "Private_Clean:")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (median reported)")
    p.add_argument("--samples", type=int, default=60, help="samples per round and loader")
    p.add_argument("--images", type=int, default=48, help="generated JPEGs")
    p.add_argument("--image-scale", type=float, default=1.0,
                   help="scale of the generated images' sizes (1: COCO's 640x480 and alike; 1.6: about 1024x768)")
    p.add_argument("--datasets", default="images,regions", help="images, regions or both")
    p.add_argument("--official", default=os.environ.get("X2VLM_OFFICIAL", str(ROOT / "bench_official")),
                   help="official repository checkout (default $X2VLM_OFFICIAL or bench_official/)")
    p.add_argument("--baseline", default="", help="another checkout of this repository, timed as 'before' "
                   "(e.g. git worktree add /tmp/base HEAD)")
    p.add_argument("--baseline-override", action="append", default=[], help="config override for the baseline")
    p.add_argument("--ours-override", action="append", default=[],
                   help="extra config override for ours, e.g. data.jpeg_draft=false (repeatable)")
    p.add_argument("--label", default="", help="free text stored with the JSON rows")
    p.add_argument("--rss", type=int, default=0, help="also probe worker memory with this many records")
    p.add_argument("--out", default="", help="append JSON rows to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp), args.images, scale=args.image_scale)
        print(f"{data['n']} JPEGs, mean {data['mean_kb']:.0f} KiB; {args.rounds} rounds x {args.samples} samples; "
              f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        have_official = Path(args.official, "dataset", "pretrain_dataset.py").is_file()
        for kind in filter(None, args.datasets.split(",")):
            loaders = {"ours": ours(data, kind, args.ours_override)}
            if args.baseline:
                loaders["before"] = baseline(Path(args.baseline), data, kind, args.baseline_override)
            if have_official:
                try:
                    loaders["official"] = official(Path(args.official), data, kind)
                except ImportError as e:
                    print(f"official code not timed ({e})")
            res = run_pair(kind, loaders, args.rounds, args.samples)
            med, wall = res["median"], res["median_wall"]
            ratio = med["ours"] / med["official"] if "official" in med else math.nan
            line = f"{kind:8s} {'+'.join(args.ours_override) or 'defaults':24s} ours {med['ours']:7.1f}/s"
            if "before" in med:
                line += f"  before {med['before']:7.1f}/s"
            if "official" in med:
                line += f"  official {med['official']:7.1f}/s  ours/official {ratio:5.2f}x"
                if "before" in med:
                    line += f" (before {med['before'] / med['official']:.2f}x)"
            print(line + "   wall clock: " + ", ".join(f"{k} {v:.1f}/s" for k, v in wall.items()))
            rows.append({"bench": "loader_per_core", "time": stamp, "dataset": kind, "label": args.label,
                         "ours_override": args.ours_override, "samples_per_cpu_s_ours": med["ours"],
                         "samples_per_cpu_s_official": med.get("official"), "ratio": ratio,
                         "samples_per_cpu_s_before": med.get("before"), "baseline": args.baseline,
                         "baseline_override": args.baseline_override, "image_scale": args.image_scale,
                         "samples_per_wall_s": wall, "rounds_cpu": res["rates"], "rounds_wall": res["rates_wall"],
                         "samples": args.samples, "images": data["n"], "mean_jpeg_kb": data["mean_kb"],
                         "image_sizes": data["sizes"], "cpus": os.cpu_count(), "load_avg": os.getloadavg()})
    if args.rss:
        for row in rss_probe(args.rss):
            print(f"{row['store']:32s} {row['records']} records: parent RSS +{row['parent_added_mb']:7.1f} MB, "
                  f"a worker reading all copies {row['worker_copied_mb']:7.1f} MB")
            rows.append({"bench": "loader_per_core_rss", "time": stamp, **row})
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
