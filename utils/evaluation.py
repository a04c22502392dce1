"""Shared evaluation: image-text retrieval (ITC, then ITM re-ranking of the top k) and box grounding.

Used by the task scripts (retrieval, grounding) and by the end-of-pretraining zero-shot evaluation.

* :func:`evaluate_retrieval` — embeds every image and text of a :class:`~dataset.tasks.RetrievalEvalDataset`
  loader, ranks by ITC similarity, then (``itm_rerank``) re-scores each query's ``k_test`` best candidates
  with the ITM head. As in the official evaluation, a re-ranked score is the ITM *match logit* (index 1, no
  softmax, no ITC term); candidates outside a query's top k rank below all re-scored ones (we keep them in
  ITC order, the official code gives them all -100, a tie). Keys ``txt_r{1,5,10}`` (image → text),
  ``img_r{1,5,10}`` (text → image), ``txt_r_mean``, ``img_r_mean``, ``r_mean`` for the final scores and the
  same with an ``itc_`` prefix for similarity-only ranking, plus ``chance_*`` (a random ranking's recall).

  **Scores and ties.** Similarities and ITM logits are float32 whatever the model's dtype (a bf16 model's
  logits are cast before they enter the score matrix; the ITC product is taken in float32, outside autocast).
  Every ranking — the ITC top-k selection of the candidates to re-rank and the rank of the positive in recall
  — is a stable descending sort (:func:`rank_order`): **among equal scores the candidate with the lower index
  (its order in the evaluation file: text order for image → text, image order for text → image) ranks
  first.** The official code (``np.argsort(score)[::-1]``, ``topk``) leaves the order of ties to the sort
  algorithm, which moved R@1 by up to a point between equivalent orderings of bf16 scores.
* :func:`evaluate_grounding` — one box per referring expression from whole-image tokens; ``acc`` = percent
  with IoU ≥ 0.5, ``miou`` = mean IoU in percent, ``chance_acc`` / ``chance_miou`` = the better constant box
  (the whole image, or a centred box of the mean target size).
* :func:`evaluate_winoground` — Winoground text / image / group scores of caption-image pairs
  ``{image_0, image_1, caption_0, caption_1}`` from the ITM match probability (or ITC similarity), with
  their chance levels (25, 25, 16.67).
* :func:`zero_shot_eval` — retrieval and grounding, from the config section ``eval`` (see
  :data:`EVAL_DEFAULTS`), keys prefixed ``retrieval/`` and ``grounding/``.

All values are percentages in [0, 100]. Long loops show a tqdm progress bar on rank 0 when stderr is a terminal
(:func:`progress_bar`; ``TQDM_DISABLE=1`` in the environment turns the bars off).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from utils.box_ops import paired_iou, xywh_pixels_to_cxcywh
from utils.metrics import box_accuracy

#: Keys of the config section ``eval`` and their defaults (the section may be absent: nothing is evaluated).
EVAL_DEFAULTS: dict[str, Any] = {
    "retrieval_file": [],      # retrieval test file(s): [{image, caption: [str, ...]}]; empty: skipped
    "grounding_file": [],      # grounding file(s): [{image, text, bbox: [x, y, w, h], ref_id optional}]; empty: skipped
    "k_test": 128,             # candidates re-ranked by ITM per query (clamped to the number of candidates)
    "itm_rerank": True,        # false: ITC similarity only
    "batch_size": 64,          # images per batch
    "text_batch_size": 256,    # texts per text-encoder pass
    "itm_batch_size": 256,     # image-text pairs per ITM forward pass while re-ranking
    "num_workers": None,       # DataLoader workers (null: data.num_workers)
    "caption_tokenizer": "ptb",  # Captioning.py scoring: ptb (COCO's, runs java) or simple (utils/caption_metrics.py)
}

KS = (1, 5, 10)


# ---------------------------------------------------------------------------------------------- helpers
def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP / DeepSpeed / compile wrapper."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    return model


def _world(dist_info) -> tuple[int, int]:
    if dist_info is None:
        return 0, 1
    return int(dist_info.rank), int(dist_info.world_size)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _tokenize(tokenizer, texts: Sequence[str], max_tokens: int, device, padding: str = "max_length"):
    """``(ids, atts)`` on ``device`` from a Hugging Face tokenizer (or any callable with its interface)."""
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _encode_visual(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image tokens; ``(B, T, 3, H, W)`` inputs are videos. Pixels take the model's dtype (a model
    held in bf16, as under DeepSpeed, gets bf16 inputs)."""
    pixels = pixels.to(next(model.parameters()).dtype)
    if pixels.ndim == 5:
        return model.encode_video(pixels)
    return model.encode_image(pixels)


