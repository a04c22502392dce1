"""X²-VLM pretraining on mixed image-text, region-text and video-text batches (ITC + ITM + MLM + bbox).

    python Pretrain.py --config configs/pretrain/demo.yaml                      # one process
    python run.py --task pretrain --dist 8 --config configs/pretrain/x2vlm_base_4m.yaml --output_dir out/pt

Writes step checkpoints (``train.ckpt_every``, and the last step) under ``output_dir/checkpoints/`` and the final
weights as ``output_dir/model.safetensors`` (loadable with ``--checkpoint`` by the task scripts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dataset import create_pretrain_loader
from models.checkpoint import save_checkpoint_weights
from models.x2vlm import X2VLM
from utils.config import add_config_args
from utils.dist import cleanup
from utils.evaluation import format_results, zero_shot_eval
from utils.task import report_weights, setup_task
from utils.train_state import write_json_atomic
from utils.trainer import Trainer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, default_config="configs/pretrain/demo.yaml")
    p.add_argument("--output_dir", help="where logs, checkpoints and the resolved config go (overrides output_dir)")
    p.add_argument("--resume", help="'latest' (newest checkpoint in output_dir) or a checkpoint path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    return p.parse_args()


def main() -> None:
    ctx = setup_task(parse_args())  # config, process group, seeds, tokenizer, config.yaml: as every task script
    cfg, dist_info, tokenizer = ctx.cfg, ctx.dist, ctx.tokenizer
    model = X2VLM.from_config(cfg)
    report_weights(model, dist_info.is_main, cfg["output_dir"])
    if len(tokenizer) > model.text_encoder.config.vocab_size:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens but model.text.config.vocab_size is "
                         f"{model.text_encoder.config.vocab_size}")
    trainer = Trainer(cfg, model, dist_info, fresh_params=model.fresh_parameters)
    loader = create_pretrain_loader(cfg, dist_info.rank, dist_info.world_size, tokenizer=tokenizer)
    trainer.track_data(loader)  # the data position goes into every checkpoint and comes back on resume
    trainer.resume(ctx.args.resume)
    last = trainer.fit(lambda start: iter(loader),
                       extra_log=lambda: {"skipped_samples": sum(loader.skipped.values())})
    if dist_info.is_main:
        print("final losses: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(last.items())))
        # the final weights, whatever train.ckpt_every: loadable with --checkpoint / models.load_model(output_dir)
        weights = save_checkpoint_weights(model, cfg["output_dir"], trainer.engine.export_weights())
        print(f"final weights: {weights}")
    results = zero_shot_eval(cfg, trainer.model, tokenizer, dist_info.device, dist_info)
    if results and dist_info.is_main:
        print("zero-shot evaluation (held-out split):\n" + format_results(results))
        write_json_atomic(Path(cfg["output_dir"]) / "zero_shot.json", results)
    cleanup()


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
