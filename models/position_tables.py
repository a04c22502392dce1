"""Resizing BEiT's relative-position-bias tables to another patch grid, as the official BEiT-2 / X²-VLM code does.

A table of a ``W × W`` patch grid has ``(2W - 1)²`` rows (one per relative offset ``(dy, dx)``, ``dy`` major) plus
3 rows for the [CLS] token (to-token, from-token, to-itself), and one column per attention head. The official
code (``interpolate_pos_embed`` in models/beit2.py of zengyan-97/X2-VLM, also used by BEiT-2 itself) fits, per
head, an interpolating bicubic spline (``scipy.interpolate.interp2d(kind='cubic')``) through the source offsets
placed on a *geometric progression* — offset ``±k`` sits at ``±(1 + q + … + q^(k-1))``, with ``q`` found by
bisection on ``[1.01, 1.5]`` so that the largest offset lands at ``dst // 2`` — and samples it at the integer
offsets ``-dst//2 … dst//2`` of the new grid. Small offsets keep their spacing, large ones are stretched.
The [CLS] rows are copied.

``interp2d`` is gone from SciPy ≥ 1.14; on a full grid it fitted FITPACK's ``regrid`` spline with ``s=0``, which is
what ``RectBivariateSpline(x, y, z.T, kx=3, ky=3, s=0)`` fits too (evaluation outside the knots is clamped to the
boundary in both). timm's ``resize_rel_pos_bias_table`` interpolates differently (13–17 % relative difference
on non-constant tables), so checkpoints of the official code get this function instead.
"""
from __future__ import annotations

import math

import numpy as np
import torch

#: rows after the offset grid: [CLS]→token, token→[CLS], [CLS]→[CLS]
NUM_CLS_ROWS = 3


def progression_ratio(src_half: int, dst_half: int) -> float:
    """The ratio ``q`` of the official bisection: ``1 + q + … + q^(src_half-1)`` ≈ ``dst_half`` (last midpoint
    of the bisection on [1.01, 1.5] to a width of 1e-6, exactly as the official loop leaves it)."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        total = (1.0 - q ** src_half) / (1.0 - q)
        if total > dst_half:
            right = q
        else:
            left = q
    return q


def source_offsets(src_side: int, dst_side: int) -> np.ndarray:
    """Where the ``src_side`` offsets of the source table sit on the new grid's axis (symmetric about 0)."""
    half = src_side // 2
    q = progression_ratio(half, dst_side // 2)
    positive, cur = [], 1.0
    for i in range(half):
        positive.append(cur)
        cur += q ** (i + 1)
    return np.array([-p for p in reversed(positive)] + [0.0] + positive, dtype=np.float64)


def resize_rel_pos_bias_table(table: torch.Tensor, dst_window: tuple[int, int] | int) -> torch.Tensor:
    """``table`` ``((2W-1)² + 3, heads)`` → the table of a ``dst_window`` patch grid, by the official spline.

    Raises ``ValueError`` for a table that is not a square grid plus the [CLS] rows, or a non-square window."""
    from scipy.interpolate import RectBivariateSpline

    dst_h, dst_w = (dst_window, dst_window) if isinstance(dst_window, int) else tuple(dst_window)
    if dst_h != dst_w:
        raise ValueError(f"the official resize handles square patch grids only, not {dst_h}x{dst_w}")
    if table.ndim != 2:
        raise ValueError(f"a relative-position table is (rows, heads), got shape {tuple(table.shape)}")
    src_side = math.isqrt(table.shape[0] - NUM_CLS_ROWS)
    if src_side * src_side != table.shape[0] - NUM_CLS_ROWS:
        raise ValueError(f"{table.shape[0]} rows are not a square offset grid plus {NUM_CLS_ROWS} [CLS] rows")
    dst_side = 2 * dst_h - 1
    if src_side == dst_side:
        return table.clone()
    grid, cls_rows = table[:-NUM_CLS_ROWS], table[-NUM_CLS_ROWS:]
    x = source_offsets(src_side, dst_side)
    half = dst_side // 2
    targets = np.arange(-float(half), half + 0.1, 1.0)
    columns = []
    for head in range(table.shape[1]):
        z = grid[:, head].reshape(src_side, src_side).float().numpy()  # z[row ↔ dy, column ↔ dx]
        spline = RectBivariateSpline(x, x, z.T, kx=3, ky=3, s=0)
        values = spline(targets, targets).T  # [dy, dx], as interp2d returns it
        columns.append(torch.from_numpy(values.astype(np.float32)).reshape(-1, 1))
    resized = torch.cat(columns, dim=1).to(table.dtype)
    return torch.cat([resized, cls_rows], dim=0)


__all__ = ["resize_rel_pos_bias_table", "progression_ratio", "source_offsets", "NUM_CLS_ROWS"]
