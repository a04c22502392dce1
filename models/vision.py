"""BEiT-2 vision encoder (timm blocks) and the multi-grained visual concepts built from one vision pass."""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.beit import Beit
from torch import nn
from torch.utils.checkpoint import checkpoint

from utils.box_ops import cxcywh_to_xyxy


class BEiT2VisionEncoder(Beit):
    """BEiT-2 ViT as X²-VLM uses it: relative position bias per block, layer scale, no absolute positions
    (``abs_pos_emb=True`` adds a learned absolute position embedding, initialised as the 2-D sin-cos table of
    MAE, for small models trained from scratch: a two-block encoder cannot tell where a patch is from relative
    biases alone, and a near-zero random table leaves box regression stuck at the mean box for a long time).

    The transformer's own [CLS] token is dropped after the last block; the patch tokens go through
    ``fc_norm`` and the concept's [CLS] is their mean. Output: ``(B, 1 + num_patches, width)``.
    Parameter names equal the official ``vision_encoder.*`` keys (timm and the official code agree).
    """

    def __init__(self, image_res: int = 224, patch_size: int = 16, width: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, init_values: float = 0.1, drop_path: float = 0.1,
                 abs_pos_emb: bool = False):
        super().__init__(
            img_size=image_res, patch_size=patch_size, num_classes=0, global_pool="avg",
            embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=True,
            drop_path_rate=drop_path, norm_layer=partial(nn.LayerNorm, eps=1e-6),  # type: ignore[arg-type]  # timm: any factory
            init_values=init_values,
            use_abs_pos_emb=abs_pos_emb, use_rel_pos_bias=True, use_shared_rel_pos_bias=False, use_fc_norm=True,
        )
        self.width = width
        self.grid_size = self.patch_embed.grid_size[0]
        if self.patch_embed.grid_size[0] != self.patch_embed.grid_size[1]:
            raise ValueError("only square inputs are supported")
        if self.pos_embed is not None:
            with torch.no_grad():  # [CLS] position 0, patches the 2-D sin-cos table
                self.pos_embed.zero_()
                self.pos_embed[0, 1:] = build_sincos2d_pos_embed([self.grid_size] * 2, width)

    @property
    def num_patches(self) -> int:
        return self.grid_size * self.grid_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` → the sequence entering block 0: ``(B, 1 + P, D)`` ([CLS], patches)."""
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start .. stop-1`` (activation-checkpointed when enabled) on a ``(B, 1 + P, D)`` sequence."""
        rel_pos_bias = self.rel_pos_bias() if self.rel_pos_bias is not None else None
        for blk in self.blocks[start:stop]:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, shared_rel_pos_bias=rel_pos_bias, use_reentrant=False)
            else:
                x = blk(x, shared_rel_pos_bias=rel_pos_bias)
        return x

    def output_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's output → tokens ``(B, 1 + P, D)``: [mean of patches, patches] after ``fc_norm``."""
        patches = self.fc_norm(self.norm(x)[:, 1:])
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Images ``(B, 3, H, W)`` → tokens ``(B, 1 + P, D)``: [mean of patches, patches]."""
        return self.output_tokens(self.run_blocks(self.embed(images)))

    def forward_with_state(self, images: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, plus the sequence entering block ``start`` ([CLS], patches), from one pass."""
        state = self.run_blocks(self.embed(images), 0, start)
        return self.output_tokens(self.run_blocks(state, start)), state


def box_patch_mask(boxes: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Patch mask of normalised ``(cx, cy, w, h)`` boxes on a ``grid_size``² patch grid.

    Returns ``(N, 1 + grid_size²)`` long tensor: position 0 ([CLS]) is always 1, then each patch
    that the box touches (row-major). A box smaller than a patch still selects the patch it lies in;
    coordinates are clamped to the image. Same rule as the official data pipeline.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as (cx, cy, w, h), got {tuple(boxes.shape)}")
    boxes = boxes.float()
    eps = 1e-6
    x0, y0, x1, y1 = (cxcywh_to_xyxy(boxes) * grid_size).unbind(-1)

    def span(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = torch.floor(lo + eps).clamp(0, grid_size - 1)
        stop = torch.ceil(hi - eps).clamp(max=grid_size)
        stop = torch.maximum(stop, start + 1)
        return start, stop

    xs, xe = span(x0, x1)
    ys, ye = span(y0, y1)
    idx = torch.arange(grid_size, device=boxes.device, dtype=boxes.dtype)
    in_x = (idx[None, :] >= xs[:, None]) & (idx[None, :] < xe[:, None])  # (N, G) columns
    in_y = (idx[None, :] >= ys[:, None]) & (idx[None, :] < ye[:, None])  # (N, G) rows
    patches = (in_y[:, :, None] & in_x[:, None, :]).flatten(1)
    cls = torch.ones(boxes.shape[0], 1, dtype=torch.bool, device=boxes.device)
    return torch.cat([cls, patches], dim=1).long()


def region_concepts(image_embeds: torch.Tensor, patch_mask: torch.Tensor,
                    image_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual concepts of boxes from the whole-image tokens (no second vision pass).

    ``image_embeds`` ``(B, 1+P, D)``; ``patch_mask`` ``(N, 1+P)`` from :func:`box_patch_mask`;
    ``image_index`` ``(N,)`` picks the image of each box (default: box i ↔ image i).
    Returns ``(N, 1+P, D)`` tokens whose [CLS] is the mean of the patches inside the box, and the mask.
    """
    if image_index is not None:
        image_embeds = image_embeds.index_select(0, image_index)
    if image_embeds.shape[0] != patch_mask.shape[0]:
        raise ValueError(f"{patch_mask.shape[0]} boxes for {image_embeds.shape[0]} images: pass image_index")
    weights = patch_mask[:, 1:, None].to(image_embeds.dtype)
    cls = (weights * image_embeds[:, 1:]).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return torch.cat([cls, image_embeds[:, 1:]], dim=1), patch_mask
