"""The relative-position-bias resize equals the official BEiT-2 / X²-VLM one, checked against an independent
computation: the official offsets written out here, and the bicubic interpolating spline built as two passes of
1-D not-a-knot cubic splines (``scipy.interpolate.make_interp_spline``; FITPACK's ``s=0`` spline, which the
official ``interp2d(kind='cubic')`` fitted, is that same tensor-product spline), evaluated with FITPACK's clamping
at the ends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import make_interp_spline
from timm.layers import resize_rel_pos_bias_table as timm_resize

from models.position_tables import progression_ratio, resize_rel_pos_bias_table


def official_offsets(src_side: int, dst_side: int) -> np.ndarray:
    """The official construction, step by step: bisection for q, then cumulative sums of its powers."""
    left, right, q = 1.01, 1.5, None
    n = src_side // 2
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** n) / (1.0 - q) > dst_side // 2:
            right = q
        else:
            left = q
    pos = np.cumsum([q ** i for i in range(n)])  # 1, 1+q, 1+q+q², ...
    return np.concatenate([-pos[::-1], [0.0], pos])


def separable_spline(z: np.ndarray, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """z[j, i] given at (x[i], y=x[j]) → values at (targets[i'], targets[j']) as [j', i']."""
    t = np.clip(targets, x[0], x[-1])  # FITPACK evaluates outside the knots at the boundary
    rows = make_interp_spline(x, z.astype(np.float64), k=3, axis=1)(t)  # along dx: (len(y), len(t))
    return make_interp_spline(x, rows, k=3, axis=0)(t)  # along dy


def random_table(window: int, heads: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2 * window - 1) ** 2 + 3, heads, generator=g)


@pytest.mark.parametrize(("src", "dst"), [(14, 24), (14, 48), (24, 14), (7, 12)])
def test_resize_equals_the_official_spline(src: int, dst: int) -> None:
    table = random_table(src, heads=3, seed=src * 100 + dst)
    out = resize_rel_pos_bias_table(table, (dst, dst))
    s, d = 2 * src - 1, 2 * dst - 1
    assert out.shape == (d * d + 3, 3) and out.dtype == table.dtype
    x = official_offsets(s, d)
    targets = np.arange(-(d // 2), d // 2 + 1, dtype=np.float64)
    for h in range(3):
        z = table[:-3, h].reshape(s, s).numpy()
        expected = separable_spline(z, x, targets).astype(np.float32)
        np.testing.assert_allclose(out[:-3, h].reshape(d, d).numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[-3:], table[-3:], rtol=0, atol=0)  # [CLS] rows copied
    # a node of both grids (the zero offset) keeps its value: the spline interpolates
    torch.testing.assert_close(out[(d // 2) * d + d // 2], table[(s // 2) * s + s // 2], rtol=0, atol=1e-5)


def test_offsets_and_ratio_as_the_official_loop_leaves_them() -> None:
    from models.position_tables import source_offsets
    np.testing.assert_allclose(source_offsets(27, 47), official_offsets(27, 47), rtol=0, atol=0)
    q = progression_ratio(13, 23)
    assert 1.0 < q < 1.5 and abs((1 - q ** 13) / (1 - q) - 23) < 1e-3
    assert resize_rel_pos_bias_table(random_table(14, 2, 0), 14).equal(random_table(14, 2, 0))  # same grid: copy


@pytest.mark.filterwarnings("ignore:.*(non-tuple sequence|searchsorted):UserWarning")
def test_differs_from_timms_bilinear_resize() -> None:
    """The reason this module exists: on a non-constant table timm's resize gives other values (the issue measured
    13 % relative at 224 → 384 px)."""
    table = random_table(14, heads=4, seed=1)
    ours = resize_rel_pos_bias_table(table, (24, 24))
    theirs = timm_resize(table, new_window_size=(24, 24), new_bias_shape=ours.shape)
    relative = (ours - theirs).norm() / ours.norm()
    assert relative > 0.05


def test_bad_tables_raise() -> None:
    with pytest.raises(ValueError, match="square"):
        resize_rel_pos_bias_table(torch.zeros(10, 2), (4, 4))
    with pytest.raises(ValueError, match="square patch grids"):
        resize_rel_pos_bias_table(random_table(4, 2, 0), (4, 6))
