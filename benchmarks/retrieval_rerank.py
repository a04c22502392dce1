"""Speed of the retrieval evaluation: ITC embedding, then ITM re-ranking of each query's top k.

Measures, in one process on random weights (speed does not depend on them):

* embedding: images/s through the vision encoder and texts/s through the text encoder;
* re-ranking pairs/s of three ways to score the (query, candidate) pairs with the ITM head:
  ``shared_kv`` — ours (``utils.evaluation.rerank`` + ``itm_pair_scorer``): pairs sorted by image, each
  batch fuses its distinct images once, so the cross-attention keys/values of an image are projected once
  per batch rather than once per pair; ``repeated`` — the same batches with every pair carrying its own copy
  of the image tokens (the official code's way); ``per_pair`` — one fusion pass per pair (a naive loop);
* the projected wall time of a COCO-5k evaluation (5,000 images, 25,000 captions, both directions).

The image/text token tensors are ``--distinct`` real encoder outputs tiled to the full set; ITC
similarities are random, so every image appears in about the same number of top-k lists.

    python benchmarks/retrieval_rerank.py --preset tiny --images 200 --k 16          # CPU smoke run
    python benchmarks/retrieval_rerank.py --preset x2vlm_base --image-res 384 --k 80 --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pretrain_throughput import device_name  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.evaluation import itm_pair_scorer, rerank  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Median wall seconds of ``fn`` (device synchronised)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="configs/models/<preset>.yaml")
    p.add_argument("--image-res", type=int, default=0, help="override the preset's resolution (384: COCO fine-tune)")
    p.add_argument("--images", type=int, default=5000, help="images in the test set (COCO 5k)")
    p.add_argument("--texts-per-image", type=int, default=5, help="captions per image (COCO: 5)")
    p.add_argument("--k", type=int, default=80, help="candidates re-ranked per query (paper: 80 COCO, 32 Flickr)")
    p.add_argument("--text-len", type=int, default=40, help="tokens per caption")
    p.add_argument("--itm-batch", type=int, default=1024, help="pairs per ITM pass")
    p.add_argument("--distinct", type=int, default=64, help="real encoder outputs tiled to the full set")
    p.add_argument("--embed-batch", type=int, default=64, help="images per vision-encoder pass when timing")
    p.add_argument("--queries", type=int, default=0,
                   help="queries per direction for the shared_kv run (0: all, the full evaluation)")
    p.add_argument("--sample-queries", type=int, default=64, help="queries per direction for the repeated run")
    p.add_argument("--per-pair", type=int, default=64, help="pairs timed one by one (0: skip)")
    p.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32", choices=list(DTYPES),
                   help="model dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", help="append the result row (JSON line) to this file")
    args = p.parse_args()

    device = torch.device(args.device)
    overrides = [f"model.image_res={args.image_res}"] if args.image_res else []
    cfg = load_config(ROOT / "configs" / "models" / f"{args.preset}.yaml", overrides)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg, load_weights=False).to(device).eval()
    dtype = DTYPES[args.precision]
    res = cfg["model"]["image_res"]
    vocab = model.text_encoder.config.vocab_size
    n_img, n_txt = args.images, args.images * args.texts_per_image

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    with torch.no_grad(), autocast():
        pixels = torch.randn(args.embed_batch, 3, res, res, device=device)
        ids = torch.randint(5, vocab, (max(args.distinct, 256), args.text_len), device=device)
        atts = torch.ones_like(ids)
        model.encode_image(pixels)  # warm-up
        model.encode_text(ids, atts)
        t_img = timed(lambda: model.encode_image(pixels), device, 3)
        t_txt = timed(lambda: model.encode_text(ids, atts), device, 3)
        img_emb, img_atts = model.encode_image(pixels[: args.distinct])
        txt_emb = model.encode_text(ids[: args.distinct], atts[: args.distinct])
    images_per_s, texts_per_s = args.embed_batch / t_img, ids.shape[0] / t_txt
    tile_i = torch.arange(n_img, device=device) % img_emb.shape[0]
    tile_t = torch.arange(n_txt, device=device) % txt_emb.shape[0]
    img_emb, img_atts = img_emb[tile_i], img_atts[tile_i]
    txt_emb, txt_atts = txt_emb[tile_t], atts[: args.distinct][tile_t]
    sims = torch.rand(n_img, n_txt, device=device, generator=torch.Generator(device).manual_seed(0))
    k_i2t, k_t2i = min(args.k, n_txt), min(args.k, n_img)

    shared = itm_pair_scorer(model, img_emb, img_atts, txt_emb, txt_atts)

    def repeated(image_ids: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        return model.itm_logits(img_emb[image_ids], img_atts[image_ids], txt_emb[text_ids], txt_atts[text_ids])[:, 1]

    def rerank_rate(scorer, queries: int) -> tuple[float, float, int]:
        """(i2t pairs/s, t2i pairs/s, pairs scored) over the first ``queries`` queries of each direction."""
        qi, qt = (n_img, n_txt) if queries <= 0 else (min(queries, n_img), min(queries, n_txt))
        sims_t = sims.t().contiguous()
        with torch.no_grad(), autocast():
            rerank(sims, k_i2t, range(0, min(8, qi)), scorer, args.itm_batch, True)  # warm-up
            s_i2t = timed(lambda: rerank(sims, k_i2t, range(0, qi), scorer, args.itm_batch, True), device)
            s_t2i = timed(lambda: rerank(sims_t, k_t2i, range(0, qt), scorer, args.itm_batch, False), device)
        return qi * k_i2t / s_i2t, qt * k_t2i / s_t2i, qi * k_i2t + qt * k_t2i

    rows: list[dict[str, Any]] = []
    i2t, t2i, pairs = rerank_rate(shared, args.queries)
    rows.append({"variant": "shared_kv", "i2t_pairs_per_s": i2t, "t2i_pairs_per_s": t2i, "pairs_timed": pairs})
    i2t, t2i, pairs = rerank_rate(repeated, args.sample_queries)
    rows.append({"variant": "repeated", "i2t_pairs_per_s": i2t, "t2i_pairs_per_s": t2i, "pairs_timed": pairs})
    if args.per_pair:
        pick = torch.randint(0, n_img, (args.per_pair,)), torch.randint(0, n_txt, (args.per_pair,))

        def loop() -> None:
            for i, j in zip(*pick, strict=True):
                repeated(i.view(1).to(device), j.view(1).to(device))

        with torch.no_grad(), autocast():
            loop()
            rate = args.per_pair / timed(loop, device)
        rows.append({"variant": "per_pair", "i2t_pairs_per_s": rate, "t2i_pairs_per_s": rate,
                     "pairs_timed": args.per_pair})

    embed_s = n_img / images_per_s + n_txt / texts_per_s
    ours = rows[0]
    for row in rows:
        rerank_s = n_img * k_i2t / row["i2t_pairs_per_s"] + n_txt * k_t2i / row["t2i_pairs_per_s"]
        row["pairs_per_s"] = (n_img * k_i2t + n_txt * k_t2i) / rerank_s
        row["projected_eval_min"] = (embed_s + rerank_s) / 60
        row["speedup_of_shared_kv"] = ours["pairs_per_s"] / row["pairs_per_s"]
    meta = {"device": device_name(device), "torch": torch.__version__, "preset": args.preset, "image_res": res,
            "precision": args.precision, "images": n_img, "texts": n_txt, "k": args.k, "text_len": args.text_len,
            "itm_batch": args.itm_batch, "embed_images_per_s": round(images_per_s, 1),
            "embed_texts_per_s": round(texts_per_s, 1), "embed_min": round(embed_s / 60, 3),
            "date": time.strftime("%Y-%m-%d")}
    print(" | ".join(f"{k} {v}" for k, v in meta.items()))
    print(f"{'variant':<10} | {'i2t pairs/s':>11} | {'t2i pairs/s':>11} | {'pairs/s':>9} | "
          f"{'eval min (proj.)':>16} | {'shared_kv speed-up':>18} | pairs timed")
    for row in rows:
        print(f"{row['variant']:<10} | {row['i2t_pairs_per_s']:>11.1f} | {row['t2i_pairs_per_s']:>11.1f} | "
              f"{row['pairs_per_s']:>9.1f} | {row['projected_eval_min']:>16.2f} | "
              f"{row['speedup_of_shared_kv']:>18.2f} | {row['pairs_timed']}")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({**meta, "rows": rows}) + "\n")


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
