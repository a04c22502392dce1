"""Video QA as classification: the predicted answer class of each question and accuracy next to always giving
the commonest answer."""
from __future__ import annotations

import torch
from torch import nn

from utils.evaluation.loop import evaluating, progress_bar


def predict_video_qa(model: nn.Module, loader, device: torch.device) -> list[dict]:
    """``[{question_id, pred, label}]`` over ``loader`` (class indexes), in its order (an
    :class:`~models.videoqa.X2VLMForVideoQA`)."""
    out: list[dict] = []
    with evaluating(model) as bare:
        dtype = next(bare.parameters()).dtype
        for batch in progress_bar(loader, "video QA"):
            logits = bare.logits(batch["video"].to(device, dtype), batch["text_ids"].to(device),
                                 batch["text_atts"].to(device))
            qids = batch["question_id"]
            qids = qids.tolist() if isinstance(qids, torch.Tensor) else list(qids)
            out += [{"question_id": q, "pred": p, "label": t}
                    for q, p, t in zip(qids, logits.argmax(-1).tolist(), batch["label"].tolist(), strict=True)]
    return out


def videoqa_metrics(preds: list[int], labels: list[int]) -> dict[str, float]:
    """``acc`` (percent of questions answered right; a -100 label, an answer outside the classes, is always
    wrong), ``chance_acc`` (always answering the commonest test answer) and ``n``."""
    if not labels:
        raise ValueError("no video QA questions to score")
    n = len(labels)
    correct = sum(int(p == t) for p, t in zip(preds, labels, strict=True))
    known = [t for t in labels if t != -100]
    majority = max((known.count(t) for t in set(known)), default=0)
    return {"acc": 100.0 * correct / n, "chance_acc": 100.0 * majority / n, "n": n}
