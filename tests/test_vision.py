"""BEiT-2 vision encoder parity with timm, box → patch masks, and region concepts."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from timm.models.beit import Beit
from torch import nn

from models.vision import BEiT2VisionEncoder, box_patch_mask, region_concepts


def randomise_(encoder: nn.Module, seed: int = 0) -> None:
    """Give layer scales, relative-position tables, q/v biases, norms and [CLS] random non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name.endswith(("gamma_1", "gamma_2")):
                p.copy_(torch.rand(p.shape, generator=g) * 0.9 + 0.1)
            elif name.endswith(("q_bias", "v_bias", "relative_position_bias_table", "cls_token")):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))


def timm_beit(image_res: int, patch: int, width: int, depth: int, heads: int, mlp_ratio: float) -> Beit:
    """timm's own Beit with the BEiT-2 / X²-VLM hyper-parameters."""
    return Beit(img_size=image_res, patch_size=patch, num_classes=0, global_pool="avg", embed_dim=width,
                depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=0.1, use_abs_pos_emb=False,
                use_rel_pos_bias=True, drop_path_rate=0.0)


@pytest.mark.parametrize(("image_res", "patch"), [(32, 8), (48, 8), (40, 8)])
def test_parity_with_timm_beit(image_res: int, patch: int) -> None:
    width, depth, heads, mlp_ratio = 32, 2, 4, 2.0
    torch.manual_seed(0)
    ours = BEiT2VisionEncoder(image_res=image_res, patch_size=patch, width=width, depth=depth, heads=heads,
                              mlp_ratio=mlp_ratio, init_values=0.1, drop_path=0.0).eval()
    randomise_(ours)
    ref = timm_beit(image_res, patch, width, depth, heads, mlp_ratio).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert ours.pos_embed is None and ref.pos_embed is None
    grid = image_res // patch
    assert ours.grid_size == grid and ours.num_patches == grid * grid

    x = torch.randn(2, 3, image_res, image_res, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ours(x)
        ref_patches = ref.fc_norm(ref.forward_features(x)[:, 1:])
    assert out.shape == (2, 1 + grid * grid, width)
    assert (out[:, 1:] - ref_patches).abs().max() < 1e-5
    assert (out[:, 0] - ref_patches.mean(dim=1)).abs().max() < 1e-5
    # the randomised tensors matter: zeroing the relative position tables changes the output
    with torch.no_grad():
        for blk in ours.blocks:
            blk.attn.relative_position_bias_table.zero_()
        assert (ours(x) - out).abs().max() > 1e-3


def test_official_parameter_names() -> None:
    enc = BEiT2VisionEncoder(image_res=32, patch_size=8, width=32, depth=1, heads=4, mlp_ratio=2.0)
    keys = set(enc.state_dict())
    for k in ("cls_token", "patch_embed.proj.weight", "blocks.0.gamma_1", "blocks.0.attn.q_bias",
              "blocks.0.attn.v_bias", "blocks.0.attn.relative_position_bias_table", "fc_norm.weight"):
        assert k in keys
    assert not any(k.startswith(("pos_embed", "head.", "norm.")) for k in keys)


# ---------------------------------------------------------------- box_patch_mask on a 4x4 grid

def grid_mask(rows: list[list[int]]) -> list[int]:
    """[CLS]=1 followed by the row-major 4x4 patch grid written out by hand."""
    return [1] + [v for row in rows for v in row]


BOX_CASES = {
    "whole image": ((0.5, 0.5, 1.0, 1.0), [[1, 1, 1, 1],
                                           [1, 1, 1, 1],
                                           [1, 1, 1, 1],
                                           [1, 1, 1, 1]]),
    # x in [0.5, 0.75], y in [0.25, 0.5]: exactly patch (row 1, col 2)
    "exactly one patch": ((0.625, 0.375, 0.25, 0.25), [[0, 0, 0, 0],
                                                        [0, 0, 1, 0],
                                                        [0, 0, 0, 0],
                                                        [0, 0, 0, 0]]),
    # x in [0.075, 0.125], y in [0.875, 0.925]: inside patch (row 3, col 0)
    "smaller than a patch": ((0.1, 0.9, 0.05, 0.05), [[0, 0, 0, 0],
                                                       [0, 0, 0, 0],
                                                       [0, 0, 0, 0],
                                                       [1, 0, 0, 0]]),
    # x in [0.5, 1.0], y in [0.75, 1.0]: touches the right and bottom edges
    "right/bottom edge": ((0.75, 0.875, 0.5, 0.25), [[0, 0, 0, 0],
                                                      [0, 0, 0, 0],
                                                      [0, 0, 0, 0],
                                                      [0, 0, 1, 1]]),
    # x in [0.7, 1.3] → clamped to [0.7, 1.0]; y in [0.4, 0.6]
    "partly outside right": ((1.0, 0.5, 0.6, 0.2), [[0, 0, 0, 0],
                                                     [0, 0, 1, 1],
                                                     [0, 0, 1, 1],
                                                     [0, 0, 0, 0]]),
    # x, y in [-0.25, 0.25] → clamped to [0, 0.25]
    "partly outside top-left": ((0.0, 0.0, 0.5, 0.5), [[1, 0, 0, 0],
                                                        [0, 0, 0, 0],
                                                        [0, 0, 0, 0],
                                                        [0, 0, 0, 0]]),
    # x, y in [0.4, 0.6]: straddles the borders between patches 1 and 2 in both directions
    "straddling borders": ((0.5, 0.5, 0.2, 0.2), [[0, 0, 0, 0],
                                                  [0, 1, 1, 0],
                                                  [0, 1, 1, 0],
                                                  [0, 0, 0, 0]]),
    # x in [0.1, 0.9], y in [0.05, 0.3]: wide strip over two rows
    "wide strip": ((0.5, 0.175, 0.8, 0.25), [[1, 1, 1, 1],
                                             [1, 1, 1, 1],
                                             [0, 0, 0, 0],
                                             [0, 0, 0, 0]]),
}


@pytest.mark.parametrize("case", list(BOX_CASES))
def test_box_patch_mask_hand_checked(case: str) -> None:
    box, rows = BOX_CASES[case]
    mask = box_patch_mask(torch.tensor([box]), grid_size=4)
    assert mask.dtype == torch.long and mask.shape == (1, 17)
    assert mask[0].tolist() == grid_mask(rows)


def test_box_patch_mask_batched_equals_single() -> None:
    boxes = torch.tensor([box for box, _ in BOX_CASES.values()])
    mask = box_patch_mask(boxes, grid_size=4)
    assert mask.tolist() == [grid_mask(rows) for _, rows in BOX_CASES.values()]


def test_box_patch_mask_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="cx, cy, w, h"):
        box_patch_mask(torch.zeros(3, 2), grid_size=4)
    with pytest.raises(ValueError):
        box_patch_mask(torch.zeros(4), grid_size=4)


