"""Image / video / box-aware augmentation on torchvision.transforms.v2, with the official constants.

* normalisation: CLIP mean/std (as the official code);
* pretraining crop: random resized crop, scale (0.2, 1); fine-tuning: (0.5, 1); bicubic;
* RandAugment as the official recipe: 2 ops drawn with replacement, each applied with probability 0.5,
  magnitude 7 of 10 (brightness/sharpness factor 0.1 + 1.8·m/10, shear 0.3·m/10, translate 10·m/10 px,
  rotate 30·m/10 degrees, random sign; fill grey 128). The box-aware path uses only photometric ops;
* horizontal flip with 'left'/'right' swapped in the texts (``hflip='swap'``), or skipped when a text names a
  side (``'careful'``, the official option), or off.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import cast

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from dataset.io import BadSample
from dataset.text import has_left_right, swap_left_right
from utils.box_ops import xywh_to_xyxy

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
GEOMETRIC_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                 "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
PHOTOMETRIC_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
BICUBIC = InterpolationMode.BICUBIC
FILL = [128.0, 128.0, 128.0]


def to_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    return F.pil_to_tensor(image) if isinstance(image, Image.Image) else image


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) → float normalised with the official mean/std."""
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), MEAN, STD)


class OfficialRandAugment:
    """RandAugment with the official op list, probability and magnitude (see module docstring)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 7, ops: Sequence[str] = GEOMETRIC_OPS,
                 max_level: int = 10):
        self.num_ops, self.level, self.ops = num_ops, magnitude / max_level, tuple(ops)

    def _apply(self, op: str, img: torch.Tensor, rng: random.Random) -> torch.Tensor:
        sign = -1.0 if rng.random() < 0.5 else 1.0
        if op == "Identity":
            return img
        if op == "AutoContrast":
            return F.autocontrast(img)
        if op == "Equalize":
            return F.equalize(img)
        if op == "Brightness":
            return F.adjust_brightness(img, self.level * 1.8 + 0.1)
        if op == "Sharpness":
            return F.adjust_sharpness(img, self.level * 1.8 + 0.1)
        if op in ("ShearX", "ShearY"):
            deg = math.degrees(math.atan(self.level * 0.3)) * sign
            shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
            return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=FILL)
        if op in ("TranslateX", "TranslateY"):
            px = round(self.level * 10) * sign
            shift = [px, 0] if op == "TranslateX" else [0, px]
            return F.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=FILL)
        if op == "Rotate":
            return F.rotate(img, self.level * 30 * sign, fill=FILL)
        raise ValueError(f"unknown RandAugment op {op}")

    def __call__(self, img: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or cast(random.Random, random)
        for _ in range(self.num_ops):
            op = rng.choice(self.ops)
            if rng.random() < 0.5:
                img = self._apply(op, img, rng)
        return img


def random_resized_crop_params(h: int, w: int, scale: tuple[float, float], rng: random.Random,
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) as torchvision's RandomResizedCrop samples it, from ``rng``."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _decide_flip(texts: list[str], mode: str, rng: random.Random) -> tuple[bool, list[str]]:
    if mode == "none" or rng.random() >= 0.5:
        return False, texts
    if mode == "careful":
        return (False, texts) if any(has_left_right(t) for t in texts) else (True, texts)
    if mode == "swap":
        return True, [swap_left_right(t) for t in texts]
    raise ValueError(f"hflip mode must be swap, careful or none, got {mode!r}")


class ImageTransform:
    """Train: random resized crop → flip (texts adjusted) → RandAugment → normalise. Eval: resize → normalise.

    Works on one image or on stacked video frames (T, 3, H, W) with the same random draw for all frames.
    """

    def __init__(self, image_res: int, train: bool, scale: tuple[float, float] = (0.2, 1.0), hflip: str = "swap",
                 randaugment: bool = True, ops: Sequence[str] = GEOMETRIC_OPS, magnitude: int = 7):
        self.res, self.train, self.hflip = image_res, train, hflip
        self.scale = cast(tuple[float, float], tuple(scale))
        self.randaug = OfficialRandAugment(2, magnitude, ops) if randaugment else None

    def __call__(self, image: Image.Image | torch.Tensor, texts: Sequence[str] = (),
                 rng: random.Random | None = None) -> tuple[torch.Tensor, list[str]]:
        rng = rng or cast(random.Random, random)
        img = to_uint8_tensor(image)
        texts = list(texts)
        if not self.train:
            return normalize(F.resize(img, [self.res, self.res], interpolation=BICUBIC, antialias=True)), texts
        top, left, h, w = random_resized_crop_params(img.shape[-2], img.shape[-1], self.scale, rng)
        img = F.resized_crop(img, top, left, h, w, [self.res, self.res], interpolation=BICUBIC, antialias=True)
        flip, texts = _decide_flip(texts, self.hflip, rng)
        if flip:
            img = F.horizontal_flip(img)
        if self.randaug is not None:
            img = self.randaug(img, rng)
        return normalize(img), texts


def check_box(box: Sequence[float], width: int, height: int, where: str = "") -> tuple[float, float, float, float]:
    """Validate an absolute (x, y, w, h) box: positive area and inside the image (1 px tolerance)."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError) as e:
        raise BadSample(f"{where}: box must be 4 numbers (x, y, w, h), got {box!r}") from e
    if not (w > 0 and h > 0):
        raise BadSample(f"{where}: box {list(box)} has zero area")
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        raise BadSample(f"{where}: box {list(box)} lies outside the {width}x{height} image")
    x, y = max(x, 0.0), max(y, 0.0)
    return x, y, min(w, width - x), min(h, height - y)


