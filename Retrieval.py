"""Image-text retrieval (COCO, Flickr30k; video-text with --video): fine-tune with ITC + ITM, then rank the
test split by ITC similarity and re-rank each query's ``eval.k_test`` best candidates by the ITM head.
Scores are float32 and ties (common with a bf16 model) follow one rule in the top-k selection and in recall:
among equal scores the candidate with the lower index (earlier in the evaluation file) ranks first.

    python Retrieval.py --config configs/finetune/retrieval_demo.yaml                   # CPU demo
    python run.py --task retrieval --dist 8 --config configs/finetune/retrieval_coco.yaml \\
        --checkpoint x2vlm_base_4m.th --output_dir out/coco
    python Retrieval.py --config configs/finetune/retrieval_coco.yaml --checkpoint out/coco/model.safetensors \\
        --evaluate                                                  # fine-tuned (or zero-shot) evaluation

Results (``txt_r1/5/10`` image→text, ``img_r1/5/10`` text→image, means, the ITC-only ``itc_*`` and the
chance levels ``chance_*``) per evaluated split go to ``output_dir/retrieval.json`` as ``<split>/<metric>``;
multilingual test sets (``data.finetune.test_file_languages``) as ``test_<language>/<metric>`` plus the
mean over languages ``languages/r_mean``. Video-text retrieval (MSRVTT): configs/finetune/retrieval_msrvtt.yaml
(``data.finetune.is_video``, or ``--video``); multilingual (Multi30K, multilingual COCO): an XLM-R text encoder
swapped into an English checkpoint (``model.text.swap``), configs/finetune/retrieval_multi30k.yaml.
"""
from __future__ import annotations

from dataset import collate_for, create_dataset, create_loader
from dataset.collate import TokenizeCollate
from models.retrieval import X2VLMForRetrieval
from utils.evaluation import eval_settings, evaluate_retrieval
from utils.task import build_model, finish, setup_task, task_parser, train_task


def evaluate(ctx, model, task: str) -> dict[str, float]:
    """Recall on every non-empty ``data.finetune.{val,test}_file`` and on each language's file of
    ``data.finetune.test_file_languages`` (as ``test_<language>/...``, with their mean ``languages/r_mean``);
    each rank re-ranks a share of the queries."""
    cfg, e = ctx.cfg, eval_settings(ctx.cfg)
    ft = cfg["data"]["finetune"]
    sets = {split: split for split in ("val", "test") if ft[f"{split}_file"]}
    sets |= {f"test_{lang}": files for lang, files in (ft["test_file_languages"] or {}).items()}
    results: dict[str, float] = {}
    for split, files in sets.items():
        ds = create_dataset(task, cfg, files, ctx.tokenizer)
        loader = create_loader(ds, cfg["data"]["finetune"]["batch_size_test"], collate_for(task),
                               cfg["data"]["num_workers"], training=False)  # every rank embeds every image
        metrics = evaluate_retrieval(model, loader, ctx.dist.device, int(e["k_test"]), bool(e["itm_rerank"]),
                                     ctx.dist, tokenizer=ctx.tokenizer, max_tokens=cfg["data"]["max_tokens"],
                                     text_batch_size=int(e["text_batch_size"]),
                                     itm_batch_size=int(e["itm_batch_size"]))
        results |= {f"{split}/{k}": v for k, v in metrics.items()}
    languages = [f"test_{lang}" for lang in ft["test_file_languages"] or {}]
    if languages:  # the official XRetrieval.py score: the mean over languages of each one's mean recall
        for key in ("r_mean", "txt_r_mean", "img_r_mean", "chance_r_mean"):
            results[f"languages/{key}"] = sum(results[f"{lang}/{key}"] for lang in languages) / len(languages)
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = task_parser(__doc__, "configs/finetune/retrieval_demo.yaml")
    parser.add_argument("--video", action="store_true", help="video-text retrieval ({video, caption, video_id}); "
                                                             "also data.finetune.is_video")
    ctx = setup_task(parser.parse_args(argv))
    video = ctx.args.video or ctx.cfg["data"]["finetune"]["is_video"]
    cfg, task = ctx.cfg, "video_retrieval" if video else "retrieval"
    model = build_model(ctx, X2VLMForRetrieval)
    collate = TokenizeCollate(collate_for(task), ctx.tokenizer, cfg["data"]["max_tokens"], {"text": "text"})
    train_task(ctx, model, task, collate, evaluate=lambda: evaluate(ctx, model, task))
    results = evaluate(ctx, model, task)
    return finish(ctx, "retrieval", results)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
