"""Rankings and recall with one tie rule (a stable descending sort: among equal scores the lower index ranks
first), and the recall of a random ranking."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

KS = (1, 5, 10)


#: Queries ranked at a time: bounds the ``(rows, candidates)`` int64 sort indices of a ranking.
RANK_CHUNK = 1024


def rank_order(scores: torch.Tensor) -> torch.Tensor:
    """Candidate indices of each row of ``scores`` ``(Q, C)``, best first, by a stable descending sort: among
    equal scores the candidate with the lower index ranks first (the tie rule of every retrieval ranking)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def first_positive_rank(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` int64: the 0-based rank of each query's best-ranked positive in :func:`rank_order` (ties:
    lower index first), i.e. the number of candidates that score higher than it, plus those that score the
    same and have a lower index; the int64 maximum for a query without positives (never a hit)."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ")
    positives = positives.to(scores.device).bool()
    out = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    for start in range(0, scores.shape[0], RANK_CHUNK):
        stop = min(start + RANK_CHUNK, scores.shape[0])
        hits = positives[start:stop].gather(1, rank_order(scores[start:stop]))
        rank = (hits.cumsum(1) == 0).sum(1)  # leading misses = position of the first hit
        out[start:stop] = torch.where(hits.any(1), rank, torch.iinfo(torch.long).max)
    return out


def positives_matrix(txt2img: dict[int, int] | Sequence[int], n_images: int) -> torch.Tensor:
    """Boolean ``(I, T)``: text j describes image i."""
    n_texts = len(txt2img)
    image_of_text = torch.tensor([int(txt2img[j]) for j in range(n_texts)])
    return image_of_text[None, :] == torch.arange(n_images)[:, None]


def recall_metrics(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, positives: torch.Tensor,
                   prefix: str = "") -> dict[str, float]:
    """Official-style keys: ``txt_r*`` rank texts per image (rows of ``scores_i2t``), ``img_r*`` rank images per
    text (rows of ``scores_t2i``); ``*_r_mean`` average the three, ``r_mean`` both means.

    A query is a hit at K when its best-ranked positive has rank < K in :func:`rank_order` of its float32
    scores: among equal scores the candidate with the lower index ranks first (a positive tied with a
    lower-index negative ranks below it; tied with a higher-index one, above it)."""
    positives = positives.to(scores_i2t.device)
    txt = _recall(scores_i2t, positives)
    img = _recall(scores_t2i.to(scores_i2t.device), positives.t())
    out = {f"{prefix}txt_r{k}": v for k, v in txt.items()}
    out[f"{prefix}txt_r_mean"] = sum(txt.values()) / len(txt)
    out |= {f"{prefix}img_r{k}": v for k, v in img.items()}
    out[f"{prefix}img_r_mean"] = sum(img.values()) / len(img)
    out[f"{prefix}r_mean"] = (out[f"{prefix}txt_r_mean"] + out[f"{prefix}img_r_mean"]) / 2
    return out


def _recall(scores: torch.Tensor, positives: torch.Tensor) -> dict[int, float]:
    """Recall@K (percent) for K in :data:`KS` under the tie rule of :func:`first_positive_rank`."""
    rank = first_positive_rank(scores.float(), positives)
    return {k: float((rank < k).float().mean() * 100) for k in KS}


def _chance_recall(n_candidates: int, n_positive: int, k: int) -> float:
    """Probability (percent) that a uniformly random ranking puts one of ``n_positive`` in the top ``k``."""
    k = min(k, n_candidates)
    if n_positive <= 0:
        return 0.0
    return 100.0 * (1.0 - math.comb(n_candidates - n_positive, k) / math.comb(n_candidates, k))


def retrieval_chance(positives: torch.Tensor) -> dict[str, float]:
    """Recall of a random ranking (``chance_`` + the :func:`recall_metrics` keys) for ``positives`` ``(I, T)``."""
    n_img, n_txt = positives.shape
    per_image = positives.sum(1).tolist()
    per_text = positives.sum(0).tolist()
    txt = {k: sum(_chance_recall(n_txt, int(m), k) for m in per_image) / n_img for k in KS}
    img = {k: sum(_chance_recall(n_img, int(m), k) for m in per_text) / n_txt for k in KS}
    out = {f"chance_txt_r{k}": v for k, v in txt.items()}
    out["chance_txt_r_mean"] = sum(txt.values()) / len(txt)
    out |= {f"chance_img_r{k}": v for k, v in img.items()}
    out["chance_img_r_mean"] = sum(img.values()) / len(img)
    out["chance_r_mean"] = (out["chance_txt_r_mean"] + out["chance_img_r_mean"]) / 2
    return out