class BoxAwareTransform:
    """Region pipeline: crop a random window that contains the anchor box, keep other boxes whose visible
    fraction exceeds ``min_perc_in_image``, flip (texts adjusted), resize, photometric RandAugment, normalise.

    Returns (image, boxes as normalised (cx, cy, w, h), keep mask, texts).
    """

    def __init__(self, image_res: int, min_perc_in_image: float = 0.5, hflip: str = "swap",
                 randaugment: bool = True, magnitude: int = 7, train: bool = True):
        self.res, self.min_perc, self.hflip, self.train = image_res, min_perc_in_image, hflip, train
        self.randaug = OfficialRandAugment(2, magnitude, PHOTOMETRIC_OPS) if randaugment else None

    def __call__(self, image: Image.Image | torch.Tensor, boxes_xywh: torch.Tensor, anchor: int,
                 texts: Sequence[str] = (), rng: random.Random | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        rng = rng or cast(random.Random, random)
        img = to_uint8_tensor(image)
        H, W = img.shape[-2:]
        xyxy = xywh_to_xyxy(boxes_xywh.float())
        texts = list(texts)
        if self.train:
            ax0, ay0, ax1, ay1 = xyxy[anchor].tolist()
            x0, y0 = rng.randint(0, math.floor(ax0)), rng.randint(0, math.floor(ay0))
            x1 = rng.randint(min(math.ceil(ax1), W), W)
            y1 = rng.randint(min(math.ceil(ay1), H), H)
        else:
            x0, y0, x1, y1 = 0, 0, W, H
        boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(H, W), clamping_mode="hard")
        area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        img = F.crop(img, y0, x0, y1 - y0, x1 - x0)
        boxes = F.clamp_bounding_boxes(F.crop(boxes, y0, x0, y1 - y0, x1 - x0))
        visible = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        keep = visible / area > self.min_perc
        keep[anchor] = True
        flip, texts = _decide_flip(texts, self.hflip, rng) if self.train else (False, texts)
        if flip:
            img, boxes = F.horizontal_flip(img), F.horizontal_flip(boxes)
        img = F.resize(img, [self.res, self.res], interpolation=BICUBIC, antialias=True)
        boxes = F.resize(boxes, [self.res, self.res])
        if self.train and self.randaug is not None:
            img = self.randaug(img, rng)
        cxcywh = F.convert_bounding_box_format(boxes, new_format="CXCYWH").as_subclass(torch.Tensor) / self.res
        return normalize(img), cxcywh.clamp(0, 1), keep, texts