def progress_bar(iterable, desc: str, total: int | None = None):
    """``iterable`` with a tqdm bar: rank 0 only, only when stderr is a terminal (tqdm's ``disable=None``), and
    never with ``TQDM_DISABLE=1`` in the environment. The values pass through unchanged."""
    from tqdm import tqdm
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return iterable
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return iterable
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


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


def _shard(n: int, rank: int, world: int) -> range:
    """Contiguous rows of ``n`` handled by ``rank`` (as the official loop: ``n // world + 1`` per rank)."""
    step = n // world + 1
    return range(min(n, rank * step), min(n, (rank + 1) * step))


# ---------------------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def _embed_retrieval(model, loader, tokenizer, device, max_tokens: int, text_batch_size: int):
    dataset = loader.dataset
    texts = list(dataset.text)
    if not texts:
        raise ValueError("retrieval evaluation: the dataset has no texts")
    text_embeds, text_atts, text_feats = [], [], []
    for start in progress_bar(range(0, len(texts), text_batch_size), "embed texts"):
        ids, atts = _tokenize(tokenizer, texts[start:start + text_batch_size], max_tokens, device)
        emb = model.encode_text(ids, atts)
        text_embeds.append(emb)
        text_atts.append(atts)
        text_feats.append(model.text_features(emb))
    n_images = len(dataset)
    image_embeds = image_atts = image_feats = None
    seen = torch.zeros(n_images, dtype=torch.bool)
    for batch in progress_bar(loader, "embed images"):
        index = torch.as_tensor(batch["index"]).long()
        emb, atts = _encode_visual(model, batch["image"].to(device))
        feat = model.image_features(emb)
        if image_embeds is None:
            image_embeds = emb.new_zeros((n_images, *emb.shape[1:]))
            image_atts = atts.new_zeros((n_images, *atts.shape[1:]))
            image_feats = feat.new_zeros((n_images, feat.shape[1]))
        dev_index = index.to(device)
        image_embeds[dev_index], image_atts[dev_index], image_feats[dev_index] = emb, atts, feat
        seen[index] = True
    if not bool(seen.all()):
        raise ValueError(f"retrieval evaluation needs every image: the loader gave {int(seen.sum())} of "
                         f"{n_images} (pass an unsharded loader; the re-ranking is sharded instead)")
    return (image_embeds, image_atts, image_feats,
            torch.cat(text_embeds), torch.cat(text_atts), torch.cat(text_feats))


@torch.no_grad()
def _rerank(sims: torch.Tensor, k: int, rows: range,
            pair_scores: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pair_batch: int,
            queries_are_images: bool) -> torch.Tensor:
    """Float32 scores ``(Q, C)``: rows outside ``rows`` are 0 (other ranks fill them); in ``rows``, the top
    ``k`` candidates by similarity (:func:`rank_order`: among equal similarities the lower index is taken)
    get ``pair_scores(image_ids, text_ids)`` cast to float32, and the others rank below all of them in that
    same similarity order: the candidate at similarity rank ``k + j`` gets ``lowest ITM score - 1 - j``
    (distinct values, so no new ties). Pairs are scored in batches of ``pair_batch`` sorted by image, so
    that a batch holds few distinct images (their fusion keys/values are projected once per batch)."""
    out = torch.zeros(sims.shape, dtype=torch.float32, device=sims.device)
    if len(rows) == 0:
        return out
    block = sims[rows.start:rows.stop].float()
    part = out[rows.start:rows.stop]
    below = -torch.arange(1, sims.shape[1] - k + 1, dtype=torch.float32, device=sims.device)
    top = torch.empty(len(rows), k, dtype=torch.long, device=sims.device)
    for start in range(0, len(rows), RANK_CHUNK):
        order = rank_order(block[start:start + RANK_CHUNK])
        top[start:start + RANK_CHUNK] = order[:, :k]
        part[start:start + RANK_CHUNK].scatter_(1, order[:, k:], below.expand(order.shape[0], -1))
    query = torch.arange(rows.start, rows.stop, device=sims.device).repeat_interleave(k)
    cand = top.flatten()
    image_ids, text_ids = (query, cand) if queries_are_images else (cand, query)
    order = torch.argsort(image_ids, stable=True)
    scores = torch.empty(query.numel(), dtype=torch.float32, device=sims.device)
    for start in progress_bar(range(0, order.numel(), pair_batch), "ITM re-rank"):
        sel = order[start:start + pair_batch]
        scores[sel] = pair_scores(image_ids[sel], text_ids[sel]).float()
    scores = scores.view(len(rows), k)
    part += scores.min(1, keepdim=True).values  # the others: lowest ITM score - 1, - 2, ... in ITC order
    part.scatter_(1, top, scores)
    return out


