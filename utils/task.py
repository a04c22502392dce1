"""What every downstream task script shares: arguments, set-up, fine-tuning over the shared trainer (epochs,
exact resume with the data position), the final weights, and writing results."""
from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dataset import load_tokenizer
from dataset.sampling import EpochStream
from models.checkpoint import save_checkpoint_weights
from utils.config import add_config_args, config_from_args, save_config
from utils.dist import DistInfo, init_distributed
from utils.train_state import write_json_atomic
from utils.trainer import Trainer


def task_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    """``--config/--override`` plus the options every task script takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, default_config=default_config)
    p.add_argument("--output_dir", help="where logs, checkpoints, results and the resolved config go")
    p.add_argument("--checkpoint", help="pretrained or fine-tuned weights (ours or an official .th); "
                                        "sets model.checkpoint")
    p.add_argument("--resume", help="'latest' (newest step checkpoint in output_dir) or a checkpoint path")
    p.add_argument("--evaluate", action="store_true", help="evaluate only, no training")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    return p


@dataclass
class TaskContext:
    """The resolved config, the process's place in the job, the tokenizer and the output folder."""

    cfg: dict
    dist: DistInfo
    tokenizer: Any
    output_dir: Path
    args: argparse.Namespace


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_task(args: argparse.Namespace) -> TaskContext:
    """Config (file + overrides + command-line options), process group, seeds, tokenizer; rank 0 saves the config."""
    cfg = config_from_args(args)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if getattr(args, "checkpoint", None):
        cfg["model"]["checkpoint"] = args.checkpoint
    dist_info = init_distributed(args.device or cfg["train"]["device"])
    seed_everything(cfg["seed"] + dist_info.rank)
    if dist_info.is_main:
        save_config(cfg, cfg["output_dir"])
    return TaskContext(cfg, dist_info, load_tokenizer(cfg), Path(cfg["output_dir"]), args)


def steps_for_epochs(cfg: dict, batches_per_epoch: int) -> int:
    """``train.steps``, or, when ``train.epochs`` > 0, the optimiser steps that many epochs take."""
    epochs = cfg["train"].get("epochs", 0) or 0
    if epochs <= 0:
        return int(cfg["train"]["steps"])
    return max(1, math.ceil(epochs * batches_per_epoch / cfg["train"]["grad_accum"]))


def finetune(ctx: TaskContext, model: nn.Module, train_loader: DataLoader) -> Trainer:
    """Train ``model`` (its forward returns ``{"loss": ..., ...}``) on ``train_loader`` with the shared trainer.

    Parameters no checkpoint reached (``model.fresh_parameters``) get ``optimizer.lr_mult``; the data
    position is checkpointed, so ``--resume`` continues at the exact batch. Returns the trainer.
    """
    ctx.cfg["train"]["steps"] = steps_for_epochs(ctx.cfg, len(train_loader))
    trainer = Trainer(ctx.cfg, model, ctx.dist, fresh_params=getattr(model, "fresh_parameters", None))
    stream = EpochStream(train_loader, "train")
    trainer.track_data(stream)
    trainer.resume(ctx.args.resume)
    trainer.fit(lambda start: stream)
    return trainer


def train_task(ctx: TaskContext, model: nn.Module, task: str, collate) -> None:
    """Unless ``--evaluate``: fine-tune ``model`` on the ``task`` dataset's training split (rank-sharded,
    ``data.finetune.batch_size_train``) and save the final weights; then move the model to the device."""
    if not ctx.args.evaluate:
        cfg, d = ctx.cfg, ctx.cfg["data"]
        rank, world = ctx.dist.rank, ctx.dist.world_size
        from dataset import create_dataset, create_loader
        train_set = create_dataset(task, cfg, "train", ctx.tokenizer, rank, world)
        loader = create_loader(train_set, d["finetune"]["batch_size_train"], collate, d["num_workers"], True, rank,
                               world, cfg["seed"])
        finetune(ctx, model, loader)
        save_final_weights(ctx, model)
    model.to(ctx.dist.device)


def save_final_weights(ctx: TaskContext, model: nn.Module) -> Path | None:
    """``output_dir/model.safetensors`` (rank 0) — loadable with ``--checkpoint`` by every task script."""
    if not ctx.dist.is_main:
        return None
    return save_checkpoint_weights(model, ctx.output_dir)


def gather_unique(records: list[dict], key: str) -> list[dict]:
    """Every rank's evaluation records, one per ``record[key]`` (an evaluation sampler pads ranks with
    repeated samples), first occurrence kept, rank order then local order."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    unique: dict = {}
    for r in records:
        unique.setdefault(r[key], r)
    return list(unique.values())


def write_results(ctx: TaskContext, name: str, results: dict[str, Any]) -> Path | None:
    """Print ``results`` and write them as ``output_dir/<name>.json`` (rank 0)."""
    if not ctx.dist.is_main:
        return None
    print(f"{name}: " + json.dumps(results, sort_keys=True))
    return write_json_atomic(ctx.output_dir / f"{name}.json", results)


def finish(ctx: TaskContext, name: str, results: dict[str, float]) -> dict[str, float]:
    """Write ``results`` (:func:`write_results`), print them with chance levels on rank 0, leave the
    process group; returns ``results`` (the task scripts' ``main`` return value)."""
    from utils.dist import cleanup
    from utils.evaluation import format_results
    write_results(ctx, name, results)
    if ctx.dist.is_main:
        print(format_results(results))
    cleanup()
    return results
