"""Image-text retrieval (COCO, Flickr30k; video-text with --video): fine-tune with ITC + ITM, then rank the
test split by ITC similarity and re-rank each query's ``eval.k_test`` best candidates by the ITM head.

    python Retrieval.py --config configs/finetune/retrieval_demo.yaml                   # CPU demo
    python run.py --task retrieval --dist 8 --config configs/finetune/retrieval_coco.yaml \\
        --checkpoint x2vlm_base_4m.th --output_dir out/coco
    python Retrieval.py --config configs/finetune/retrieval_coco.yaml --checkpoint out/coco/model.safetensors \\
        --evaluate                                                  # fine-tuned (or zero-shot) evaluation

Results (``txt_r1/5/10`` image→text, ``img_r1/5/10`` text→image, means, the ITC-only ``itc_*`` and the
chance levels ``chance_*``) per evaluated split go to ``output_dir/retrieval.json`` as ``<split>/<metric>``.
"""
from __future__ import annotations

from dataset import collate_for, create_dataset, create_loader
from dataset.collate import TokenizeCollate
from models.retrieval import X2VLMRetrieval
from utils.evaluation import eval_settings, evaluate_retrieval
from utils.task import finetune, finish, save_final_weights, setup_task, task_parser


def evaluate(ctx, model, task: str) -> dict[str, float]:
    """Recall on every non-empty ``data.finetune.{val,test}_file`` (each rank scores a share of the queries)."""
    cfg, e = ctx.cfg, eval_settings(ctx.cfg)
    results: dict[str, float] = {}
    for split in ("val", "test"):
        if not cfg["data"]["finetune"][f"{split}_file"]:
            continue
        ds = create_dataset(task, cfg, split, ctx.tokenizer)
        loader = create_loader(ds, cfg["data"]["finetune"]["batch_size_test"], collate_for(task),
                               cfg["data"]["num_workers"], training=False)  # every rank embeds every image
        metrics = evaluate_retrieval(model, loader, ctx.dist.device, int(e["k_test"]), bool(e["itm_rerank"]),
                                     ctx.dist, tokenizer=ctx.tokenizer, max_tokens=cfg["data"]["max_tokens"],
                                     text_batch_size=int(e["text_batch_size"]),
                                     itm_batch_size=int(e["itm_batch_size"]))
        results |= {f"{split}/{k}": v for k, v in metrics.items()}
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = task_parser(__doc__, "configs/finetune/retrieval_demo.yaml")
    parser.add_argument("--video", action="store_true", help="video-text retrieval ({video, caption, video_id})")
    ctx = setup_task(parser.parse_args(argv))
    cfg, task = ctx.cfg, "video_retrieval" if ctx.args.video else "retrieval"
    model = X2VLMRetrieval.from_config(cfg)
    if not ctx.args.evaluate:
        ft = cfg["data"]["finetune"]
        train_ds = create_dataset(task, cfg, "train", ctx.tokenizer)
        collate = TokenizeCollate(collate_for(task), ctx.tokenizer, cfg["data"]["max_tokens"], {"text": "text"})
        loader = create_loader(train_ds, ft["batch_size_train"], collate, cfg["data"]["num_workers"], True,
                               ctx.dist.rank, ctx.dist.world_size, cfg["seed"])
        finetune(ctx, model, loader, evaluate=lambda: evaluate(ctx, model, task))
        save_final_weights(ctx, model)
    model.to(ctx.dist.device)
    results = evaluate(ctx, model, task)
    return finish(ctx, "retrieval", results)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
