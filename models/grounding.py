"""X²-VLM for referring-expression grounding (RefCOCO+): box regression from the fusion [CLS].

Batch (from ``Grounding.py``'s loader): ``image`` ``(B, 3, H, W)``, ``text_ids`` / ``text_atts`` ``(B, L)``,
``target_bbox`` ``(B, 4)`` normalised (cx, cy, w, h) in the (cropped, resized) training image. The text
attends to all of the image's tokens; the bbox head turns the fusion [CLS] into a box (sigmoid), trained with
L1 + GIoU like the official fine-tuning (no ITC / ITM / MLM). With ``model.architecture: fiber`` the box comes
from the fused image patches instead (:class:`models.fiber.FiberBoxHead`), with its patch alignment loss added.
"""
from __future__ import annotations

from typing import Any

import torch

from models import losses as L
from models.x2vlm import X2VLM


class X2VLMForGrounding(X2VLM):
    """The backbone and the box head (as the official grounding model) with a box-regression forward;
    :meth:`predict_boxes` is inherited."""

    heads = ("bbox",)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss", "loss_bbox", "loss_giou"}`` (FIBER: and ``loss_align``) of one fine-tuning batch."""
        image_embeds, _ = self.encode_image(batch["image"])
        text_atts = batch["text_atts"]
        text_embeds = self.encode_text(batch["text_ids"], text_atts)
        losses = self.box_losses(image_embeds, text_embeds, text_atts, batch["target_bbox"])
        return {"loss": L.total(losses), **losses}


__all__ = ["X2VLMForGrounding"]
