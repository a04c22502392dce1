"""Readers: images (file path or base64), annotation files (JSON array or JSON-lines) behind a compact index.

The index keeps only numpy arrays (file number, byte offset, length, line number) per record, so a
DataLoader worker that forks from the main process shares them without per-item Python objects
(no copy-on-access blow-up for annotation files with millions of lines).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

#: default of ``data.max_image_pixels``: PIL's own hard limit (twice its warning level of 89,478,485 pixels,
#: about 13,377 x 13,377). Real photographs and scans in image-text data stay far below it; above it an image
#: costs >= 0.5 GB and seconds to decode only to be resized to a few hundred pixels.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
#: the bound travels to DataLoader workers and other processes started with spawn / forkserver in this variable
MAX_IMAGE_PIXELS_ENV = "X2VLM_MAX_IMAGE_PIXELS"
_max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
#: ``data.jpeg_draft`` travels to worker processes in this variable ("1": JPEG decoding deferred)
JPEG_DRAFT_ENV = "X2VLM_JPEG_DRAFT"
_defer_jpeg = os.environ.get(JPEG_DRAFT_ENV, "0") == "1"
#: attribute of an image from :func:`load_image` whose JPEG decoding is deferred: what to name in errors
_DEFERRED = "_x2vlm_deferred"
#: the reduced scales libjpeg decodes at (DCT scaling), largest first
DRAFT_SCALES = (8, 4, 2)


class BadSample(ValueError):
    """One annotation record or its media cannot be used; the message names the file (and line)."""


class ImageTooLarge(BadSample):
    """An image whose header gives more pixels than ``data.max_image_pixels`` (not decoded: a decompression bomb
    or an absurdly large scan); a bad sample like a corrupt image."""


class MissingField(BadSample):
    """A record lacks a field its format needs (the message names the field; the reader adds file and record)."""


def need(record: dict, key: str, fmt: str = "") -> Any:
    """``record[key]``, or :class:`MissingField` naming the field (and, with ``fmt``, the fields the format
    needs, e.g. ``"a grounding record needs image, text, bbox"``)."""
    try:
        return record[key]
    except KeyError:
        have = ", ".join(sorted(map(str, record))) or "none"
        raise MissingField(f"record has no field '{key}'{f' ({fmt})' if fmt else ''}; its fields: {have}") from None


def list_annotation_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files, comma-separated strings and folders (their files, sorted; ``_SUCCESS`` markers skipped)."""
    if isinstance(paths, str | os.PathLike):
        paths = [p for p in str(paths).split(",") if p]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and "_SUCCESS" not in f.name
                          and not f.name.startswith("."))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"annotation file not found: {p}")
    return out


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


class AnnotationIndex:
    """Random access to the records of JSON-array and JSON-lines files.

    JSON-lines files are indexed by byte offset and read lazily; a JSON-array file is parsed once and its
    records re-serialised into one bytes buffer (offsets into it). ``get(i)`` returns the parsed dict or
    raises :class:`BadSample` naming the file and line.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        self.files = [str(p) for p in list_annotation_files(paths)]
        file_no, offsets, lengths, lines = [], [], [], []
        buffers: list[bytes] = []
        buf_pos = 0
        for k, path in enumerate(self.files):
            if _first_char(Path(path)) == "[":
                try:
                    with open(path, encoding="utf-8") as f:
                        records = json.load(f)
                except json.JSONDecodeError as e:
                    raise BadSample(f"{path}: not valid JSON ({e})") from e
                for n, rec in enumerate(records):
                    data = json.dumps(rec, ensure_ascii=False).encode("utf-8")
                    file_no.append(-1 - k)  # negative: record lives in the in-memory buffer
                    offsets.append(buf_pos)
                    lengths.append(len(data))
                    lines.append(n)
                    buffers.append(data)
                    buf_pos += len(data)
                continue
            with open(path, "rb") as f:
                pos = 0
                for n, raw in enumerate(f, start=1):
                    if raw.strip():
                        file_no.append(k)
                        offsets.append(pos)
                        lengths.append(len(raw))
                        lines.append(n)
                    pos += len(raw)
        self._buffer = np.frombuffer(b"".join(buffers), dtype=np.uint8)
        self.file_no = np.asarray(file_no, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.lines = np.asarray(lines, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        """``file:line`` (JSON-lines, 1-based) or ``file[item]`` (JSON array, 0-based) of record ``i``."""
        k = int(self.file_no[i])
        if k < 0:
            return f"{self.files[-1 - k]}[{int(self.lines[i])}]"
        return f"{self.files[k]}:{int(self.lines[i])}"

    def raw(self, i: int) -> bytes:
        k, off, n = int(self.file_no[i]), int(self.offsets[i]), int(self.lengths[i])
        if k < 0:
            return self._buffer[off: off + n].tobytes()
        with open(self.files[k], "rb") as f:
            f.seek(off)
            return f.read(n)

    def get(self, i: int) -> dict:
        try:
            rec = json.loads(self.raw(i))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadSample(f"{self.where(i)}: line is not valid JSON ({e.__class__.__name__}: {e})") from e
        if not isinstance(rec, dict):
            raise BadSample(f"{self.where(i)}: record must be a JSON object, got {type(rec).__name__}")
        return rec


def _apply_max_image_pixels(limit: int | None) -> None:
    global _max_image_pixels
    _max_image_pixels = limit
    # PIL's own check (Image.open raises above twice its MAX_IMAGE_PIXELS) set to fire at the same bound, so it
    # neither refuses an image this bound allows nor lets a bigger one through to other PIL users in the process
    Image.MAX_IMAGE_PIXELS = None if limit is None else (limit + 1) // 2


def set_max_image_pixels(limit: int | None) -> None:
    """Bound on width x height of the images :func:`load_image` decodes (``data.max_image_pixels``; set by
    :func:`dataset.create_dataset`). A bigger image is an :class:`ImageTooLarge` bad sample, refused from its
    header before any pixel is decoded. ``None`` or 0: no bound. Also exported in ``X2VLM_MAX_IMAGE_PIXELS`` so
    that worker processes started with spawn / forkserver use it too (forked ones inherit it)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"data.max_image_pixels must be a whole number of pixels >= 0 or null, got {limit!r}")
    limit = limit or None
    _apply_max_image_pixels(limit)
    os.environ[MAX_IMAGE_PIXELS_ENV] = str(limit or 0)


