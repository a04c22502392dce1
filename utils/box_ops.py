"""Every box conversion and overlap of the project, on torchvision's box ops. Boxes are ``(..., 4)`` tensors;
``cxcywh`` means normalised (centre x, centre y, width, height) in [0, 1], the model's box format; ``xywh`` the
annotation format (top-left corner, width, height, in pixels). Imports nothing of ours."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss


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
    """``1 - GIoU`` of each box with its own target ``(N,)``."""
    return generalized_box_iou_loss(cxcywh_to_xyxy(pred_cxcywh), cxcywh_to_xyxy(target_cxcywh), reduction="none",
                                    eps=eps)
