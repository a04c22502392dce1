"""Fine-tune and evaluate X²-VLM on NLVR2 (is the sentence true of the image pair?).

    python run.py --task nlvr --dist 8 --config configs/finetune/nlvr2.yaml --checkpoint x2vlm_base_1b.th \\
        --output_dir output/nlvr2
    python NLVR.py --config configs/finetune/nlvr_demo.yaml --device cpu          # tiny model, generated data

Annotations: ``[{images: [left, right], sentence, label}]`` (``data.finetune.{train,val,test}_file``).
Writes ``output_dir/model.safetensors`` after training and ``output_dir/nlvr.json`` with the accuracy
(``{split}/acc``, %) and the majority-class rate (``{split}/majority``) of every split that has a file.
"""
from __future__ import annotations

from dataset import create_dataset, create_loader
from dataset.collate import TokenizeCollate
from dataset.tasks import collate_dict
from models.nlvr import X2VLMForNLVR
from utils.evaluation.nlvr import nlvr_metrics, predict_nlvr
from utils.task import build_model, gather_unique, setup_task, task_parser, train_task, write_results


def evaluate(ctx, model: X2VLMForNLVR, collate) -> dict[str, float]:
    """Accuracy on every non-empty ``data.finetune.{val,test}_file`` (each rank predicts a share)."""
    cfg, ft = ctx.cfg, ctx.cfg["data"]["finetune"]
    rank, world = ctx.dist.rank, ctx.dist.world_size
    results: dict = {}
    for split in ("val", "test"):
        if not ft[f"{split}_file"]:
            continue
        data = create_dataset("nlvr2", cfg, split, ctx.tokenizer, rank, world)
        loader = create_loader(data, ft["batch_size_test"], collate, cfg["data"]["num_workers"], False, rank, world)
        preds, labels = predict_nlvr(model, loader, ctx.dist.device)
        records = [{"index": i, "pred": p, "label": t}
                   for i, p, t in zip(loader.sampler, preds, labels, strict=True)]
        records = sorted(gather_unique(records, "index"), key=lambda r: r["index"])
        for key, value in nlvr_metrics([r["pred"] for r in records], [r["label"] for r in records]).items():
            results[f"{split}/{key}"] = value
    return results


def main(argv: list[str] | None = None) -> dict:
    args = task_parser(__doc__, "configs/finetune/nlvr2.yaml").parse_args(argv)
    ctx = setup_task(args)
    collate = TokenizeCollate(collate_dict, ctx.tokenizer, ctx.cfg["data"]["max_tokens"], {"text": "text"})
    model = build_model(ctx, X2VLMForNLVR)
    train_task(ctx, model, "nlvr2", collate, evaluate=lambda: evaluate(ctx, model, collate))
    results = evaluate(ctx, model, collate)
    write_results(ctx, "nlvr", results)
    return results


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
