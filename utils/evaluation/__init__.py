"""Shared evaluation, one module per job (``retrieval``, ``grounding``, ``winoground``, ``nlvr``, ``videoqa``,
``zero_shot``; ``ranking`` and ``loop`` serve them). Image-text retrieval (ITC, then ITM re-ranking of the top k)
and box grounding below in detail.

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
  its defaults: ``configs/defaults.yaml``), keys prefixed ``retrieval/`` and ``grounding/``.

All values are percentages in [0, 100]. Long loops show a tqdm progress bar on rank 0 when stderr is a terminal
(:func:`progress_bar`; ``TQDM_DISABLE=1`` in the environment turns the bars off).
"""
from utils.evaluation.grounding import evaluate_grounding, grounding_chance, predict_grounding
from utils.evaluation.loop import evaluating, progress_bar
from utils.evaluation.nlvr import nlvr_metrics, predict_nlvr
from utils.evaluation.ranking import (
    KS,
    RANK_CHUNK,
    first_positive_rank,
    positives_matrix,
    rank_order,
    recall_metrics,
    retrieval_chance,
)
from utils.evaluation.retrieval import evaluate_retrieval, itm_pair_scorer, rerank, retrieval_scores
from utils.evaluation.videoqa import predict_video_qa, videoqa_metrics
from utils.evaluation.winoground import (
    WINOGROUND_CHANCE,
    evaluate_winoground,
    winoground_metrics,
    winoground_scores,
)
from utils.evaluation.zero_shot import eval_settings, format_results, zero_shot_eval

__all__ = ["KS", "RANK_CHUNK", "WINOGROUND_CHANCE", "eval_settings", "evaluate_grounding", "evaluate_retrieval",
           "evaluate_winoground", "evaluating", "first_positive_rank", "format_results", "grounding_chance",
           "itm_pair_scorer", "nlvr_metrics", "positives_matrix", "predict_grounding", "predict_nlvr",
           "predict_video_qa", "progress_bar", "rank_order", "recall_metrics", "rerank", "retrieval_chance",
           "retrieval_scores", "videoqa_metrics", "winoground_metrics", "winoground_scores", "zero_shot_eval"]
