"""The zero-shot evaluation at the end of pretraining (retrieval and grounding on the ``eval`` files) and the
one-line-per-metric report."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from utils.evaluation.grounding import evaluate_grounding
from utils.evaluation.loop import dist_ready, world_of
from utils.evaluation.retrieval import evaluate_retrieval

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
    if not dist_ready():
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
    rank, world = world_of(dist_info)
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
