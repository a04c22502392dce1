"""Box accuracy at an IoU threshold (retrieval recall: :mod:`utils.evaluation`, tie-aware)."""
from __future__ import annotations

import torch

from utils.box_ops import paired_iou


def box_accuracy(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, threshold: float = 0.5) -> float:
    """Percent of predictions whose IoU with their target box is at least ``threshold``."""
    return float((paired_iou(pred_cxcywh, target_cxcywh) >= threshold).float().mean() * 100)
