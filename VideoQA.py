"""Video question answering (MSRVTT-QA, MSVD-QA) as classification over the answers of ``data.finetune.ans2label``.

    python run.py --task videoqa --dist 8 --config configs/finetune/videoqa_msrvtt.yaml \\
        --checkpoint x2vlm_base_1b.th --output_dir output/msrvtt_qa
    python VideoQA.py --config configs/finetune/videoqa_msvd.yaml --checkpoint output/msvd_qa/model.safetensors \\
        --evaluate
    python VideoQA.py --config configs/finetune/videoqa_demo.yaml         # tiny model, generated videos, CPU

Annotations: JSON-lines ``{video_id, question, answer, question_id?}`` (dataset.tasks.VideoQADataset); frames
per video ``data.videos.frame_len``. Writes ``output_dir/model.safetensors`` after training, and
``output_dir/videoqa.json`` with ``{split}/acc`` (%), ``{split}/chance_acc`` (the commonest answer's rate)
and ``{split}/n`` for every split with a file, plus ``videoqa_{split}_predictions.json``.
"""
from __future__ import annotations

from dataset import create_dataset, create_loader
from dataset.collate import TokenizeCollate
from dataset.io import read_json
from dataset.tasks import collate_dict
from models.videoqa import X2VLMForVideoQA
from utils.evaluation.videoqa import predict_video_qa, videoqa_metrics
from utils.task import build_model, finish, gather_unique, setup_task, task_parser, train_task
from utils.train_state import write_json_atomic


def main(argv: list[str] | None = None) -> dict:
    args = task_parser(__doc__, "configs/finetune/videoqa_demo.yaml").parse_args(argv)
    ctx = setup_task(args)
    cfg, d = ctx.cfg, ctx.cfg["data"]
    ft, rank, world = d["finetune"], ctx.dist.rank, ctx.dist.world_size
    if not ft["ans2label"]:
        raise SystemExit("VideoQA.py: set data.finetune.ans2label (JSON {answer: class index})")
    labels = read_json(ft["ans2label"])
    if not cfg["model"]["num_answers"]:
        cfg["model"]["num_answers"] = max(labels.values()) + 1
    elif max(labels.values()) >= cfg["model"]["num_answers"]:
        raise SystemExit(f"VideoQA.py: {ft['ans2label']} has class {max(labels.values())} but model.num_answers "
                         f"is {cfg['model']['num_answers']}")
    ctx.save_config()
    model = build_model(ctx, X2VLMForVideoQA)
    collate = TokenizeCollate(collate_dict, ctx.tokenizer, d["max_tokens"], {"question": "text"})
    train_task(ctx, model, "video_qa", collate)
    results: dict = {}
    for split in ("val", "test"):
        if not ft[f"{split}_file"]:
            continue
        data = create_dataset("video_qa", cfg, split, ctx.tokenizer, rank, world)
        loader = create_loader(data, ft["batch_size_test"], collate, d["num_workers"], False, rank, world)
        records = [{**r, "index": i} for i, r in zip(loader.sampler, predict_video_qa(model, loader, ctx.dist.device),
                                                      strict=True)]
        records = sorted(gather_unique(records, "index"), key=lambda r: r["index"])
        metrics = videoqa_metrics([r["pred"] for r in records], [r["label"] for r in records])
        results |= {f"{split}/{k}": v for k, v in metrics.items()}
        if ctx.dist.is_main:
            write_json_atomic(ctx.output_dir / f"videoqa_{split}_predictions.json", records)
    return finish(ctx, "videoqa", results)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
