"""X²-VLM for image-text (and video-text) retrieval fine-tuning: ITC + ITM with hard negatives.

Batch (from ``Retrieval.py``'s loader): ``image`` ``(B, 3, H, W)`` or video frames ``(B, T, 3, H, W)``,
``text_ids`` / ``text_atts`` ``(B, L)``, ``idx`` ``(B,)`` the image id of each pair. Pairs that share an
image id are all positives for ITC and never drawn as ITM negatives (several captions of one image can sit
in one batch), as in the official fine-tuning. ``sample_seed`` (set by the trainer) seeds the negatives.
"""
from __future__ import annotations

from typing import Any

import torch

from models import losses as L
from models.tokens import Tokens
from models.x2vlm import X2VLM


class X2VLMForRetrieval(X2VLM):
    """The backbone with the ITC and ITM heads (as the official retrieval model) and a retrieval forward;
    scoring (ITC features, ITM logits) is inherited."""

    heads = ("itc", "itm")

    def encode_visual(self, pixels: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
        """Whole-image tokens and mask; 5-D input is a batch of videos."""
        return self.encode_video(pixels) if pixels.ndim == 5 else self.encode_image(pixels)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss", "loss_itc", "loss_itm"}`` of one fine-tuning batch."""
        image_embeds, image_atts = self.encode_visual(batch["image"])
        text_atts = batch["text_atts"]
        text_embeds = self.encode_text(batch["text_ids"], text_atts)
        image_feat = self.image_features(image_embeds)
        text_feat = self.text_features(text_embeds)
        ids = batch.get("idx")
        loss_itc = L.itc_loss(image_feat, text_feat, self.temperature, ids)
        loss_itm = self._itm_loss(image_embeds, image_atts, image_feat, text_embeds, text_atts, text_feat, ids,
                                  None, batch.get("sample_seed"))
        return {"loss": loss_itc + loss_itm, "loss_itc": loss_itc, "loss_itm": loss_itm}


__all__ = ["X2VLMForRetrieval"]