# ---------------------------------------------------------------- region_concepts

def test_region_concepts_cls_is_mean_of_selected_patches() -> None:
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 17, 8, generator=g)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.625, 0.375, 0.25, 0.25]])
    mask = box_patch_mask(boxes, 4)
    concepts, out_mask = region_concepts(embeds, mask)
    assert torch.equal(out_mask, mask)
    assert concepts.shape == embeds.shape
    # box 0 selects patches 5, 6, 9, 10 (token positions +1); box 1 selects patch 6
    assert torch.allclose(concepts[0, 0], embeds[0, [6, 7, 10, 11]].mean(0), atol=1e-6)
    assert torch.allclose(concepts[1, 0], embeds[1, 7], atol=1e-6)
    assert torch.equal(concepts[:, 1:], embeds[:, 1:])  # patch tokens untouched


def test_region_concepts_image_index_picks_image() -> None:
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(3, 17, 8, generator=g)
    boxes = torch.tensor([[0.125, 0.125, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0], [0.875, 0.875, 0.25, 0.25],
                          [0.125, 0.125, 0.25, 0.25]])
    index = torch.tensor([2, 0, 2, 1])
    concepts, _ = region_concepts(embeds, box_patch_mask(boxes, 4), index)
    assert concepts.shape == (4, 17, 8)
    for row, img in enumerate(index.tolist()):
        assert torch.equal(concepts[row, 1:], embeds[img, 1:])
    assert torch.allclose(concepts[0, 0], embeds[2, 1])
    assert torch.allclose(concepts[1, 0], embeds[0, 1:].mean(0), atol=1e-6)
    assert torch.allclose(concepts[2, 0], embeds[2, 16])
    assert torch.allclose(concepts[3, 0], embeds[1, 1])


def test_region_concepts_count_mismatch_raises() -> None:
    embeds = torch.randn(2, 17, 8)
    mask = box_patch_mask(torch.rand(3, 4) * 0.5 + 0.25, 4)
    with pytest.raises(ValueError, match="image_index"):
        region_concepts(embeds, mask)
    with pytest.raises(ValueError):
        region_concepts(embeds, mask, torch.tensor([0, 1]))
