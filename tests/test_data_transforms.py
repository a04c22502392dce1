"""Box-aware crop/flip, left/right swapping, normalisation, RandAugment."""
import random

import torch
from PIL import Image, ImageDraw

from dataset.text import swap_left_right
from dataset.transforms import MEAN, STD, BoxAwareTransform, ImageTransform, OfficialRandAugment


def _scene():
    img = Image.new("RGB", (120, 90), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rectangle([10, 20, 39, 59], fill=(255, 255, 255))   # box A: x=10 y=20 w=30 h=40
    d.rectangle([90, 5, 109, 14], fill=(255, 255, 255))   # box B: x=90 y=5 w=20 h=10
    return img, torch.tensor([[10.0, 20, 30, 40], [90, 5, 20, 10]])


def _bright_extent(img: torch.Tensor, box: torch.Tensor, res: int) -> float:
    """Mean brightness inside a normalised (cx, cy, w, h) box (shrunk by 2 px against resampling blur)."""
    cx, cy, w, h = (box * res).tolist()
    x0, x1, y0, y1 = int(cx - w / 2) + 2, int(cx + w / 2) - 2, int(cy - h / 2) + 2, int(cy + h / 2) - 2
    return float(img[:, y0:y1, x0:x1].mean())


def test_eval_boxes_exact_without_crop():
    img, boxes = _scene()
    t = BoxAwareTransform(60, train=False, randaugment=False)
    _, out, keep, _ = t(img, boxes, 0)
    expect = torch.tensor([[25 / 120, 40 / 90, 30 / 120, 40 / 90], [100 / 120, 10 / 90, 20 / 120, 10 / 90]])
    assert torch.allclose(out, expect, atol=1e-5) and keep.all()


def test_flip_mirrors_box_and_swaps_text():
    img, boxes = _scene()
    t = BoxAwareTransform(64, min_perc_in_image=0.0, randaugment=False)
    flips = 0
    for seed in range(40):
        rng = random.Random(seed)
        out_img, out, keep, texts = t(img, boxes, 0, ["the left square", "right"], rng)
        assert keep[0]
        x = out[0]
        # the anchor box is wholly inside the crop and still covers the white square
        assert (x[:2] - x[2:] / 2 >= -1e-5).all() and (x[:2] + x[2:] / 2 <= 1 + 1e-5).all()
        assert _bright_extent(out_img, x, 64) > 1.5  # normalised white ≈ 1.9; black ≈ -1.7
        if texts[0] == "the right square":
            flips += 1
            assert texts[1] == "left"
        else:
            assert texts == ["the left square", "right"]
    assert 5 < flips < 35


def test_flip_geometry_exact():
    img, boxes = _scene()
    t = BoxAwareTransform(120, randaugment=False)
    # force the crop to the whole image and a flip
    rng = random.Random(0)
    rng.randint = lambda a, b: a if a == 0 else b
    rng.random = lambda: 0.0
    _, out, _, texts = t(img, boxes, 0, ["left"], rng)
    assert texts == ["right"]
    assert torch.allclose(out[0], torch.tensor([(120 - 25) / 120, 40 / 90, 30 / 120, 40 / 90]), atol=1e-5)


def test_min_perc_in_image_drops_mostly_cropped_boxes():
    img, boxes = _scene()
    strict = BoxAwareTransform(64, min_perc_in_image=0.99, randaugment=False)
    seen_dropped = False
    for seed in range(30):
        _, out, keep, _ = strict(img, boxes, 0, [], random.Random(seed))
        if not keep[1]:
            seen_dropped = True
        else:
            assert out[1, 2] > 0 and out[1, 3] > 0
    assert seen_dropped


def test_left_right_swap_words_only():
    assert swap_left_right("Left of the bright light, right?") == "Right of the bright light, left?"
    assert swap_left_right("leftover rightly") == "leftover rightly"


def test_normalisation_constants_and_eval_resize():
    t = ImageTransform(32, train=False)
    x, _ = t(Image.new("RGB", (50, 40), (255, 0, 128)))
    assert x.shape == (3, 32, 32)
    expect = [(1 - MEAN[0]) / STD[0], (0 - MEAN[1]) / STD[1], (128 / 255 - MEAN[2]) / STD[2]]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expect), atol=1e-3)


def test_video_frames_share_one_random_draw():
    frames = torch.randint(0, 255, (1, 3, 40, 40), dtype=torch.uint8).repeat(4, 1, 1, 1)
    out, _ = ImageTransform(32, train=True)(frames, [], random.Random(1))
    assert out.shape == (4, 3, 32, 32) and torch.equal(out[0], out[3])


def test_randaugment_is_seeded_and_photometric_keeps_geometry():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, 8:16, 8:16] = 200
    a = OfficialRandAugment(2, 7)(img, random.Random(5))
    b = OfficialRandAugment(2, 7)(img, random.Random(5))
    assert torch.equal(a, b)
    photometric = OfficialRandAugment(2, 7, ops=("Brightness", "AutoContrast", "Equalize", "Sharpness"))
    for seed in range(10):
        out = photometric(img, random.Random(seed))
        assert (out[:, 8:16, 8:16].float().mean() > out[:, 20:, 20:].float().mean())
