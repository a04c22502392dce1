"""What every downstream task script shares: arguments, set-up, fine-tuning over the shared trainer (epochs,
exact resume with the data position), the final weights, and writing results."""
from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dataset import load_tokenizer
from dataset.sampling import EpochStream
from models.checkpoint import save_checkpoint_weights
from models.x2vlm import X2VLM
from utils.config import add_config_args, config_from_args, save_config
from utils.dist import DistInfo, init_distributed
from utils.train_state import write_json_atomic
from utils.trainer import Trainer

ModelT = TypeVar("ModelT", bound=X2VLM)


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

    def save_config(self) -> None:
        """Write ``output_dir/config.yaml`` as the config now stands (rank 0), after a script derived values
        (``train.steps`` from ``train.epochs``, video QA's ``model.num_answers``): the saved config is the one
        that runs. Not while a ``--resume`` is pending: :meth:`utils.trainer.Trainer.resume` writes it once the
        checkpoint fits."""
        if self.dist.is_main and not getattr(self.args, "resume", None):
            save_config(self.cfg, self.output_dir)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_task(args: argparse.Namespace) -> TaskContext:
    """Config (file + overrides + command-line options), process group, seeds, tokenizer; rank 0 saves the config
    (with ``--resume``: :meth:`utils.trainer.Trainer.resume` does, once the checkpoint fits)."""
    cfg = config_from_args(args)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if getattr(args, "checkpoint", None):
        cfg["model"]["checkpoint"] = args.checkpoint
    dist_info = init_distributed(args.device or cfg["train"]["device"], timeout=cfg["train"]["dist_timeout"])
    seed_everything(cfg["seed"] + dist_info.rank)
    ctx = TaskContext(cfg, dist_info, load_tokenizer(cfg), Path(cfg["output_dir"]), args)
    ctx.save_config()  # again where a script derives values (TaskContext.save_config)
    return ctx


def report_weights(model: nn.Module, is_main: bool, output_dir: str | Path) -> None:
    """Rank 0: print one line per source of the model's weights (vision weights, text-encoder swap, checkpoint)
    and write every key of those reports to ``output_dir/load_report.txt``."""
    reports = [r for r in (getattr(model, name, None) for name in ("init_report", "swap_report", "load_report"))
               if r is not None]
    if not is_main or not reports:
        return
    for report in reports:
        print(report.summary())
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_report.txt").write_text("\n\n".join(str(r) for r in reports) + "\n", encoding="utf-8")


def build_model(ctx: TaskContext, cls: type[ModelT]) -> ModelT:
    """``cls.from_config(ctx.cfg)`` (a checkpoint that does not fit stops here: ``model.allow_partial_load``),
    then :func:`report_weights`."""
    model = cls.from_config(ctx.cfg)
    report_weights(model, ctx.dist.is_main, ctx.output_dir)
    return model


def steps_for_epochs(cfg: dict, batches_per_epoch: int) -> int:
    """``train.steps``, or, when ``train.epochs`` > 0, the optimiser steps that many epochs take."""
    epochs = cfg["train"]["epochs"] or 0
    if epochs <= 0:
        return int(cfg["train"]["steps"])
    return max(1, math.ceil(epochs * batches_per_epoch / cfg["train"]["grad_accum"]))


