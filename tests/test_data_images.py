"""Image decoding: the pixel bound (decompression bombs refused from the header), 16-bit and other modes,
EXIF orientation (pixels and boxes as displayed)."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from dataset import io as dio
from dataset.io import BadSample, ImageTooLarge, load_image, to_rgb


@pytest.fixture
def pixel_bound():
    """Restore the process-wide bound (and its environment variable) after a test that changes it."""
    before, env = dio.max_image_pixels(), os.environ.get(dio.MAX_IMAGE_PIXELS_ENV)
    yield dio.set_max_image_pixels
    dio.set_max_image_pixels(before)
    if env is None:
        os.environ.pop(dio.MAX_IMAGE_PIXELS_ENV, None)
    else:
        os.environ[dio.MAX_IMAGE_PIXELS_ENV] = env


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit grey PNG of width x height, all black, written row by row (never a big array in memory):
    ~50 MB of pixel rows that deflate to some tens of KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb():
    return bomb_png()


@pytest.fixture
def no_big_decode(monkeypatch):
    """Fail the test if any image over 10 Mpixels is decoded."""
    real = ImageFile.ImageFile.load

    def load(self):
        assert self.size[0] * self.size[1] <= 10_000_000, f"decoded a {self.size} image"
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_bomb_is_refused_from_the_header(bomb, tmp_path, no_big_decode):
    assert len(bomb) < 200_000  # tiny file, 400 Mpixels
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLarge, match=r"bomb\.png.*400000000 pixels.*data\.max_image_pixels \(178956970\)"):
        load_image("bomb.png", True, tmp_path)
    assert isinstance(ImageTooLarge("x"), BadSample)  # counted and skipped like any broken image


def test_bound_is_configurable_and_exact(pixel_bound, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, format="PNG")
    pixel_bound(200)
    assert load_image(buf.getvalue()).size == (20, 10)  # exactly at the bound: decoded
    for bound in (199, 150, 99, 50):  # PIL's own check (which fires above 2 x its half) and ours agree
        pixel_bound(bound)
        with pytest.raises(ImageTooLarge, match=rf"200 pixels is larger than data.max_image_pixels \({bound}\)"):
            load_image(buf.getvalue())
    pixel_bound(None)
    assert dio.max_image_pixels() is None and Image.MAX_IMAGE_PIXELS is None
    assert load_image(buf.getvalue()).size == (20, 10)
    with pytest.raises(ValueError, match="max_image_pixels"):
        pixel_bound(-1)


def test_16_bit_grey_png_keeps_its_grey_values():
    values = np.array([[0, 1, 128, 257, 1000, 32768, 40000, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")  # a 16-bit grey PNG
    with Image.open(io.BytesIO(buf.getvalue())) as raw:
        assert raw.mode.startswith("I;16")
    rgb = np.asarray(load_image(buf.getvalue()))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], expected)
    # the same values as big-endian 16 bit and as 32-bit integers
    big = Image.frombytes("I;16B", (8, 1), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(to_rgb(big))[..., 0], expected)
    as_int = Image.fromarray(values.astype(np.int32), "I")
    np.testing.assert_array_equal(np.asarray(to_rgb(as_int))[..., 0], expected)


def test_other_modes():
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    np.testing.assert_array_equal(np.asarray(to_rgb(floats))[..., 0], [[0, 128, 255]])
    one_bit = Image.new("1", (2, 1))
    one_bit.putpixel((1, 0), 1)
    np.testing.assert_array_equal(np.asarray(to_rgb(one_bit))[..., 0], [[0, 255]])
    # black content on a transparent background: on white, not lost in black
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba)), [[[255, 255, 255], [0, 0, 0]]])
    la = Image.new("LA", (1, 1), (0, 0))
    np.testing.assert_array_equal(np.asarray(to_rgb(la)), [[[255, 255, 255]]])
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((1, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    np.testing.assert_array_equal(np.asarray(load_image(buf.getvalue())), [[[255, 255, 255], [200, 10, 10]]])
    rgb = Image.new("RGB", (3, 2), (5, 6, 7))
    assert to_rgb(rgb) is rgb  # the common case: no copy


def _upright() -> Image.Image:
    """64 x 32 grey, a red 16 x 16 block at x 48..63, y 0..15 (top right): turning it moves the block."""
    im = Image.new("RGB", (64, 32), (128, 128, 128))
    im.paste((220, 20, 20), (48, 0, 64, 16))
    return im


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    image.save(buf, format="JPEG", quality=95, subsampling=0, **kw)
    return buf.getvalue()


# orientation tag -> how the stored pixels relate to the displayed (upright) image
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
          2: Image.Transpose.FLIP_LEFT_RIGHT}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_rotated_jpeg_gives_the_upright_pixels(orientation):
    upright = np.asarray(load_image(_jpeg(_upright())), dtype=np.int16)
    stored = _upright().transpose(STORED[orientation])
    turned = np.asarray(load_image(_jpeg(stored, orientation)), dtype=np.int16)
    assert turned.shape == upright.shape == (32, 64, 3)
    assert np.abs(turned - upright).max() <= 3  # JPEG rounding only


def test_box_on_an_exif_rotated_image_lands_on_the_same_content(tmp_path):
    """A grounding record whose box was drawn on the displayed (upright) photo: the box is valid for the
    rotated file (the stored grid is 32 x 64, where it would lie outside) and covers the red block."""
    import json

    import torch

    from dataset.tasks import GroundingDataset
    from dataset.transforms import ImageTransform
    (tmp_path / "upright.jpg").write_bytes(_jpeg(_upright()))
    (tmp_path / "rotated.jpg").write_bytes(_jpeg(_upright().transpose(Image.Transpose.ROTATE_90), 6))
    box = [48, 0, 16, 16]  # x, y, w, h on the displayed image
    rows = [{"image": name, "text": "the red square", "bbox": box} for name in ("upright.jpg", "rotated.jpg")]
    (tmp_path / "g.json").write_text(json.dumps(rows))
    ds = GroundingDataset(str(tmp_path / "g.json"), ImageTransform(32, train=False), root=str(tmp_path),
                          training=False)
    a, b = ds[0], ds[1]
    assert a["image_size"].tolist() == b["image_size"].tolist() == [64, 32]
    torch.testing.assert_close(a["image"], b["image"], atol=0.1, rtol=0)
    x, y, w, h = box
    for name in ("upright.jpg", "rotated.jpg"):
        crop = np.asarray(load_image(name, True, tmp_path), dtype=np.int16)[y:y + h, x:x + w]
        assert np.abs(crop - np.array([220, 20, 20])).max() <= 6, name
    # the Python API opens paths with the same reader (models.api.X2VLMInference.open_image)
    from models.api import X2VLMInference
    api_image = X2VLMInference.open_image(None, tmp_path / "rotated.jpg")
    assert api_image.size == (64, 32)
