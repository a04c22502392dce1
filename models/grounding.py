"""X²-VLM for referring-expression grounding (RefCOCO+): box regression from the fusion [CLS].

Batch (from ``Grounding.py``'s loader): ``image`` ``(B, 3, H, W)``, ``text_ids`` / ``text_atts`` ``(B, L)``,
``target_bbox`` ``(B, 4)`` normalised (cx, cy, w, h) in the (cropped, resized) training image. The text
attends to all of the image's tokens; the bbox head turns the fusion [CLS] into a box (sigmoid), trained with
L1 + GIoU like the official fine-tuning (no ITC / ITM / MLM).
"""
from __future__ import annotations

from typing import Any

import torch

from models import losses as L
from models.x2vlm import X2VLM


class X2VLMGrounding(X2VLM):
    """The pretraining model with a box-regression forward; :meth:`predict_boxes` is inherited."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss", "loss_bbox", "loss_giou"}`` of one fine-tuning batch."""
        image_embeds, _ = self.encode_image(batch["image"])
        text_atts = batch["text_atts"]
        text_embeds = self.encode_text(batch["text_ids"], text_atts)
        pred = self.predict_boxes(image_embeds, text_embeds, text_atts)
        loss_bbox, loss_giou = L.bbox_loss(pred, batch["target_bbox"])
        return {"loss": loss_bbox + loss_giou, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


__all__ = ["X2VLMGrounding"]