def finetune(ctx: TaskContext, model: nn.Module, train_loader: DataLoader,
             evaluate: Callable[[], dict[str, float]] | None = None) -> Trainer:
    """Train ``model`` (its forward returns ``{"loss": ..., ...}``) on ``train_loader`` with the shared trainer.

    Parameters no checkpoint reached (``model.fresh_parameters``) get ``optimizer.lr_mult``; the data
    position is checkpointed, so ``--resume`` continues at the exact batch. With ``train.eval_every_epoch``
    and an ``evaluate`` callable, training stops at every epoch end (a step checkpoint is written there),
    ``evaluate()`` runs on every rank and its metrics are logged; with ``train.best_metric`` the best epoch's
    weights go to ``output_dir/best/model.safetensors`` (its record to ``best.json``) and are loaded back into
    ``model`` when training ends, as the official recipes report the best epoch. Returns the trainer.
    """
    train_cfg = ctx.cfg["train"]
    train_cfg["steps"] = steps_for_epochs(ctx.cfg, len(train_loader))
    ctx.save_config()
    trainer = Trainer(ctx.cfg, model, ctx.dist, fresh_params=getattr(model, "fresh_parameters", None))
    stream = EpochStream(train_loader, "train")
    trainer.track_data(stream)
    trainer.resume(ctx.args.resume)
    if evaluate is None or not train_cfg.get("eval_every_epoch"):
        trainer.fit(lambda start: stream)
        return trainer
    per_epoch = max(1, math.ceil(len(train_loader) / train_cfg["grad_accum"]))
    tracker = BestTracker(ctx, train_cfg["best_metric"], train_cfg["best_mode"])
    while trainer.step < train_cfg["steps"]:
        stop = min(train_cfg["steps"], (trainer.step // per_epoch + 1) * per_epoch)
        trainer.fit(lambda start: stream, stop_after=stop)
        metrics = evaluate()
        epoch = math.ceil(trainer.step / per_epoch)
        trainer.log({"event": "epoch_eval", "epoch": epoch, "step": trainer.step, **metrics})
        tracker.update(model, epoch, trainer.step, metrics, trainer.engine.export_weights)
    tracker.restore_best(model)
    return trainer


class BestTracker:
    """Keeps the weights of the epoch with the best ``metric`` (``mode`` max or min) under ``output_dir/best``."""

    def __init__(self, ctx: TaskContext, metric: str | None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"train.best_mode must be 'max' or 'min', got {mode!r}")
        self.ctx, self.metric, self.sign = ctx, metric, 1.0 if mode == "max" else -1.0
        self.record_path = ctx.output_dir / "best.json"
        self.best = json.loads(self.record_path.read_text()) if metric and self.record_path.exists() else None

    def update(self, model: nn.Module, epoch: int, step: int, metrics: dict[str, float],
               export: Callable[[], dict[str, torch.Tensor] | None] = lambda: None) -> bool:
        """Save ``model`` if ``metrics[metric]`` beats the best so far (``export``: the training engine's
        :meth:`~utils.engine.TrainEngine.export_weights`); True if it did."""
        if not self.metric:
            return False
        if self.metric not in metrics:
            raise KeyError(f"train.best_metric '{self.metric}' is not among the evaluation's metrics: "
                           f"{', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if self.best is not None and self.sign * value <= self.sign * float(self.best["value"]):
            return False
        self.best = {"metric": self.metric, "value": value, "epoch": epoch, "step": step, "metrics": metrics}
        if self.ctx.dist.is_main:
            save_checkpoint_weights(model, self.ctx.output_dir / "best", export())
            write_json_atomic(self.record_path, self.best)
        return True

    def restore_best(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (every rank reads rank 0's file)."""
        if not self.metric or self.best is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        from models.checkpoint import load_model_checkpoint
        load_model_checkpoint(model, self.ctx.output_dir / "best" / "model.safetensors", strict=True)
        if self.ctx.dist.is_main:
            print(f"best epoch {self.best['epoch']} ({self.metric} = {self.best['value']:.4f}) loaded")


def train_task(ctx: TaskContext, model: nn.Module, task: str, collate,
               evaluate: Callable[[], dict[str, float]] | None = None) -> None:
    """Unless ``--evaluate``: fine-tune ``model`` on the ``task`` dataset's training split (rank-sharded,
    ``data.finetune.batch_size_train``; ``evaluate`` as in :func:`finetune`) and save the final weights; then
    move the model to the device."""
    if not ctx.args.evaluate:
        cfg, d = ctx.cfg, ctx.cfg["data"]
        rank, world = ctx.dist.rank, ctx.dist.world_size
        from dataset import create_dataset, create_loader
        train_set = create_dataset(task, cfg, "train", ctx.tokenizer, rank, world)
        loader = create_loader(train_set, d["finetune"]["batch_size_train"], collate, d["num_workers"], True, rank,
                               world, cfg["seed"])
        trainer = finetune(ctx, model, loader, evaluate)
        save_final_weights(ctx, model, trainer.engine.export_weights())
    model.to(ctx.dist.device)


def save_final_weights(ctx: TaskContext, model: nn.Module, weights: dict[str, torch.Tensor] | None = None
                       ) -> Path | None:
    """``output_dir/model.safetensors`` (rank 0) — loadable with ``--checkpoint`` by every task script; ``weights``
    as in :func:`models.checkpoint.save_checkpoint_weights`."""
    if not ctx.dist.is_main:
        return None
    return save_checkpoint_weights(model, ctx.output_dir, weights)


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
