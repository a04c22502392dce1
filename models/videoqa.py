"""X²-VLM for video question answering as classification over a fixed answer set (MSRVTT-QA, MSVD-QA).

As the official ``VQA_msrvtt.py`` / ``VQA_msvd.py`` (``XVLMForClassification``): the video is encoded frame by
frame and averaged over time (:meth:`X2VLM.encode_video`), the question attends to it in the fusion, and a
two-layer MLP (``build_mlp(text_width, n_answers)``) on the fusion [CLS] state gives the answer logits,
trained with cross-entropy; questions whose answer is not among the classes carry label -100 (ignored in
the loss, counted wrong in the accuracy). The classifier starts fresh (``optimizer.lr_mult``).

Batch (from ``VideoQA.py``'s loader): ``video`` ``(B, T, 3, H, W)``, ``text_ids`` / ``text_atts`` ``(B, L)``
the questions, ``label`` ``(B,)``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.heads import build_mlp
from models.x2vlm import X2VLM


class X2VLMForVideoQA(X2VLM):
    """The backbone (vision, text, fusion) plus ``cls_head`` over ``model.num_answers`` classes, as the official
    classifier (no pretraining head)."""

    heads: tuple[str, ...] = ()

    def __init__(self, model_cfg: dict, loss_cfg: dict | None = None, load_text_weights: bool = True):
        super().__init__(model_cfg, loss_cfg, load_text_weights)
        n = int(model_cfg.get("num_answers") or 0)
        if n < 2:
            raise ValueError(f"model.num_answers must be at least 2 (the answer classes), got {n}")
        self.cls_head = build_mlp(self.text_width, n)

    def logits(self, video: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """Answer logits ``(B, num_answers)``."""
        embeds, atts = self.encode_video(video) if video.ndim == 5 else self.encode_image(video)
        fused = self.fuse(embeds, atts, self.encode_text(text_ids, text_atts), text_atts)
        return self.cls_head(fused[:, 0])

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss", "acc"}`` of one training batch (accuracy over the batch, unknown answers wrong)."""
        logits = self.logits(batch["video"], batch["text_ids"], batch["text_atts"])
        label = batch["label"]
        loss = F.cross_entropy(logits, label, ignore_index=-100)
        return {"loss": loss, "acc": (logits.argmax(-1) == label).float().mean()}


__all__ = ["X2VLMForVideoQA"]
