"""The fast loader path: deferred JPEG decoding at reduced (draft) scale for training crops, crop-before-convert,
RandAugment on PIL kernels, the in-place normalisation, the per-text tokenisation store, and the packed
annotation index (``benchmarks/loader_per_core.py`` times them)."""
from __future__ import annotations

import io
import json
import os
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageDraw, ImageFilter

from dataset import create_dataset, load_tokenizer, text_processor
from dataset import io as dio
from dataset.io import AnnotationIndex, BadSample, decode_deferred, is_deferred, load_image
from dataset.synthetic import generate
from dataset.transforms import (
    BICUBIC,
    MEAN,
    STD,
    BoxAwareTransform,
    ImageTransform,
    OfficialRandAugment,
    decode_crop,
    draft_scale,
    normalize,
    scale_box,
)
from tests.conftest import TINY_CONFIG
from utils.config import load_config


@pytest.fixture
def draft_on():
    """``set_jpeg_draft(True)`` for the test; the process-wide setting and its variable restored after."""
    before, env = dio.jpeg_draft(), os.environ.get(dio.JPEG_DRAFT_ENV)
    dio.set_jpeg_draft(True)
    yield
    dio.set_jpeg_draft(before)
    if env is None:
        os.environ.pop(dio.JPEG_DRAFT_ENV, None)
    else:
        os.environ[dio.JPEG_DRAFT_ENV] = env


