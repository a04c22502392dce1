"""Evaluation metrics: retrieval recall@K and box accuracy at an IoU threshold."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou


def recall_at_k(sim: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Recall@K (percent) for queries (rows of ``sim``) over candidates (columns).

    ``positives`` is a boolean ``(Q, C)`` matrix of correct candidates; a query counts as a hit at K
    when any correct candidate ranks within its top K."""
    if sim.shape != positives.shape:
        raise ValueError(f"similarity {tuple(sim.shape)} and positives {tuple(positives.shape)} differ")
    order = sim.argsort(dim=1, descending=True)
    ranked_hits = torch.gather(positives.bool(), 1, order)
    first_hit = torch.where(ranked_hits.any(1), ranked_hits.float().argmax(1), torch.full_like(order[:, 0], 10**9))
    return {k: float((first_hit < k).float().mean() * 100) for k in ks}


def retrieval_metrics(sim_i2t: torch.Tensor, image_of_text: torch.Tensor) -> dict[str, float]:
    """Image→text and text→image R@1/5/10 and their mean, given each text's image index."""
    positives = image_of_text[None, :] == torch.arange(sim_i2t.shape[0], device=sim_i2t.device)[:, None]
    i2t = recall_at_k(sim_i2t, positives)
    t2i = recall_at_k(sim_i2t.t(), positives.t())
    out = {f"i2t_r{k}": v for k, v in i2t.items()} | {f"t2i_r{k}": v for k, v in t2i.items()}
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def box_accuracy(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, threshold: float = 0.5) -> float:
    """Percent of predictions whose IoU with their target box is at least ``threshold``."""
    pred = box_convert(pred_cxcywh.float(), "cxcywh", "xyxy")
    target = box_convert(target_cxcywh.float(), "cxcywh", "xyxy")
    iou = box_iou(pred, target).diagonal()
    return float((iou >= threshold).float().mean() * 100)
