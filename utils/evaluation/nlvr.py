"""NLVR2: the predicted label of each (image pair, sentence) and accuracy next to the majority-class rate."""
from __future__ import annotations

import torch
from torch import nn

from utils.evaluation.loop import evaluating, progress_bar


def predict_nlvr(model: nn.Module, loader, device: torch.device) -> tuple[list[int], list[int]]:
    """Predicted and true labels over ``loader``, in its order (an :class:`~models.nlvr.X2VLMForNLVR`)."""
    preds: list[int] = []
    labels: list[int] = []
    with evaluating(model) as bare:
        dtype = next(bare.parameters()).dtype
        for batch in progress_bar(loader, "nlvr"):
            logits = bare.logits(batch["image0"].to(device, dtype), batch["image1"].to(device, dtype),
                                 batch["text_ids"].to(device), batch["text_atts"].to(device))
            preds += logits.argmax(-1).tolist()
            labels += batch["label"].tolist()
    return preds, labels


def nlvr_metrics(preds: list[int], labels: list[int]) -> dict[str, float]:
    """Accuracy and the majority-class rate (the accuracy of always answering the commoner label), in %."""
    if not labels:
        raise ValueError("no NLVR examples to score")
    n = len(labels)
    correct = sum(int(p == t) for p, t in zip(preds, labels, strict=True))
    positives = sum(labels)
    return {"acc": 100.0 * correct / n, "majority": 100.0 * max(positives, n - positives) / n, "n": n}
