"""Every box conversion and overlap of the project, on torchvision's box ops. Boxes are ``(..., 4)`` tensors;
``cxcywh`` means normalised (centre x, centre y, width, height) in [0, 1], the model's box format; ``xywh`` the
annotation format (top-left corner, width, height, in pixels). Imports nothing of ours."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "cxcywh")


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xywh", "xyxy")


def xywh_pixels_to_cxcywh(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """Pixel ``[x, y, w, h]`` boxes ``(N, 4)`` in images of ``(W, H)`` ``(N, 2)`` → normalised (cx, cy, w, h)."""
    wh = image_size.float()
    return box_convert(boxes.float(), "xywh", "cxcywh") / torch.cat([wh, wh], dim=1)


def cxcywh_to_pixels_xyxy(box: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised (cx, cy, w, h) → pixel ``[x0, y0, x1, y1]`` in an image of ``width`` × ``height``."""
    return cxcywh_to_xyxy(box.float()) * torch.tensor([width, height, width, height], dtype=torch.float)


def paired_iou(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """IoU of each box with its own target ``(N,)`` (normalised boxes; IoU does not change with the scaling)."""
    return box_iou(cxcywh_to_xyxy(pred_cxcywh.float()), cxcywh_to_xyxy(target_cxcywh.float())).diagonal()


def paired_giou_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``1 - GIoU`` of each box with its own target ``(N,)``: torchvision's ``generalized_box_iou_loss``, term for
    term, but with the intersection selected by ``torch.where`` instead of its masked assignment (a data-dependent
    shape, which breaks a compiled graph): the same values and gradients (``tests/test_losses.py``)."""
    x1, y1, x2, y2 = cxcywh_to_xyxy(pred_cxcywh).unbind(dim=-1)
    x1g, y1g, x2g, y2g = cxcywh_to_xyxy(target_cxcywh).unbind(dim=-1)
    inter_w, inter_h = torch.min(x2, x2g) - torch.max(x1, x1g), torch.min(y2, y2g) - torch.max(y1, y1g)
    inter = torch.where((inter_w > 0) & (inter_h > 0), inter_w * inter_h, inter_w.new_zeros(()))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    hull = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - ((hull - union) / (hull + eps)))
