"""Referring-expression grounding (RefCOCO+): fine-tune the bbox head (L1 + GIoU) on the fusion [CLS] of the
whole image and the expression (FIBER: on the fused image patches, plus its alignment loss), then score accuracy
(IoU >= 0.5) on each evaluation file.

    python Grounding.py --config configs/finetune/grounding_demo.yaml                    # CPU demo
    python run.py --task grounding --dist 8 --config configs/finetune/grounding_refcoco_plus.yaml \\
        --checkpoint x2vlm_large_4m.th --output_dir out/refcoco+
    python Grounding.py --config configs/finetune/grounding_refcoco_plus.yaml \\
        --checkpoint out/refcoco+/model.safetensors --evaluate

Every file of ``data.finetune.val_file`` and ``test_file`` is one split, named after the end of its file
name (``grounding_testA.json`` → ``testA``); ``output_dir/grounding.json`` holds ``<split>/acc``,
``<split>/miou`` and the constant-box chance levels ``<split>/chance_acc``, ``<split>/chance_miou``.
"""
from __future__ import annotations

from pathlib import Path
from typing import cast

from torch.utils.data import Subset

from dataset import collate_for, create_dataset, create_loader
from dataset.collate import TokenizeCollate
from dataset.tasks import GroundingDataset
from models.grounding import X2VLMForGrounding
from utils.evaluation import evaluate_grounding
from utils.task import build_model, finish, setup_task, task_parser, train_task


def split_names(files: list[str]) -> list[str]:
    """``.../grounding_testA.json`` → ``testA``; the whole stem where two files would share a name."""
    short = [Path(f).stem.rsplit("_", 1)[-1] for f in files]
    return [s if short.count(s) == 1 else Path(f).stem for s, f in zip(short, files, strict=True)]


def evaluate(ctx, model) -> dict[str, float]:
    cfg, ft = ctx.cfg, ctx.cfg["data"]["finetune"]
    files = [f for key in ("val_file", "test_file")
             for f in ([ft[key]] if isinstance(ft[key], str) else ft[key] or [])]
    results: dict[str, float] = {}
    rank, world = ctx.dist.rank, ctx.dist.world_size
    for name, file in zip(split_names(files), files, strict=True):
        whole = cast(GroundingDataset, create_dataset("grounding", cfg, [file], ctx.tokenizer))
        # a strided share per rank, no padding; evaluate_grounding gathers the predictions
        ds = Subset(whole, range(rank, len(whole), world)) if world > 1 else whole
        loader = create_loader(ds, ft["batch_size_test"], collate_for("grounding"), cfg["data"]["num_workers"],
                               training=False)
        metrics = evaluate_grounding(model, loader, ctx.dist.device, tokenizer=ctx.tokenizer,
                                     max_tokens=cfg["data"]["max_tokens"], dist_info=ctx.dist)
        results |= {f"{name}/{k}": v for k, v in metrics.items()}
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    ctx = setup_task(task_parser(__doc__, "configs/finetune/grounding_demo.yaml").parse_args(argv))
    cfg = ctx.cfg
    model = build_model(ctx, X2VLMForGrounding)
    collate = TokenizeCollate(collate_for("grounding"), ctx.tokenizer, cfg["data"]["max_tokens"], {"text": "text"})
    train_task(ctx, model, "grounding", collate, evaluate=lambda: evaluate(ctx, model))
    results = evaluate(ctx, model)
    return finish(ctx, "grounding", results)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
