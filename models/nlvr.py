"""X²-VLM for NLVR2: is a sentence true of a pair of images?

Each image goes through the fusion with the sentence on its own; the two fusion [CLS] states are
concatenated and a two-layer MLP (the official ``build_mlp(2 * text_width, 2)``) gives false / true logits,
trained with cross-entropy. No NLVR-specific pretraining step and no head initialisation from another head:
the classifier starts fresh (and gets ``optimizer.lr_mult``, as the official ``init_params``).

Batch (from ``NLVR.py``'s loader): ``image0`` / ``image1`` ``(B, 3, H, W)`` the left / right images,
``text_ids`` / ``text_atts`` ``(B, L)``, ``label`` ``(B,)`` with 1 = true.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.heads import build_mlp
from models.x2vlm import X2VLM


class X2VLMForNLVR(X2VLM):
    """The backbone (vision, text, fusion) plus ``cls_head``, as the official NLVR model (no pretraining head:
    a pretraining checkpoint's heads are reported unused)."""

    heads: tuple[str, ...] = ()

    def __init__(self, model_cfg: dict, loss_cfg: dict | None = None, load_text_weights: bool = True):
        super().__init__(model_cfg, loss_cfg, load_text_weights)
        self.cls_head = build_mlp(2 * self.text_width, 2)

    def logits(self, image0: torch.Tensor, image1: torch.Tensor, text_ids: torch.Tensor,
               text_atts: torch.Tensor) -> torch.Tensor:
        """False / true logits ``(B, 2)`` of each (left image, right image, sentence) triple."""
        b = image0.shape[0]
        # one vision pass over both images, as the official model
        embeds, atts = self.encode_image(torch.cat([image0, image1]))
        text = self.encode_text(text_ids, text_atts)
        cls0 = self.fuse(embeds[:b], atts[:b], text, text_atts)[:, 0]
        cls1 = self.fuse(embeds[b:], atts[b:], text, text_atts)[:, 0]
        return self.cls_head(torch.cat([cls0, cls1], dim=-1))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss", "acc"}`` of one training batch."""
        logits = self.logits(batch["image0"], batch["image1"], batch["text_ids"], batch["text_atts"])
        label = batch["label"]
        loss = F.cross_entropy(logits, label)
        acc = (logits.argmax(-1) == label).float().mean()
        return {"loss": loss, "acc": acc}


__all__ = ["X2VLMForNLVR"]
