"""Winoground text / image / group scores of caption-image pairs from the ITM match probability (or ITC)."""
from __future__ import annotations

import torch
from torch import nn

from utils.evaluation.loop import encode_visual, evaluating, progress_bar, tokenize

#: Chance levels of :func:`winoground_metrics` for scores drawn at random (i.i.d., no ties): a text or image
#: score needs two independent pairwise wins (1/4); the group score needs the two matching pairs to be the
#: two best of four (1 / C(4, 2) = 1/6).
WINOGROUND_CHANCE = {"chance_text_score": 25.0, "chance_image_score": 25.0, "chance_group_score": 100.0 / 6}


def winoground_metrics(scores: torch.Tensor) -> dict[str, float]:
    """Winoground text / image / group scores (percent) from ``scores`` ``(N, 2, 2)``, where
    ``scores[n, c, i]`` is how well caption ``c`` matches image ``i`` of example ``n`` (caption c goes with
    image c). Text score: for each image, its own caption scores higher than the other caption; image
    score: for each caption, its own image scores higher than the other image; group: both. Comparisons
    are strict (a tie is a failure). The chance levels (:data:`WINOGROUND_CHANCE`) come along."""
    if scores.ndim != 3 or scores.shape[1:] != (2, 2):
        raise ValueError(f"winoground scores must be (N, 2, 2), got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("winoground evaluation: no examples")
    s = scores.float()
    c0i0, c0i1, c1i0, c1i1 = s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 1, 1]
    text = (c0i0 > c1i0) & (c1i1 > c0i1)
    image = (c0i0 > c0i1) & (c1i1 > c1i0)
    group = text & image
    return {"text_score": float(text.float().mean() * 100), "image_score": float(image.float().mean() * 100),
            "group_score": float(group.float().mean() * 100), **WINOGROUND_CHANCE}


def winoground_scores(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30, score: str = "itm"
                      ) -> torch.Tensor:
    """``(N, 2, 2)`` caption × image scores of a loader of ``{image_0, image_1, caption_0, caption_1}`` batches
    (pixels ``(B, 3, H, W)``, caption lists). ``score``: ``itm`` — the ITM head's match probability (softmax
    over the two logits) of each of the four pairs; ``itc`` — the cosine similarity of the ITC features."""
    if score not in ("itm", "itc"):
        raise ValueError(f"winoground score must be 'itm' or 'itc', got {score!r}")
    out = []
    with evaluating(model) as bare:
        for batch in progress_bar(loader, "winoground"):
            images = [encode_visual(bare, batch[f"image_{i}"].to(device)) for i in (0, 1)]
            texts = []
            for c in (0, 1):
                ids, atts = tokenize(tokenizer, batch[f"caption_{c}"], max_tokens, device, padding="longest")
                texts.append((bare.encode_text(ids, atts), atts))
            block = torch.empty(len(batch["caption_0"]), 2, 2)
            for c, (t_emb, t_atts) in enumerate(texts):
                for i, (v_emb, v_atts) in enumerate(images):
                    if score == "itm":
                        value = bare.itm_logits(v_emb, v_atts, t_emb, t_atts).float().softmax(-1)[:, 1]
                    else:
                        value = (bare.image_features(v_emb) * bare.text_features(t_emb)).sum(-1)
                    block[:, c, i] = value.float().cpu()
            out.append(block)
    return torch.cat(out) if out else torch.zeros(0, 2, 2)


def evaluate_winoground(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30,
                        score: str = "itm") -> dict[str, float]:
    """:func:`winoground_metrics` of :func:`winoground_scores` (one process; the sets are small)."""
    return winoground_metrics(winoground_scores(model, loader, device, tokenizer=tokenizer,
                                                max_tokens=max_tokens, score=score))
