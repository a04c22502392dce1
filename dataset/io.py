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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None


class BadSample(ValueError):
    """One annotation record or its media cannot be used; the message names the file (and line)."""


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


def decode_image_bytes(data: bytes, what: str = "image") -> Image.Image:
    """Decode encoded image bytes to RGB; :class:`BadSample` if they are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadSample(f"{what}: corrupt or unreadable image ({e})") from e


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")
#: shortest image field taken for base64 text (an encoded image is far longer; a 1x1 PNG is ~90 characters)
MIN_BASE64_CHARS = 64


def looks_like_base64(value: Any) -> bool:
    """True for a string that can only be base64 image data, not a path: at least :data:`MIN_BASE64_CHARS`
    characters, all of the base64 alphabet (letters, digits, ``+``, ``/``, ``=``, line breaks), so no ``.``,
    ``_`` or ``-`` as file names have."""
    return isinstance(value, str) and len(value) >= MIN_BASE64_CHARS and _BASE64_TEXT.fullmatch(value) is not None


def load_image(value: str | bytes, is_path: bool | None = True, root: str | os.PathLike | None = None,
               where: str = "") -> Image.Image:
    """Open an image from a path (joined to ``root`` when relative) or from base64 text / raw bytes.

    ``is_path``: True (a path), False (base64 text), None (decide per value with :func:`looks_like_base64`:
    the task datasets take either in their image fields)."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, bytes):
        return decode_image_bytes(value, f"{prefix}image bytes")
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
        return decode_image_bytes(data, f"{prefix}{path}")
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise BadSample(f"{prefix}image field is not valid base64 ({e})") from e
    return decode_image_bytes(data, f"{prefix}base64 image")


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