def max_image_pixels() -> int | None:
    """The bound in force (``None``: none)."""
    return _max_image_pixels


try:
    _apply_max_image_pixels(int(os.environ.get(MAX_IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)) or None)
except ValueError:
    _apply_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_EXIF_ERRORS = (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, AttributeError)


def exif_upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation tag says (as viewers display it); unchanged without a tag (or
    with an unreadable one). The tag is removed from a turned image, so applying this twice is harmless."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _EXIF_ERRORS:
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    return ImageOps.exif_transpose(image)


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), "L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image as it is displayed: EXIF orientation applied (:func:`exif_upright`), then

    - 16-bit / 32-bit integer grey (``I;16``, ``I;16B``, ``I;16L``, ``I``: what PIL gives for 16-bit PNG and TIFF)
      scaled from 0..65535 to 0..255 (``round(v * 255 / 65535)``; ``I`` values outside 0..65535 clipped);
    - float grey (``F``): values in [0, 1] scaled to 0..255, otherwise clipped to 0..255;
    - transparency (``RGBA``, ``LA``, ``PA``, a palette or ``L``/``RGB`` image with a transparent colour)
      composited over white, so dark content on a transparent background stays visible;
    - any other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) through PIL's ``convert("RGB")``.
    """
    image = exif_upright(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode == "I":
        v = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        return _grey_to_rgb((v * 255 + 32767) // 65535)
    if mode == "F":
        v = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if v.size and float(v.max()) <= 1.0:
            v = v * 255.0
        return _grey_to_rgb(np.rint(np.clip(v, 0.0, 255.0)))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", image.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def _too_large(what: str, pixels: int, size: str = "") -> ImageTooLarge:
    return ImageTooLarge(f"{what}: image {size + ' = ' if size else 'of '}{pixels} pixels is larger than "
                         f"data.max_image_pixels ({_max_image_pixels}); not decoded (a decompression bomb? raise "
                         f"the limit if such images are wanted)")


def set_jpeg_draft(on: bool) -> None:
    """``data.jpeg_draft``: :func:`load_image` returns RGB JPEGs (no EXIF turn) opened but not yet decoded, so
    that a training crop can decode them at a reduced scale (:func:`decode_deferred`); any other use of such
    an image decodes it in full on first access. Process-wide (set by :func:`dataset.create_dataset`) and
    exported in ``X2VLM_JPEG_DRAFT`` for spawned worker processes, as :func:`set_max_image_pixels`."""
    global _defer_jpeg
    _defer_jpeg = bool(on)
    os.environ[JPEG_DRAFT_ENV] = "1" if on else "0"


def jpeg_draft() -> bool:
    """Whether :func:`load_image` defers JPEG decoding (:func:`set_jpeg_draft`)."""
    return _defer_jpeg


def _deferrable(im: Image.Image) -> bool:
    if im.format != "JPEG" or im.mode != "RGB" or "transparency" in im.info:
        return False
    try:
        return im.getexif().get(ExifTags.Base.Orientation, 1) not in (2, 3, 4, 5, 6, 7, 8)
    except _EXIF_ERRORS:
        return True  # unreadable EXIF: exif_upright would leave the image unturned too


def is_deferred(image: Image.Image) -> bool:
    """True for a JPEG from :func:`load_image` whose pixels are not decoded yet (see :func:`set_jpeg_draft`)."""
    return getattr(image, _DEFERRED, None) is not None


def decode_deferred(image: Image.Image, reduce: int = 1) -> tuple[Image.Image, int]:
    """Decode a deferred JPEG (:func:`is_deferred`) at ``1/reduce`` of its size (``reduce`` one of 1, 2, 4, 8:
    libjpeg's DCT scaling, much cheaper than decoding in full and then shrinking); returns the decoded image
    and the scale it was decoded at: ``reduce``, or 1 for an image that was not deferred (returned as it is).
    A pixel ``(x, y)`` of the original lies at ``(x / scale, y / scale)`` in the decoded image (whose size is
    the original's divided by ``scale``, rounded up). :class:`BadSample` if the data does not decode."""
    what = getattr(image, _DEFERRED, None)
    if what is None:
        return image, 1
    scale = 1
    try:
        w, h = image.size
        if reduce > 1 and w >= reduce and h >= reduce:
            got = image.draft("RGB", (w // reduce, h // reduce))
            if got is not None:
                scale = round(w / got[1][2])
        image.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise BadSample(f"{what}: corrupt or unreadable image ({e})") from e
    setattr(image, _DEFERRED, None)
    return image, scale


def decode_image_bytes(data: bytes, what: str = "image", defer: bool | None = None) -> Image.Image:
    """Decode encoded image bytes to 8-bit RGB as displayed (:func:`to_rgb`); :class:`BadSample` if they are
    not a readable image, :class:`ImageTooLarge` (from the header, nothing decoded) above
    :func:`max_image_pixels`. ``defer`` (default: :func:`jpeg_draft`): an RGB JPEG is returned opened, its
    pixels decoded later (:func:`decode_deferred`, or on first access)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # below the bound: decoded as asked
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        if _max_image_pixels is not None and w * h > _max_image_pixels:
            raise _too_large(what, w * h, f"{w}x{h}")
        if (_defer_jpeg if defer is None else defer) and _deferrable(im):
            setattr(im, _DEFERRED, what)
            return im
        im.load()
        return to_rgb(im)
    except BadSample:
        raise
    except Image.DecompressionBombError as e:  # PIL's own check, at the same bound, fired inside Image.open
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(what, int(found.group(1)) if found else -1) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadSample(f"{what}: corrupt or unreadable image ({e})") from e


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")
#: shortest image field taken for base64 text (an encoded image is far longer; a 1x1 PNG is ~90 characters)
MIN_BASE64_CHARS = 64


def looks_like_base64(value: Any) -> TypeGuard[str]:
    """True for a string that can only be base64 image data, not a path: at least :data:`MIN_BASE64_CHARS`
    characters, all of the base64 alphabet (letters, digits, ``+``, ``/``, ``=``, line breaks), so no ``.``,
    ``_`` or ``-`` as file names have."""
    return isinstance(value, str) and len(value) >= MIN_BASE64_CHARS and _BASE64_TEXT.fullmatch(value) is not None


def load_image(value: str | bytes, is_path: bool | None = True, root: str | os.PathLike | None = None,
               where: str = "", defer: bool | None = None) -> Image.Image:
    """Open an image from a path (joined to ``root`` when relative) or from base64 text / raw bytes.

    ``is_path``: True (a path), False (base64 text), None (decide per value with :func:`looks_like_base64`:
    the task datasets take either in their image fields). ``defer``: see :func:`decode_image_bytes`."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bytes):
        return decode_image_bytes(value, f"{prefix}image bytes", defer)
    if not isinstance(value, str) or not value:
        raise BadSample(f"{prefix}image field is empty or not a string")
    if is_path is None:
        is_path = not looks_like_base64(value)
    if is_path:
        path = Path(root) / value if root and not os.path.isabs(value) else Path(value)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadSample(f"{prefix}image file {path} cannot be read ({e.strerror})") from e
        return decode_image_bytes(data, f"{prefix}{path}", defer)
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise BadSample(f"{prefix}image field is not valid base64 ({e})") from e
    return decode_image_bytes(data, f"{prefix}base64 image", defer)


def image_to_base64(image: Image.Image, fmt: str = "JPEG", quality: int = 95) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def read_json(path: str | os.PathLike) -> Any:
    """Parse one JSON file; a clear error naming the file if it does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BadSample(f"{path}: not valid JSON ({e})") from e
