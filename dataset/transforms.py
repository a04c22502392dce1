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

from dataset.io import DRAFT_SCALES, BadSample, decode_deferred
from dataset.text import has_left_right, swap_left_right
from utils.box_ops import xywh_to_xyxy

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
GEOMETRIC_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                 "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
PHOTOMETRIC_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
BICUBIC = InterpolationMode.BICUBIC
FILL = [128.0, 128.0, 128.0]
#: ``data.randaugment_kernels``: which implementation of the RandAugment ops runs (:class:`OfficialRandAugment`)
KERNELS = ("pil", "tensor")
ImageOrTensor = Image.Image | torch.Tensor


def to_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) of a PIL image (a deferred JPEG decoded in full); a tensor as it is."""
    return F.pil_to_tensor(decode_deferred(image)[0]) if isinstance(image, Image.Image) else image


def draft_scale(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
    """The largest JPEG draft reduction (8, 4 or 2; else 1) at which a crop of ``crop_h`` x ``crop_w``
    original pixels keeps more than ``out_h`` x ``out_w`` pixels (one to spare for rounding its ends), so
    the crop is still shrunk, never enlarged, to the output size."""
    for s in DRAFT_SCALES:
        if crop_h >= s * (out_h + 1) and crop_w >= s * (out_w + 1):
            return s
    return 1


def scale_box(box: tuple[int, int, int, int], scale: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` = (top, left, height, width) in original pixels, in an image decoded at ``1/scale`` whose
    (width, height) is ``size``: each end divided by ``scale`` and rounded to the nearest pixel, kept inside."""
    if scale == 1:
        return box
    top, left, h, w = box
    t, lt = round(top / scale), round(left / scale)
    b, r = min(round((top + h) / scale), size[1]), min(round((left + w) / scale), size[0])
    return t, lt, b - t, r - lt


def decode_crop(image: Image.Image, box: tuple[int, int, int, int], out_size: tuple[int, int],
                draft: bool = True) -> torch.Tensor:
    """The pixels of ``box`` = (top, left, height, width), given in ``image``'s own coordinates, as uint8
    (C, h, w). A deferred JPEG (:func:`dataset.io.is_deferred`) is decoded at the largest reduction that
    keeps more than ``out_size`` = (height, width) pixels in the box (:func:`draft_scale`) when ``draft``,
    and the box mapped onto it (:func:`scale_box`); any other image is cropped as it is."""
    scale = draft_scale(box[2], box[3], *out_size) if draft else 1
    image, scale = decode_deferred(image, scale)
    top, left, h, w = scale_box(box, scale, image.size)
    return F.pil_to_tensor(image.crop((left, top, left + w, top + h)))


_MEAN_T, _STD_T = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, H, W) → contiguous float normalised with the official mean/std: the operations of
    torchvision's ``normalize(to_dtype(image, scale=True))`` (same values), done in place on one new tensor."""
    if image.dtype != torch.uint8:
        return F.normalize(F.to_dtype(image.contiguous(), torch.float32, scale=True), MEAN, STD)
    out = image.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255)
    return out.sub_(_MEAN_T).div_(_STD_T)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (3, H, W) → RGB PIL image (one copy; none more for a channels-last tensor)."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


class OfficialRandAugment:
    """RandAugment with the official op list, probability and magnitude (see module docstring).

    ``kernels``: ``"pil"`` runs the ops on a single RGB image with PIL's C kernels (torchvision's PIL
    backend of the same functions: several times faster on a CPU core than its tensor kernels, pixels equal
    up to rounding and interpolation ties), converting only when an op is applied; ``"tensor"`` uses
    torchvision's tensor kernels (always for stacked video frames). Either way tensor in, tensor out, and
    the same random draws."""

    def __init__(self, num_ops: int = 2, magnitude: int = 7, ops: Sequence[str] = GEOMETRIC_OPS,
                 max_level: int = 10, kernels: str = "tensor"):
        if kernels not in KERNELS:
            raise ValueError(f"RandAugment kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        self.num_ops, self.level, self.ops, self.kernels = num_ops, magnitude / max_level, tuple(ops), kernels

    def _apply(self, op: str, img: ImageOrTensor, rng: random.Random) -> ImageOrTensor:
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
        use_pil = self.kernels == "pil" and img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8
        out: ImageOrTensor = img
        for _ in range(self.num_ops):
            op = rng.choice(self.ops)
            if rng.random() < 0.5:
                if use_pil and op != "Identity" and isinstance(out, torch.Tensor):
                    out = tensor_to_pil(out)
                out = self._apply(op, out, rng)
        return F.pil_to_tensor(out) if isinstance(out, Image.Image) else out


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
                 randaugment: bool = True, ops: Sequence[str] = GEOMETRIC_OPS, magnitude: int = 7,
                 draft: bool = False, kernels: str = "tensor"):
        self.res, self.train, self.hflip, self.draft = image_res, train, hflip, draft
        self.scale = cast(tuple[float, float], tuple(scale))
        self.randaug = OfficialRandAugment(2, magnitude, ops, kernels=kernels) if randaugment else None

    def __call__(self, image: Image.Image | torch.Tensor, texts: Sequence[str] = (),
                 rng: random.Random | None = None) -> tuple[torch.Tensor, list[str]]:
        rng = rng or cast(random.Random, random)
        texts = list(texts)
        if not self.train:
            img = to_uint8_tensor(image)
            return normalize(F.resize(img, [self.res, self.res], interpolation=BICUBIC, antialias=True)), texts
        if isinstance(image, Image.Image):  # crop first, then convert only the crop (a JPEG: maybe drafted)
            box = random_resized_crop_params(image.size[1], image.size[0], self.scale, rng)
            img = decode_crop(image, box, (self.res, self.res), self.draft)
            img = F.resize(img, [self.res, self.res], interpolation=BICUBIC, antialias=True)
        else:
            top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], self.scale, rng)
            img = F.resized_crop(image, top, left, h, w, [self.res, self.res], interpolation=BICUBIC,
                                 antialias=True)
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
                 randaugment: bool = True, magnitude: int = 7, train: bool = True, draft: bool = False,
                 kernels: str = "tensor"):
        self.res, self.min_perc, self.hflip, self.train = image_res, min_perc_in_image, hflip, train
        self.draft = draft
        self.randaug = OfficialRandAugment(2, magnitude, PHOTOMETRIC_OPS, kernels=kernels) if randaugment else None

    def __call__(self, image: Image.Image | torch.Tensor, boxes_xywh: torch.Tensor, anchor: int,
                 texts: Sequence[str] = (), rng: random.Random | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        rng = rng or cast(random.Random, random)
        W, H = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
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
        if isinstance(image, Image.Image):  # only the window is converted (a JPEG: maybe drafted)
            img = decode_crop(image, (y0, x0, y1 - y0, x1 - x0), (self.res, self.res), self.draft and self.train)
        else:
            img = F.crop(image, y0, x0, y1 - y0, x1 - x0)
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
