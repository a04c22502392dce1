"""X²-VLM pretraining losses (paper §III-C): ITC, ITM with hard negatives, MLM, bbox (L1 + GIoU)."""
from __future__ import annotations

import functools
import operator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as _all_gather_with_grad

from utils.box_ops import paired_giou_loss


def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of ``losses`` (at least one), added in order as the built-in ``sum`` does."""
    return functools.reduce(operator.add, losses.values())


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0; gradients flow back to each rank's own slice
    summed over all ranks' losses (so DDP's gradient average equals the single-process gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(_all_gather_with_grad(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
             ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (features gathered from every rank, with gradient).

    ``ids`` ``(N,)``: pairs with equal id are all positives (duplicate images are not negatives);
    the target is uniform over a row's positives. Without ids, the diagonal is the positive.
    """
    image_all = gather_with_grad(image_feat)
    text_all = gather_with_grad(text_feat)
    logits = image_all @ text_all.t() / temp
    if ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    ids_all = gather_no_grad(ids.view(-1))
    pos = (ids_all[:, None] == ids_all[None, :]).to(logits.dtype)
    target = pos / pos.sum(1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits, dim=1) * target).sum(1).mean()
    loss_t2i = -(F.log_softmax(logits.t(), dim=1) * target).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@torch.no_grad()
def sample_hard_negatives(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
                          ids: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          noise: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per concept a negative text and per text a negative concept, drawn ∝ softmax(similarity).

    Pairs with the same id (or the pair itself) are never drawn. Vectorised (one draw per direction, no
    host sync). ``noise`` ``(2, n, n)`` of uniform (0, 1) values makes the draw a deterministic function
    of it (Gumbel-max: argmax(log w − log(−log u)) samples ∝ w), so processes that share the noise draw
    the same negatives; without it ``torch.multinomial`` draws with ``generator``.
    Returns ``(neg_image_for_text, valid_t, neg_text_for_image, valid_i)``: rows with no admissible
    negative (every item shares their id) get ``valid = False``.
    """
    n = image_feat.shape[0]
    sim = (image_feat.float() @ text_feat.float().t()) / temp.float()
    same = torch.eye(n, dtype=torch.bool, device=sim.device) if ids is None else ids.view(-1, 1) == ids.view(1, -1)

    def draw(scores: torch.Tensor, uniform: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        weights = (F.softmax(scores, dim=1) + 1e-5).masked_fill(same, 0.0)
        valid = weights.sum(1) > 0
        weights = torch.where(valid[:, None], weights, torch.ones_like(weights))
        if uniform is None:
            return torch.multinomial(weights, 1, generator=generator).squeeze(1), valid
        gumbel = -torch.log(-torch.log(uniform.to(weights.device).clamp(1e-12, 1 - 1e-7)))
        return (weights.log() + gumbel).argmax(dim=1), valid

    if noise is not None and noise.shape != (2, n, n):
        raise ValueError(f"noise must have shape (2, {n}, {n}), got {tuple(noise.shape)}")
    neg_text, valid_i = draw(sim, None if noise is None else noise[0])
    neg_image, valid_t = draw(sim.t(), None if noise is None else noise[1])
    return neg_image, valid_t, neg_text, valid_i


def itm_labels(n: int, valid_t: torch.Tensor, valid_i: torch.Tensor) -> torch.Tensor:
    """Labels for logits ordered [positives (n), text+negative concept (n), concept+negative text (n)];
    negatives without an admissible sample are ignored (-100)."""
    pos = torch.ones(n, dtype=torch.long, device=valid_t.device)
    neg_t = torch.where(valid_t, 0, -100)
    neg_i = torch.where(valid_i, 0, -100)
    return torch.cat([pos, neg_t, neg_i])


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions; ``labels`` -100 where nothing is predicted.

    The mean is over the masked tokens of the global batch: on ``W`` ranks each rank's sum is divided by the
    job's token count over ``W`` (one small all-reduce), so DDP's gradient average is the single-process mean
    over the same global batch (a mean of per-rank means would weight a rank's tokens by how few it has), and
    the mean over ranks of the logged value is the global token mean."""
    n_tokens = (labels != -100).sum()
    total = logits.float().flatten(0, -2)
    total = F.cross_entropy(total, labels.flatten(), ignore_index=-100, reduction="sum")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        n_tokens = n_tokens.clone()
        dist.all_reduce(n_tokens)
    # no masked token anywhere: 0 with a gradient path (sum of no terms), never 0/0
    return total * world / n_tokens.clamp_min(1)


def bbox_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1, GIoU) losses of ``(N, 4)`` normalised (cx, cy, w, h) boxes, averaged over boxes with weight 1.

    ``weight`` ``(N,)`` selects which rows count (e.g. regions, not whole-image captions).
    """
    pred, target = pred.float(), target.float()
    w = torch.ones(pred.shape[0], device=pred.device) if weight is None else weight.float()
    num = w.sum().clamp_min(1.0)
    l1 = (F.l1_loss(pred, target, reduction="none").sum(1) * w).sum() / num
    giou = (paired_giou_loss(pred, target) * w).sum() / num
    return l1, giou


def patch_alignment_loss(scores: torch.Tensor, inside: torch.Tensor, weight: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Cross-entropy between the softmax over patches of text–patch alignment ``scores`` ``(N, P)`` and the
    uniform distribution over the patches the target box covers (``inside`` ``(N, P)``, e.g.
    :func:`models.vision.box_patch_mask` without its [CLS] column); ``weight`` ``(N,)`` as in :func:`bbox_loss`."""
    target = inside.float() / inside.float().sum(1, keepdim=True).clamp_min(1.0)
    per_row = -(target * scores.float().log_softmax(-1)).sum(1)
    w = torch.ones_like(per_row) if weight is None else weight.float()
    return (per_row * w).sum() / w.sum().clamp_min(1.0)
