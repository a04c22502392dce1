"""The zero-shot evaluation at the end of pretraining (retrieval and grounding on the ``eval`` files) and the
one-line-per-metric report."""
from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from utils.config import load_defaults
from utils.evaluation.grounding import evaluate_grounding
from utils.evaluation.loop import dist_ready, world_of
from utils.evaluation.retrieval import evaluate_retrieval


def eval_settings(cfg: dict) -> dict[str, Any]:
    """The ``eval`` section of ``cfg`` over its defaults in ``configs/defaults.yaml`` (the one place they live; a
    config from :func:`utils.config.load_config` has them all already), file lists as lists, ``num_workers``
    null → ``data.num_workers``; a key the defaults do not have is an error."""
    defaults = load_defaults()["eval"]
    section = cfg.get("eval") or {}
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise ValueError(f"unknown eval config key(s): {', '.join(unknown)}; known: {', '.join(defaults)}")
    out = {**defaults, **section}
    for key in ("retrieval_file", "grounding_file"):
        files = out[key]
        out[key] = [files] if isinstance(files, str) else list(files or [])
    if out["num_workers"] is None:
        out["num_workers"] = int(cfg["data"]["num_workers"])
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
            ds = Subset(ds, range(rank, len(cast(Sized, ds)), world))  # a map-style dataset (torch: no __len__)
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
