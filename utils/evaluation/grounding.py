"""Box grounding: one box per referring expression from whole-image tokens; accuracy at IoU 0.5, mean IoU, and
the better constant box as chance."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from utils.box_ops import paired_iou, xywh_pixels_to_cxcywh
from utils.evaluation.loop import dist_ready, evaluating, progress_bar, tokenize, world_of
from utils.metrics import box_accuracy


def grounding_chance(target_cxcywh: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean IoU (percent) of the better of two constant boxes: the whole image, and a centred box
    of the targets' mean size."""
    mean_wh = target_cxcywh[:, 2:].float().mean(0)
    candidates = [torch.tensor([0.5, 0.5, 1.0, 1.0]), torch.cat([torch.tensor([0.5, 0.5]), mean_wh.cpu()])]
    accs, mious = [], []
    for box in candidates:
        pred = box.to(target_cxcywh.device)[None].expand_as(target_cxcywh)
        accs.append(box_accuracy(pred, target_cxcywh))
        mious.append(float(paired_iou(pred, target_cxcywh).mean() * 100))
    return {"chance_acc": max(accs), "chance_miou": max(mious)}


def predict_grounding(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` normalised (cx, cy, w, h) boxes ``(N, 4)`` of this process's share of the loader
    (batches with ``image``, ``text``, ``bbox`` in pixels [x, y, w, h] and ``image_size`` (W, H))."""
    preds, targets = [], []
    with evaluating(model) as bare:
        for batch in progress_bar(loader, "grounding"):
            if "bbox" not in batch:
                raise ValueError("grounding evaluation needs ground-truth boxes ('bbox') in the annotation file")
            image_embeds, _ = bare.encode_image(batch["image"].to(device))
            ids, atts = tokenize(tokenizer, batch["text"], max_tokens, device, padding="longest")
            text_embeds = bare.encode_text(ids, atts)
            preds.append(bare.predict_boxes(image_embeds, text_embeds, atts).float().cpu())
            targets.append(xywh_pixels_to_cxcywh(batch["bbox"], batch["image_size"]).cpu())
    if not preds:
        return torch.zeros(0, 4), torch.zeros(0, 4)
    return torch.cat(preds), torch.cat(targets)


def evaluate_grounding(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30,
                       dist_info=None) -> dict[str, float]:
    """``acc`` (percent of boxes with IoU ≥ 0.5 — the official criterion), ``miou`` (mean IoU, percent) and the
    constant-box ``chance_acc`` / ``chance_miou``. The predicted box is scaled to the original image like the
    ground truth. With a rank-split loader and ``dist_info``, predictions are gathered over ranks (a
    ``DistributedSampler`` pads to equal shares, so up to ``world_size - 1`` samples may count twice)."""
    pred, target = predict_grounding(model, loader, device, tokenizer=tokenizer, max_tokens=max_tokens)
    _, world = world_of(dist_info)
    if world > 1:
        if not dist_ready():
            raise RuntimeError(f"dist_info says world_size={world} but no process group is initialised")
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (pred, target))
        pred = torch.cat([p for p, _ in gathered])
        target = torch.cat([t for _, t in gathered])
    if pred.shape[0] == 0:
        raise ValueError("grounding evaluation: the loader gave no samples")
    return {"acc": box_accuracy(pred, target), "miou": float(paired_iou(pred, target).mean() * 100),
            **grounding_chance(target)}