def itm_pair_scorer(model: nn.Module, image_embeds: torch.Tensor, image_atts: torch.Tensor,
                    text_embeds: torch.Tensor, text_atts: torch.Tensor
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(image_ids, text_ids) -> (P,)`` float32 ITM match logits of the pairs (a bf16 model's logits are
    cast, so the score matrix is float32 whatever the model's dtype); each distinct image of a call is fused
    once (``image_index``), not once per pair."""
    def pair_scores(image_ids: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(image_ids, return_inverse=True)
        logits = model.itm_logits(image_embeds[unique], image_atts[unique], text_embeds[text_ids],
                                  text_atts[text_ids], image_index=inverse)
        return logits[:, 1].float()
    return pair_scores


@torch.no_grad()
def retrieval_scores(model: nn.Module, loader, device, k_test: int, itm_rerank: bool = True, dist_info=None, *,
                     tokenizer, max_tokens: int = 30, text_batch_size: int = 256, itm_batch_size: int = 256,
                     all_reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sims, scores_i2t, scores_t2i)``: ITC similarity ``(I, T)`` and the final image→text ``(I, T)`` and
    text→image ``(T, I)`` scores (``sims`` / ``sims.t()`` without ``itm_rerank``), all float32: the similarity
    is the product of the ITC features cast to float32 (autocast off), the re-ranked scores are float32 ITM
    logits (:func:`_rerank`; its top k ties go to the lower index). With ``dist_info`` of ``world_size`` > 1
    each rank re-ranks its share of the queries, then the matrices are summed over ranks
    (``all_reduce=False`` returns this rank's partial matrices: zero rows for the other ranks' queries)."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    try:
        img_emb, img_atts, img_feat, txt_emb, txt_atts, txt_feat = _embed_retrieval(
            model, loader, tokenizer, device, max_tokens, text_batch_size)
        with torch.autocast(img_feat.device.type, enabled=False):  # fp32 even under an enclosing autocast
            sims = img_feat.float() @ txt_feat.float().t()
        if not itm_rerank:
            return sims, sims, sims.t().contiguous()
        rank, world = _world(dist_info)
        n_img, n_txt = sims.shape
        pair_scores = itm_pair_scorer(model, img_emb, img_atts, txt_emb, txt_atts)
        score_i2t = _rerank(sims, min(k_test, n_txt), _shard(n_img, rank, world), pair_scores, itm_batch_size,
                            queries_are_images=True)
        score_t2i = _rerank(sims.t().contiguous(), min(k_test, n_img), _shard(n_txt, rank, world), pair_scores,
                            itm_batch_size, queries_are_images=False)
        if world > 1 and all_reduce:
            if not _dist_ready():
                raise RuntimeError(f"dist_info says world_size={world} but no process group is initialised")
            dist.all_reduce(score_i2t, op=dist.ReduceOp.SUM)
            dist.all_reduce(score_t2i, op=dist.ReduceOp.SUM)
        return sims, score_i2t, score_t2i
    finally:
        model.train(was_training)


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


def evaluate_retrieval(model: nn.Module, loader, device, k_test: int, itm_rerank: bool = True, dist_info=None, *,
                       tokenizer, max_tokens: int = 30, text_batch_size: int = 256,
                       itm_batch_size: int = 256) -> dict[str, float]:
    """Retrieval recall on a :class:`~dataset.tasks.RetrievalEvalDataset` loader (every image, in any order;
    items carry ``index``). Returns the final (re-ranked when ``itm_rerank``) ``txt_r*``, ``img_r*``,
    ``r_mean`` keys, the ITC-only ones prefixed ``itc_``, and the chance levels prefixed ``chance_``.

    ``tokenizer`` (HF-style, called with ``padding="max_length"``) turns ``loader.dataset.text`` into ids.
    Every rank must call this with the same full loader; the ITM loop is split by ``dist_info`` rank."""
    sims, s_i2t, s_t2i = retrieval_scores(
        model, loader, device, k_test, itm_rerank, dist_info, tokenizer=tokenizer, max_tokens=max_tokens,
        text_batch_size=text_batch_size, itm_batch_size=itm_batch_size)
    positives = positives_matrix(loader.dataset.txt2img, sims.shape[0])
    out = recall_metrics(s_i2t, s_t2i, positives)
    out |= recall_metrics(sims, sims.t(), positives, prefix="itc_")
    out |= retrieval_chance(positives)
    return out


# ---------------------------------------------------------------------------------------------- grounding
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


@torch.no_grad()
def predict_grounding(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` normalised (cx, cy, w, h) boxes ``(N, 4)`` of this process's share of the loader
    (batches with ``image``, ``text``, ``bbox`` in pixels [x, y, w, h] and ``image_size`` (W, H))."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    preds, targets = [], []
    try:
        for batch in progress_bar(loader, "grounding"):
            if "bbox" not in batch:
                raise ValueError("grounding evaluation needs ground-truth boxes ('bbox') in the annotation file")
            image_embeds, _ = model.encode_image(batch["image"].to(device))
            ids, atts = _tokenize(tokenizer, batch["text"], max_tokens, device, padding="longest")
            text_embeds = model.encode_text(ids, atts)
            preds.append(model.predict_boxes(image_embeds, text_embeds, atts).float().cpu())
            targets.append(xywh_pixels_to_cxcywh(batch["bbox"], batch["image_size"]).cpu())
    finally:
        model.train(was_training)
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
    _, world = _world(dist_info)
    if world > 1:
        if not _dist_ready():
            raise RuntimeError(f"dist_info says world_size={world} but no process group is initialised")
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (pred, target))
        pred = torch.cat([p for p, _ in gathered])
        target = torch.cat([t for _, t in gathered])
    if pred.shape[0] == 0:
        raise ValueError("grounding evaluation: the loader gave no samples")
    return {"acc": box_accuracy(pred, target), "miou": float(paired_iou(pred, target).mean() * 100),
            **grounding_chance(target)}


# ---------------------------------------------------------------------------------------------- winoground
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


@torch.no_grad()
def winoground_scores(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30, score: str = "itm"
                      ) -> torch.Tensor:
    """``(N, 2, 2)`` caption × image scores of a loader of ``{image_0, image_1, caption_0, caption_1}`` batches
    (pixels ``(B, 3, H, W)``, caption lists). ``score``: ``itm`` — the ITM head's match probability (softmax
    over the two logits) of each of the four pairs; ``itc`` — the cosine similarity of the ITC features."""
    if score not in ("itm", "itc"):
        raise ValueError(f"winoground score must be 'itm' or 'itc', got {score!r}")
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in progress_bar(loader, "winoground"):
            images = [_encode_visual(model, batch[f"image_{i}"].to(device)) for i in (0, 1)]
            texts = []
            for c in (0, 1):
                ids, atts = _tokenize(tokenizer, batch[f"caption_{c}"], max_tokens, device, padding="longest")
                texts.append((model.encode_text(ids, atts), atts))
            block = torch.empty(len(batch["caption_0"]), 2, 2)
            for c, (t_emb, t_atts) in enumerate(texts):
                for i, (v_emb, v_atts) in enumerate(images):
                    if score == "itm":
                        value = model.itm_logits(v_emb, v_atts, t_emb, t_atts).float().softmax(-1)[:, 1]
                    else:
                        value = (model.image_features(v_emb) * model.text_features(t_emb)).sum(-1)
                    block[:, c, i] = value.float().cpu()
            out.append(block)
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2, 2)


def evaluate_winoground(model: nn.Module, loader, device, *, tokenizer, max_tokens: int = 30,
                        score: str = "itm") -> dict[str, float]:
    """:func:`winoground_metrics` of :func:`winoground_scores` (one process; the sets are small)."""
    return winoground_metrics(winoground_scores(model, loader, device, tokenizer=tokenizer,
                                                max_tokens=max_tokens, score=score))


# ---------------------------------------------------------------------------------------------- zero-shot
def eval_settings(cfg: dict) -> dict[str, Any]:
    """The ``eval`` section merged over :data:`EVAL_DEFAULTS` (unknown keys are an error)."""
    section = cfg.get("eval") or {}
    unknown = sorted(set(section) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown eval config key(s): {', '.join(unknown)}; known: {', '.join(EVAL_DEFAULTS)}")
    out = {**EVAL_DEFAULTS, **section}
    for key in ("retrieval_file", "grounding_file"):
        files = out[key]
        out[key] = [files] if isinstance(files, str) else list(files or [])
    if out["num_workers"] is None:
        out["num_workers"] = int(cfg.get("data", {}).get("num_workers", 0))
    return out


def _dist_info_from_env():
    if not _dist_ready():
        return None
    from utils.dist import DistInfo
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def zero_shot_eval(cfg: dict, model: nn.Module, tokenizer, device, dist_info=None) -> dict[str, float]:
    """Retrieval and grounding on the ``eval`` files of ``cfg`` (each skipped when its file list is empty).

    Keys ``retrieval/<evaluate_retrieval key>`` and ``grounding/<evaluate_grounding key>``, chance levels
    included (``retrieval/chance_txt_r1``, ``grounding/chance_acc``, ...). Under torch.distributed every rank
    must call it (``dist_info`` defaults to the initialised process group); every rank gets the same result."""
    from dataset import collate_for, create_dataset, create_loader

    e = eval_settings(cfg)
    dist_info = dist_info if dist_info is not None else _dist_info_from_env()
    rank, world = _world(dist_info)
    max_tokens = int(cfg["data"]["max_tokens"])
    results: dict[str, float] = {}
    if e["retrieval_file"]:
        ds = create_dataset("retrieval", cfg, e["retrieval_file"], tokenizer)
        loader = create_loader(ds, e["batch_size"], collate_for("retrieval"), e["num_workers"], training=False)
        metrics = evaluate_retrieval(model, loader, device, int(e["k_test"]), bool(e["itm_rerank"]), dist_info,
                                     tokenizer=tokenizer, max_tokens=max_tokens,
                                     text_batch_size=int(e["text_batch_size"]),
                                     itm_batch_size=int(e["itm_batch_size"]))
        results |= {f"retrieval/{k}": v for k, v in metrics.items()}
    if e["grounding_file"]:
        ds = create_dataset("grounding", cfg, e["grounding_file"], tokenizer)
        if world > 1:  # every rank a strided share, without the padding a DistributedSampler would add
            ds = Subset(ds, range(rank, len(ds), world))
        loader = create_loader(ds, e["batch_size"], collate_for("grounding"), e["num_workers"], training=False)
        metrics = evaluate_grounding(model, loader, device, tokenizer=tokenizer, max_tokens=max_tokens,
                                     dist_info=dist_info)
        results |= {f"grounding/{k}": v for k, v in metrics.items()}
    return results


def format_results(results: dict[str, float]) -> str:
    """One line per metric with its chance level where there is one, e.g. ``retrieval/r_mean 41.20 (chance 8.31)``."""
    lines = []
    for key, value in results.items():
        group, _, name = key.rpartition("/")
        if name.startswith("chance_"):
            continue
        base = name.removeprefix("itc_")
        chance = results.get(f"{group}/chance_{base}" if group else f"chance_{base}")
        lines.append(f"{key} {value:.2f}" + (f" (chance {chance:.2f})" if chance is not None else ""))
    return "\n".join(lines)


__all__ = ["EVAL_DEFAULTS", "evaluate_retrieval", "evaluate_grounding", "zero_shot_eval", "retrieval_scores",
           "recall_metrics", "retrieval_chance", "grounding_chance", "positives_matrix", "predict_grounding",
           "eval_settings", "format_results", "winoground_metrics",
           "winoground_scores", "evaluate_winoground", "WINOGROUND_CHANCE", "progress_bar", "rank_order",
           "first_positive_rank"]