def _photo(w: int = 960, h: int = 720, seed: int = 0) -> Image.Image:
    """Gradients, shapes and mild noise: content whose decode at reduced scale can be compared to a full one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([80 + 100 * xx / w, 60 + 120 * yy / h, 200 - 90 * (xx + yy) / (w + h)], -1)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        box = (x0, y0, x0 + int(rng.integers(4, w // 3)), y0 + int(rng.integers(4, h // 3)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(1.0))
    noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 3, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def test_draft_scale_keeps_the_crop_above_the_output_size():
    assert draft_scale(450, 450, 224, 224) == 2
    assert draft_scale(449, 900, 224, 224) == 1            # one side too short for 1/2 (one pixel to spare)
    assert draft_scale(900, 2000, 224, 224) == 4
    assert draft_scale(1800, 1800, 224, 224) == 8
    assert draft_scale(5000, 5000, 224, 224) == 8          # libjpeg goes no lower than 1/8
    assert draft_scale(300, 300, 384, 384) == 1            # already smaller than the output: never drafted
    for h in range(200, 2000, 37):
        for w in range(200, 2000, 53):
            s = draft_scale(h, w, 224, 224)
            assert h / s > 224 and w / s > 224 or s == 1


def test_scale_box_maps_original_coordinates_onto_the_reduced_image():
    assert scale_box((100, 200, 460, 480), 1, (960, 720)) == (100, 200, 460, 480)
    assert scale_box((100, 200, 460, 480), 2, (480, 360)) == (50, 100, 230, 240)
    assert scale_box((0, 0, 720, 960), 4, (240, 180)) == (0, 0, 180, 240)   # the whole image stays whole
    rng = random.Random(0)
    for _ in range(500):  # random boxes of 961 x 723 images (odd sizes: the reduced size is rounded up)
        W, H, s = 961, 723, rng.choice((2, 4, 8))
        h, w = rng.randint(1, H), rng.randint(1, W)
        top, left = rng.randint(0, H - h), rng.randint(0, W - w)
        size = (-(-W // s), -(-H // s))
        t, lt, hh, ww = scale_box((top, left, h, w), s, size)
        assert abs(t - top / s) <= 0.5 and abs(lt - left / s) <= 0.5
        assert abs(t + hh - (top + h) / s) <= 0.5 and abs(lt + ww - (left + w) / s) <= 0.5
        assert t >= 0 and lt >= 0 and t + hh <= size[1] and lt + ww <= size[0]
        if draft_scale(h, w, 224, 224) == s:
            assert hh >= 224 and ww >= 224  # still shrunk to the output, never enlarged


def test_jpegs_are_deferred_only_when_asked_and_only_plain_rgb_ones(draft_on, tmp_path):
    jpeg = _jpeg(_photo(64, 48))
    im = load_image(jpeg)
    assert is_deferred(im) and im.size == (64, 48)
    assert not is_deferred(load_image(jpeg, defer=False))
    png = io.BytesIO()
    _photo(64, 48).save(png, format="PNG")
    assert not is_deferred(load_image(png.getvalue()))             # not a JPEG: decoded at once
    assert not is_deferred(load_image(_jpeg(_photo(64, 48).convert("L"))))  # grey: goes through to_rgb
    exif = Image.Exif()
    exif[0x0112] = 6                                                # EXIF turn: decoded and turned at once
    turned = load_image(_jpeg(_photo(64, 48), exif=exif.tobytes()))
    assert not is_deferred(turned) and turned.size == (48, 64)
    dio.set_jpeg_draft(False)
    assert not is_deferred(load_image(jpeg))


def test_deferred_decode_at_reduced_scale(draft_on):
    photo = _photo()
    full = np.asarray(load_image(_jpeg(photo), defer=False), dtype=np.float32)
    for reduce in (1, 2, 4, 8):
        im, scale = decode_deferred(load_image(_jpeg(photo)), reduce)
        assert scale == reduce and not is_deferred(im)
        assert im.size == (-(-960 // reduce), -(-720 // reduce))
        assert decode_deferred(im, 2) == (im, 1)                    # decoded already: left as it is
        if reduce > 1:  # a box-filtered full decode is what the reduced decode approximates
            small = F.resize(torch.from_numpy(full).permute(2, 0, 1), [720 // reduce, 960 // reduce],
                             antialias=True)
            got = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[:, :720 // reduce,
                                                                                       :960 // reduce]
            assert float((small - got).abs().mean()) < 3.0
    not_jpeg = Image.new("RGB", (40, 30))
    assert decode_deferred(not_jpeg, 4) == (not_jpeg, 1)


def test_corrupt_deferred_jpeg_is_a_bad_sample_naming_the_file(draft_on, tmp_path):
    data = _jpeg(_photo(200, 150))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    im = load_image("cut.jpg", True, tmp_path)
    assert is_deferred(im)  # the header is fine: the damage shows when decoding
    with pytest.raises(BadSample, match=r"cut\.jpg: corrupt or unreadable image"):
        decode_crop(im, (0, 0, 150, 200), (32, 32))
    with pytest.raises(BadSample, match=r"cut\.jpg: corrupt or unreadable image"):
        ImageTransform(32, train=False)(load_image("cut.jpg", True, tmp_path))


def test_drafted_crop_is_close_to_the_full_decode(draft_on):
    photo = _photo()
    data = _jpeg(photo)
    full = load_image(data, defer=False)
    for box in ((0, 0, 720, 960), (100, 150, 500, 600), (40, 300, 460, 470)):
        s = draft_scale(box[2], box[3], 224, 224)
        assert s >= 2
        drafted = decode_crop(load_image(data), box, (224, 224))
        assert min(drafted.shape[-2:]) >= 224 and drafted.shape[0] == 3
        exact = decode_crop(full, box, (224, 224))
        assert torch.equal(exact, F.pil_to_tensor(full)[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]])
        a = F.resize(drafted, [224, 224], interpolation=BICUBIC, antialias=True).float()
        b = F.resize(exact, [224, 224], interpolation=BICUBIC, antialias=True).float()
        assert float((a - b).abs().mean()) < 1.5, box  # the same picture (grey levels of 255; measured 0.3-0.6)
    # a crop too small for any reduction is decoded in full: exactly the full decode's pixels
    small = (200, 300, 300, 300)
    assert torch.equal(decode_crop(load_image(data), small, (224, 224)), decode_crop(full, small, (224, 224)))
    # without draft the deferred image decodes in full
    assert torch.equal(decode_crop(load_image(data), (0, 0, 720, 960), (224, 224), draft=False),
                       F.pil_to_tensor(full))


def test_transform_of_an_image_is_the_tensor_path_exactly_without_draft():
    photo = _photo(320, 240)
    tf = ImageTransform(64, train=True, randaugment=False)
    for seed in range(6):
        a, ta = tf(photo, ["the left dog"], random.Random(seed))
        b, tb = tf(F.pil_to_tensor(photo), ["the left dog"], random.Random(seed))
        assert torch.equal(a, b) and ta == tb and a.is_contiguous()


def test_drafted_training_sample_matches_the_full_one(draft_on):
    data = _jpeg(_photo())
    fast = ImageTransform(224, train=True, scale=(0.6, 1.0), randaugment=False, draft=True)
    full = ImageTransform(224, train=True, scale=(0.6, 1.0), randaugment=False, draft=False)
    drafted = 0
    for seed in range(8):
        a, _ = fast(load_image(data), [], random.Random(seed))
        b, _ = full(load_image(data, defer=False), [], random.Random(seed))
        drafted += not torch.equal(a, b)
        assert a.shape == (3, 224, 224)
        assert float((a - b).abs().mean()) * 255 * max(STD) < 1.5  # same crop, same flip: grey levels
    assert drafted >= 4  # crops of 0.6-1 of a 960 x 720 image: most allow 1/2


def test_box_aware_crop_drafts_pixels_but_not_boxes(draft_on):
    data = _jpeg(_photo())
    boxes = torch.tensor([[500.0, 300, 200, 150], [100, 50, 120, 80]])
    fast = BoxAwareTransform(224, randaugment=False, draft=True)
    full = BoxAwareTransform(224, randaugment=False, draft=False)
    for seed in range(6):
        ia, ba, ka, _ = fast(load_image(data), boxes, 0, [], random.Random(seed))
        ib, bb, kb, _ = full(load_image(data, defer=False), boxes, 0, [], random.Random(seed))
        assert torch.equal(ba, bb) and torch.equal(ka, kb)
        assert float((ia - ib).abs().mean()) * 255 * max(STD) < 1.5
    photo = _photo(320, 240)
    pil_out = full(photo, boxes / 3, 0, [], random.Random(3))
    tensor_out = full(F.pil_to_tensor(photo), boxes / 3, 0, [], random.Random(3))
    assert all(torch.equal(x, y) for x, y in zip(pil_out[:3], tensor_out[:3], strict=True))


def test_randaugment_pil_kernels_draw_the_same_and_land_close():
    img = F.resize(F.pil_to_tensor(_photo(320, 240)), [96, 96], antialias=True)
    pil, ten = OfficialRandAugment(2, 7, kernels="pil"), OfficialRandAugment(2, 7, kernels="tensor")
    for op in pil.ops:
        a = pil._apply(op, F.to_pil_image(img), random.Random(1))
        b = ten._apply(op, img, random.Random(1))
        diff = (F.pil_to_tensor(a).float() - b.float()).abs()
        assert float(diff.mean()) < 0.1, op  # rounding, nearest-neighbour ties (measured: 0 for most ops)
    for seed in range(20):
        ra, rb = random.Random(seed), random.Random(seed)
        a, b = pil(img, ra), ten(img, rb)
        assert ra.random() == rb.random()                # the same draws, so the rest of the sample agrees
        assert a.dtype == torch.uint8 and a.shape == img.shape
        assert float((a.float() - b.float()).abs().mean()) < 0.1
    frames = img.expand(3, -1, -1, -1).clone()           # video frames: tensor kernels whatever is asked
    assert torch.equal(pil(frames, random.Random(4)), ten(frames, random.Random(4)))
    with pytest.raises(ValueError, match="kernels"):
        OfficialRandAugment(kernels="cv2")


def test_normalize_is_torchvision_s_exactly():
    x = (torch.rand(3, 40, 50) * 255).to(torch.uint8)
    channels_last = x.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    for img in (x, channels_last, x.expand(2, -1, -1, -1)):
        want = F.normalize(F.to_dtype(img.contiguous(), torch.float32, scale=True), MEAN, STD)
        got = normalize(img)
        assert torch.equal(got, want) and got.is_contiguous()
    assert not torch.equal(x.float(), normalize(x))  # a new tensor: the input is left alone
    floats = torch.rand(3, 8, 8)
    assert torch.equal(normalize(floats), F.normalize(floats, MEAN, STD))


def test_tokenisation_is_kept_per_text_and_masks_still_drawn(tmp_path):
    f = generate(tmp_path, seed=0, n_images=4, n_videos=0)
    cfg = load_config(TINY_CONFIG, [f"model.text.tokenizer={f['vocab']}"])
    tok = load_tokenizer(cfg)
    cached, plain = text_processor(cfg, tok), text_processor(cfg, tok)
    plain.cache_size = 0
    for caption in ("A red Circle, on the left!", "a blue square", "A red Circle, on the left!"):
        for seed in range(3):
            assert cached.encode(caption, random.Random(seed)) == plain.encode(caption, random.Random(seed))
    assert len(cached._cache) == 2 and not plain._cache
    masks = {tuple(cached.encode("a red circle and a blue square", random.Random(s))["mlm_ids"])
             for s in range(10)}
    assert len(masks) > 1
    cached.cache_size = 2
    cached.encode("a green triangle")
    assert len(cached._cache) == 1  # full: started afresh
    with pytest.raises(BadSample):
        cached.encode("!!! ...")


def test_packed_annotation_index_round_trips_the_records(tmp_path):
    rng = random.Random(0)
    records = [{"image": f"images/{i:05d}.jpg", "caption": rng.choice(["a dog", ["two", "cats"], {"en": "x"}]),
                "elems": [{"bb": [i, 2, 3, 4], "caption": "äöü – 猫"}] if i % 3 == 0 else []}
               for i in range(500)]
    (tmp_path / "a.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for name in ("a.json", "b.jsonl"):
        index = AnnotationIndex(tmp_path / name)
        assert len(index) == len(records)
        assert [index.get(i) for i in range(len(index))] == records
        # a handful of flat arrays and one bytes buffer: nothing per record for a forked worker to copy
        assert all(isinstance(a, np.ndarray) for a in (index.offsets, index.lengths, index.file_no, index.lines))
    assert AnnotationIndex(tmp_path / "a.json")._buffer.nbytes > 0
    assert AnnotationIndex(tmp_path / "b.jsonl")._buffer.nbytes == 0  # JSON-lines: read from the file


def test_config_key_sets_the_transforms_and_the_readers(tmp_path, draft_on):
    f = generate(tmp_path, seed=0, n_images=4, n_videos=0)
    for on in (False, True):
        cfg = load_config(TINY_CONFIG, [f"model.text.tokenizer={f['vocab']}", f"data.train_file=[{f['image_text']}]",
                                        f"data.train_file_regions=[{f['regions']}]", f"data.jpeg_draft={on}",
                                        "data.randaugment_kernels=tensor"])
        images = create_dataset("pretrain_images", cfg)
        assert images.transform.draft is on and images.transform.randaug.kernels == "tensor"
        assert dio.jpeg_draft() is on and os.environ[dio.JPEG_DRAFT_ENV] == str(int(on))
        assert create_dataset("pretrain_regions", cfg).transform.draft is on
        sample = images[0]
        assert sample["image"].shape == (3, cfg["model"]["image_res"], cfg["model"]["image_res"])
