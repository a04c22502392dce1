"""Image-text retrieval: ITC similarity of every image and text, then ITM re-ranking of each query's ``k_test``
best candidates, split over ranks (the scoring rule and tie rule: :mod:`utils.evaluation`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from models.tokens import Tokens
from utils.evaluation import ranking
from utils.evaluation.loop import dist_ready, encode_visual, evaluating, progress_bar, tokenize, world_of
from utils.evaluation.ranking import positives_matrix, rank_order, recall_metrics, retrieval_chance

if TYPE_CHECKING:
    from models.x2vlm import X2VLM


def _shard(n: int, rank: int, world: int) -> range:
    """Contiguous rows of ``n`` handled by ``rank`` (as the official loop: ``n // world + 1`` per rank)."""
    step = n // world + 1
    return range(min(n, rank * step), min(n, (rank + 1) * step))


@torch.no_grad()
def _embed_retrieval(model, loader, tokenizer, device, max_tokens: int, text_batch_size: int):
    dataset = loader.dataset
    texts = list(dataset.text)
    if not texts:
        raise ValueError("retrieval evaluation: the dataset has no texts")
    text_embeds, text_atts, text_feats = [], [], []
    for start in progress_bar(range(0, len(texts), text_batch_size), "embed texts"):
        ids, atts = tokenize(tokenizer, texts[start:start + text_batch_size], max_tokens, device)
        emb = model.encode_text(ids, atts)
        text_embeds.append(emb)
        text_atts.append(atts)
        text_feats.append(model.text_features(emb))
    n_images = len(dataset)
    image_embeds = image_atts = image_feats = None
    seen = torch.zeros(n_images, dtype=torch.bool)
    for batch in progress_bar(loader, "embed images"):
        index = torch.as_tensor(batch["index"]).long()
        emb, atts = encode_visual(model, batch["image"].to(device))
        feat = model.image_features(emb)
        if image_embeds is None or image_atts is None or image_feats is None:  # the first batch (all three)
            image_embeds = emb.new_zeros(n_images)
            image_atts = atts.new_zeros((n_images, *atts.shape[1:]))
            image_feats = feat.new_zeros((n_images, feat.shape[1]))
        dev_index = index.to(device)
        image_embeds[dev_index], image_atts[dev_index], image_feats[dev_index] = emb, atts, feat
        seen[index] = True
    if not bool(seen.all()):
        raise ValueError(f"retrieval evaluation needs every image: the loader gave {int(seen.sum())} of "
                         f"{n_images} (pass an unsharded loader; the re-ranking is sharded instead)")
    return (image_embeds, image_atts, image_feats,
            Tokens.cat(text_embeds), torch.cat(text_atts), torch.cat(text_feats))


@torch.no_grad()
def rerank(sims: torch.Tensor, k: int, rows: range,
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
    for start in range(0, len(rows), ranking.RANK_CHUNK):
        order = rank_order(block[start:start + ranking.RANK_CHUNK])
        top[start:start + ranking.RANK_CHUNK] = order[:, :k]
        part[start:start + ranking.RANK_CHUNK].scatter_(1, order[:, k:], below.expand(order.shape[0], -1))
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


def itm_pair_scorer(model: X2VLM, image_embeds: Tokens, image_atts: torch.Tensor,
                    text_embeds: Tokens, text_atts: torch.Tensor
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


def retrieval_scores(model: nn.Module, loader, device, k_test: int, itm_rerank: bool = True, dist_info=None, *,
                     tokenizer, max_tokens: int = 30, text_batch_size: int = 256, itm_batch_size: int = 256,
                     all_reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sims, scores_i2t, scores_t2i)``: ITC similarity ``(I, T)`` and the final image→text ``(I, T)`` and
    text→image ``(T, I)`` scores (``sims`` / ``sims.t()`` without ``itm_rerank``), all float32: the similarity
    is the product of the ITC features cast to float32 (autocast off), the re-ranked scores are float32 ITM
    logits (:func:`rerank`; its top k ties go to the lower index). With ``dist_info`` of ``world_size`` > 1
    each rank re-ranks its share of the queries, then the matrices are summed over ranks
    (``all_reduce=False`` returns this rank's partial matrices: zero rows for the other ranks' queries)."""
    with evaluating(model) as bare:
        img_emb, img_atts, img_feat, txt_emb, txt_atts, txt_feat = _embed_retrieval(
            bare, loader, tokenizer, device, max_tokens, text_batch_size)
        with torch.autocast(img_feat.device.type, enabled=False):  # fp32 even under an enclosing autocast
            sims = img_feat.float() @ txt_feat.float().t()
        if not itm_rerank:
            return sims, sims, sims.t().contiguous()
        rank, world = world_of(dist_info)
        n_img, n_txt = sims.shape
        pair_scores = itm_pair_scorer(bare, img_emb, img_atts, txt_emb, txt_atts)
        score_i2t = rerank(sims, min(k_test, n_txt), _shard(n_img, rank, world), pair_scores, itm_batch_size,
                           queries_are_images=True)
        score_t2i = rerank(sims.t().contiguous(), min(k_test, n_img), _shard(n_txt, rank, world), pair_scores,
                           itm_batch_size, queries_are_images=False)
    if world > 1 and all_reduce:
        if not dist_ready():
            raise RuntimeError(f"dist_info says world_size={world} but no process group is initialised")
        dist.all_reduce(score_i2t, op=dist.ReduceOp.SUM)
        dist.all_reduce(score_t2i, op=dist.ReduceOp.SUM)
    return sims, score_i2t, score_t2i


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
