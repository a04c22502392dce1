"""VQA v2 fine-tuning and evaluation: answer generation with a text decoder, ranked over the candidate list.

    python run.py --task vqa --dist 16 --config configs/finetune/vqa.yaml --checkpoint x2vlm_base_1b.th \
        --output_dir output/vqa_base
    python VQA.py --config configs/finetune/vqa.yaml --checkpoint output/vqa_base/model.safetensors --evaluate
    python VQA.py --config configs/finetune/vqa_demo.yaml          # tiny model, generated data, CPU

Writes ``output_dir/vqa_result.json`` in the submission format ``[{"question_id", "answer"}]`` (for VQA v2
test-dev: upload it to the evaluation server) and, when the test file carries annotator answers,
``vqa_eval.json`` with the VQA accuracy (the official evaluation's rule, on the annotator answers as the file
has them; the official tool reports it rounded to 2 decimals, we keep the float), exact-match accuracy and
the best constant answer's accuracy (the chance level), all in percent (utils/vqa_metrics.py).
``--evaluate`` skips the fine-tuning.
"""
from __future__ import annotations

from typing import Any, cast

import torch

from dataset import collate_for, create_dataset, create_loader
from dataset.collate import TokenizeCollate
from dataset.tasks import VQADataset
from models.vqa import X2VLMForVQA
from utils.dist import cleanup
from utils.evaluation import evaluating, progress_bar
from utils.task import build_model, gather_unique, setup_task, task_parser, train_task, write_results
from utils.train_state import write_json_atomic
from utils.vqa_metrics import best_constant_accuracy, vqa_accuracy


def collate_train(samples: list[dict]) -> dict:
    """collate_vqa with the image batch under ``images`` (the trainer counts images there)."""
    batch = collate_for("vqa")(samples)
    batch["images"] = batch.pop("image")
    return batch


def predict(model: X2VLMForVQA, loader, tokenizer, answer_list: list[str], k: int, device) -> list[dict]:
    """``[{question_id, answer}]`` for this process's share of the test loader."""
    answers = tokenizer(list(answer_list), padding="longest", return_tensors="pt")
    a_ids, a_atts = answers["input_ids"].to(device), answers["attention_mask"].to(device)
    results = []
    with evaluating(model) as model:
        dtype = next(model.parameters()).dtype
        for batch in progress_bar(loader, "answers"):
            ids, _ = model.answer(batch["image"].to(device, dtype=dtype), batch["text_ids"].to(device),
                                  batch["text_atts"].to(device), a_ids, a_atts, k)
            qids = batch["question_id"]
            qids = qids.tolist() if isinstance(qids, torch.Tensor) else list(qids)
            results += [{"question_id": q, "answer": answer_list[i]}
                        for q, i in zip(qids, ids[:, 0].tolist(), strict=True)]
    return results


def local_metrics(results: list[dict], records: list[dict], answer_list: list[str]) -> dict:
    """The local evaluation written to ``vqa_eval.json``: ``results`` ``[{question_id, answer}]`` against the
    annotator answers of the test ``records`` (``answer``: a list or one string), taken as they are in the
    file and scored by X²-VLM's ``vqaEval`` rule only (utils/vqa_metrics.py: the prediction fully normalised,
    the annotator answers only punctuation-processed, and only when they disagree), plus the best constant
    answer of ``answer_list`` and its accuracy (the chance level)."""
    gts = {r["question_id"]: r["answer"] if isinstance(r["answer"], list) else [r["answer"]] for r in records}
    metrics: dict[str, Any] = dict(vqa_accuracy(results, gts))
    metrics["chance_answer"], metrics["chance_vqa_acc"] = best_constant_accuracy(gts, answer_list)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    args = task_parser(__doc__, "configs/finetune/vqa.yaml").parse_args(argv)
    ctx = setup_task(args)
    cfg, d, rank, world = ctx.cfg, ctx.cfg["data"], ctx.dist.rank, ctx.dist.world_size
    ft = d["finetune"]
    model = build_model(ctx, X2VLMForVQA)
    collate = TokenizeCollate(collate_train, ctx.tokenizer, d["max_tokens"], {"question": "text", "answers": "answer"})
    train_task(ctx, model, "vqa", collate)
    test_set = cast(VQADataset, create_dataset("vqa", cfg, "test", ctx.tokenizer, rank, world))
    if not test_set.answer_list:
        raise SystemExit("VQA.py: the evaluation ranks data.finetune.answer_list, which is not set or empty")
    # test questions are cut at 50 words by the dataset, not at data.max_tokens (as the official evaluation)
    q_tokens = model.text_encoder.config.max_position_embeddings - 2
    collate = TokenizeCollate(collate_for("vqa"), ctx.tokenizer, q_tokens, {"question": "text"})
    loader = create_loader(test_set, ft["batch_size_test"], collate, d["num_workers"], False, rank, world)
    k = int(cfg["eval"]["k_test"])  # official VQA k_test (first-token top-k whose full answers are scored)
    results = gather_unique(predict(model, loader, ctx.tokenizer, test_set.answer_list, k, ctx.dist.device),
                            "question_id")
    metrics: dict = {}
    if ctx.dist.is_main:
        records = [test_set.index.get(i) for i in range(len(test_set.index))]
        order = {r["question_id"]: i for i, r in enumerate(records)}
        results.sort(key=lambda r: order.get(r["question_id"], len(order)))
        write_json_atomic(ctx.output_dir / "vqa_result.json", results)
        if records and all(r.get("answer") for r in records):
            metrics = local_metrics(results, records, test_set.answer_list)
            write_results(ctx, "vqa_eval", metrics)
    cleanup()
    return metrics


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
