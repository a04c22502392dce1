"""Speed of the retrieval evaluation: the ITC feature pass, then ITM re-ranking of each query's top k, and the
projected wall time of a COCO-5k evaluation on the device it runs on.

Measures, in one process on random weights (speed does not depend on them) and random inputs:

* the feature pass: images/s through the vision encoder and texts/s through the text encoder (``--distinct 0``:
  every image and text of the set is encoded, as the evaluation does; else ``--distinct`` real encoder outputs
  are tiled to the full set and the rates come from timed batches);
* re-ranking pairs/s, image→text and text→image separately, of three ways to score the (query, candidate) pairs
  with the ITM head:
  ``shared_kv`` — ours (``utils.evaluation.rerank`` + ``itm_pair_scorer``, what ``Retrieval.py`` runs): pairs
  sorted by image, each batch fuses its distinct images once, so the cross-attention keys/values of an image are
  projected once per batch rather than once per pair; ``repeated`` — the same batches with every pair carrying
  its own copy of the image tokens (the official code's way); ``per_pair`` — one fusion/ITM forward per pair
  (a naive loop), on every candidate of the first ``--check-queries`` queries of each direction;
* a score check: the per-pair loop's logits against ``shared_kv``'s on those shared queries (max abs diff);
* the projection for COCO-5k (``--project-images`` 5,000 images, ``--project-texts-per-image`` 5 captions each,
  the measured ``--k``), from the rates measured here, printed with its formula::

      minutes = (I / images_per_s + T / texts_per_s + I*k / i2t_pairs_per_s + T*k / t2i_pairs_per_s) / 60

  It is a figure for *this* device and *this* preset / resolution / precision / k only; the paper's COCO-5k
  setting is ``--preset x2vlm_base --image-res 384 --k 80`` (bf16 on a GPU).

ITC similarities are random (every image appears in about the same number of text→image top-k lists: k x
captions per image), so the batches have the sharing a real COCO evaluation has. ``shared_kv`` is timed either
on the full ``rerank`` of every query (``--sample-batches 0``, the real evaluation loop) or on ``--sample-batches``
ITM batches spread evenly over each direction's full sorted pair list (the batches ``rerank`` would form), which
is how a COCO-5k-sized set is timed in seconds.

    # CPU: a 1k-image subset (1,000 images, 5,000 captions), tiny preset at its 64 px, k = 16, the full re-rank of
    # every query, and the per-pair loop on every candidate of the first 32 queries of each direction
    python benchmarks/retrieval_rerank.py --preset tiny --images 1000 --k 16 --sample-batches 0 --check-queries 32
    # GPU: COCO-5k (the defaults: 5,000 images, 25,000 captions, k = 80, 24 sampled ITM batches per direction),
    # base at 384 px, bf16 (what benchmarks/gpu_suite.sh runs)
    python benchmarks/retrieval_rerank.py --preset x2vlm_base --image-res 384 --device cuda
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
from models.tokens import Tokens  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.evaluation import itm_pair_scorer, rerank  # noqa: E402
from utils.evaluation.ranking import RANK_CHUNK, rank_order  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
COCO_SETTING = ("x2vlm_base", 384, 80)  # preset, resolution, k of the paper's COCO-5k evaluation
FORMULA = "minutes = (I/images_per_s + T/texts_per_s + I*k/i2t_pairs_per_s + T*k/t2i_pairs_per_s) / 60"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Median wall seconds of ``fn`` (device synchronised)."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def top_k(sims: torch.Tensor, k: int, rows: range) -> torch.Tensor:
    """``(len(rows), k)`` candidate indices, best first, with :func:`rerank`'s tie rule."""
    out = torch.empty(len(rows), k, dtype=torch.long, device=sims.device)
    for start in range(rows.start, rows.stop, RANK_CHUNK):
        stop = min(start + RANK_CHUNK, rows.stop)
        out[start - rows.start:stop - rows.start] = rank_order(sims[start:stop].float())[:, :k]
    return out


def sorted_pairs(sims: torch.Tensor, k: int, queries_are_images: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image_ids, text_ids)`` of every query's top ``k`` in the order :func:`rerank` scores them (sorted by
    image, stable), so that consecutive slices of ``pair_batch`` are its ITM batches."""
    n = sims.shape[0]
    query = torch.arange(n, device=sims.device).repeat_interleave(k)
    cand = top_k(sims, k, range(n)).flatten()
    image_ids, text_ids = (query, cand) if queries_are_images else (cand, query)
    order = torch.argsort(image_ids, stable=True)
    return image_ids[order], text_ids[order]


def batch_starts(n_pairs: int, pair_batch: int, count: int) -> list[int]:
    """``count`` batch starts spread evenly over the ``ceil(n_pairs / pair_batch)`` batches (all when fewer)."""
    n_batches = -(-n_pairs // pair_batch)
    if count >= n_batches:
        return [b * pair_batch for b in range(n_batches)]
    return [round(i * (n_batches - 1) / max(count - 1, 1)) * pair_batch for i in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="configs/models/<preset>.yaml")
    p.add_argument("--image-res", type=int, default=0, help="override the preset's resolution (384: COCO fine-tune)")
    p.add_argument("--images", type=int, default=5000, help="images in the test set (COCO-5k: 5000)")
    p.add_argument("--texts-per-image", type=int, default=5, help="captions per image (COCO: 5)")
    p.add_argument("--k", type=int, default=80, help="candidates re-ranked per query (paper: 80 COCO, 32 Flickr)")
    p.add_argument("--text-len", type=int, default=40, help="tokens per caption (retrieval_coco.yaml: 40)")
    p.add_argument("--itm-batch", type=int, default=256, help="pairs per ITM pass (retrieval_coco.yaml: 256)")
    p.add_argument("--distinct", type=int, default=0,
                   help="0: encode every image and text (the real feature pass); N: N encoder outputs tiled")
    p.add_argument("--embed-batch", type=int, default=64, help="images per vision-encoder pass")
    p.add_argument("--text-batch", type=int, default=256, help="texts per text-encoder pass")
    p.add_argument("--sample-batches", type=int, default=24,
                   help="0: time the full rerank of every query; N: N ITM batches per direction, evenly spread")
    p.add_argument("--repeated-batches", type=int, default=8, help="batches per direction for 'repeated' (0: skip)")
    p.add_argument("--check-queries", type=int, default=8,
                   help="queries per direction scored pair by pair (the per_pair rate and the score check; 0: skip)")
    p.add_argument("--project-images", type=int, default=5000, help="images of the projected set (COCO-5k)")
    p.add_argument("--project-texts-per-image", type=int, default=5, help="captions per image there")
    p.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32", choices=list(DTYPES),
                   help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--out", help="append the result row (JSON line) to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    device = torch.device(args.device)
    overrides = [f"model.image_res={args.image_res}"] if args.image_res else []
    cfg = load_config(ROOT / "configs" / "models" / f"{args.preset}.yaml", overrides)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg, load_weights=False).to(device).eval()
    dtype = DTYPES[args.precision]
    res = cfg["model"]["image_res"]
    vocab = model.text_encoder.config.vocab_size
    n_img, n_txt = args.images, args.images * args.texts_per_image
    gen = torch.Generator(device).manual_seed(0)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def pixels(n: int) -> torch.Tensor:
        return torch.randn(n, 3, res, res, device=device, generator=gen)

    def text_ids(n: int) -> torch.Tensor:
        return torch.randint(5, vocab, (n, args.text_len), device=device, generator=gen)

    # ------------------------------------------------------------------ the ITC feature pass
    with torch.no_grad(), autocast():
        warm = pixels(min(args.embed_batch, 8))
        model.image_features(model.encode_image(warm)[0])  # warm-up
        ids = text_ids(min(args.text_batch, 8))
        model.text_features(model.encode_text(ids, torch.ones_like(ids)))
        if args.distinct <= 0:  # every image and text, in batches, as utils.evaluation.retrieval does
            parts_i: list[Tokens] = []
            parts_t: list[Tokens] = []
            sync(device)
            t = time.perf_counter()
            for start in range(0, n_img, args.embed_batch):
                emb, _ = model.encode_image(pixels(min(args.embed_batch, n_img - start)))
                model.image_features(emb)
                parts_i.append(emb)
            sync(device)
            t_img = time.perf_counter() - t
            t = time.perf_counter()
            for start in range(0, n_txt, args.text_batch):
                ids = text_ids(min(args.text_batch, n_txt - start))
                emb = model.encode_text(ids, torch.ones_like(ids))
                model.text_features(emb)
                parts_t.append(emb)
            sync(device)
            t_txt = time.perf_counter() - t
            img_emb, txt_emb = Tokens.cat(parts_i), Tokens.cat(parts_t)
            del parts_i, parts_t
            images_per_s, texts_per_s = n_img / t_img, n_txt / t_txt
            feature_method = f"every image and text encoded ({n_img} + {n_txt})"
        else:
            batch_px, batch_ids = pixels(args.embed_batch), text_ids(args.text_batch)
            ones = torch.ones_like(batch_ids)
            t_img = timed(lambda: model.image_features(model.encode_image(batch_px)[0]), device, 3)
            t_txt = timed(lambda: model.text_features(model.encode_text(batch_ids, ones)), device, 3)
            images_per_s, texts_per_s = args.embed_batch / t_img, args.text_batch / t_txt
            img_emb, _ = model.encode_image(batch_px[: args.distinct])
            txt_emb = model.encode_text(batch_ids[: args.distinct], ones[: args.distinct])
            img_emb = img_emb[torch.arange(n_img, device=device) % len(img_emb)]
            txt_emb = txt_emb[torch.arange(n_txt, device=device) % len(txt_emb)]
            t_img, t_txt = n_img / images_per_s, n_txt / texts_per_s
            feature_method = (f"median of 3 timed batches ({args.embed_batch} images, {args.text_batch} texts); "
                              f"{args.distinct} outputs tiled to the set")
    img_atts = torch.ones(img_emb.shape[:2], dtype=torch.long, device=device)
    txt_atts = torch.ones(n_txt, args.text_len, dtype=torch.long, device=device)
    sims = torch.rand(n_img, n_txt, device=device, generator=gen)
    sims_t = sims.t().contiguous()
    k_i2t, k_t2i = min(args.k, n_txt), min(args.k, n_img)
    shared = itm_pair_scorer(model, img_emb, img_atts, txt_emb, txt_atts)

    def repeated(image_ids: torch.Tensor, text_ids_: torch.Tensor) -> torch.Tensor:
        return model.itm_logits(img_emb[image_ids], img_atts[image_ids], txt_emb[text_ids_],
                                txt_atts[text_ids_])[:, 1].float()

    pairs = {"i2t": sorted_pairs(sims, k_i2t, True), "t2i": sorted_pairs(sims_t, k_t2i, False)}

    def sampled_rate(scorer, direction: str, count: int) -> tuple[float, int]:
        """pairs/s over ``count`` evenly spread batches of ``direction``'s sorted pair list."""
        image_ids, text_ids_ = pairs[direction]
        starts = batch_starts(image_ids.numel(), args.itm_batch, count)
        with torch.no_grad(), autocast():
            scorer(image_ids[:args.itm_batch], text_ids_[:args.itm_batch])  # warm-up
            sync(device)
            t = time.perf_counter()
            n = 0
            for s in starts:
                scorer(image_ids[s:s + args.itm_batch], text_ids_[s:s + args.itm_batch])
                n += min(args.itm_batch, image_ids.numel() - s)
            sync(device)
        return n / (time.perf_counter() - t), n

    rows: list[dict[str, Any]] = []
    score_i2t = score_t2i = None
    rerank_s = 0.0
    if args.sample_batches <= 0:  # the real evaluation loop over every query
        with torch.no_grad(), autocast():
            rerank(sims, k_i2t, range(0, min(4, n_img)), shared, args.itm_batch, True)  # warm-up
            sync(device)
            t = time.perf_counter()
            score_i2t = rerank(sims, k_i2t, range(0, n_img), shared, args.itm_batch, True)
            sync(device)
            s_i2t = time.perf_counter() - t
            t = time.perf_counter()
            score_t2i = rerank(sims_t, k_t2i, range(0, n_txt), shared, args.itm_batch, False)
            sync(device)
            s_t2i = time.perf_counter() - t
        rerank_s = s_i2t + s_t2i
        rows.append({"variant": "shared_kv", "i2t_pairs_per_s": n_img * k_i2t / s_i2t,
                     "t2i_pairs_per_s": n_txt * k_t2i / s_t2i, "pairs_timed": n_img * k_i2t + n_txt * k_t2i,
                     "timed": "full rerank of every query"})
    else:
        i2t, n1 = sampled_rate(shared, "i2t", args.sample_batches)
        t2i, n2 = sampled_rate(shared, "t2i", args.sample_batches)
        rows.append({"variant": "shared_kv", "i2t_pairs_per_s": i2t, "t2i_pairs_per_s": t2i, "pairs_timed": n1 + n2,
                     "timed": f"{args.sample_batches} batches per direction, evenly spread"})
    if args.repeated_batches:
        i2t, n1 = sampled_rate(repeated, "i2t", args.repeated_batches)
        t2i, n2 = sampled_rate(repeated, "t2i", args.repeated_batches)
        rows.append({"variant": "repeated", "i2t_pairs_per_s": i2t, "t2i_pairs_per_s": t2i, "pairs_timed": n1 + n2,
                     "timed": f"{args.repeated_batches} batches per direction, evenly spread"})

    check: dict[str, Any] = {}
    if args.check_queries:
        rates, diffs, n_pairs = {}, {}, 0
        for direction, s, k, is_img in (("i2t", sims, k_i2t, True), ("t2i", sims_t, k_t2i, False)):
            q = min(args.check_queries, s.shape[0])
            top = top_k(s, k, range(q))
            with torch.no_grad(), autocast():
                if direction == "i2t" and score_i2t is not None:
                    batched = score_i2t[:q].gather(1, top)
                elif direction == "t2i" and score_t2i is not None:
                    batched = score_t2i[:q].gather(1, top)
                else:  # sampled mode: the same function on just these queries
                    batched = rerank(s, k, range(q), shared, args.itm_batch, is_img)[:q].gather(1, top)
                single = torch.empty(q, k, dtype=torch.float32, device=device)
                queries = torch.arange(q, device=device)

                def loop(top=top, single=single, queries=queries, k=k, is_img=is_img) -> None:
                    for a in range(len(queries)):
                        for b in range(k):
                            query, cand = queries[a:a + 1], top[a, b:b + 1]
                            i, j = (query, cand) if is_img else (cand, query)
                            single[a, b] = repeated(i, j)[0]

                loop()  # warm-up (and the scores)
                rates[direction] = q * k / timed(loop, device)
            diffs[direction] = float((single - batched).abs().max())
            n_pairs += q * k
        rows.append({"variant": "per_pair", "i2t_pairs_per_s": rates["i2t"], "t2i_pairs_per_s": rates["t2i"],
                     "pairs_timed": n_pairs, "timed": f"every candidate of the first {args.check_queries} queries "
                                                      "per direction, one pair per forward"})
        check = {"check_queries": args.check_queries, "check_pairs": n_pairs,
                 "max_abs_diff_i2t": diffs["i2t"], "max_abs_diff_t2i": diffs["t2i"]}

    # ------------------------------------------------------------------ projection for COCO-5k on this device
    p_img, p_txt = args.project_images, args.project_images * args.project_texts_per_image
    p_embed_s = p_img / images_per_s + p_txt / texts_per_s
    ours = rows[0]
    for row in rows:
        row["pairs_per_s"] = (n_img * k_i2t + n_txt * k_t2i) / (
            n_img * k_i2t / row["i2t_pairs_per_s"] + n_txt * k_t2i / row["t2i_pairs_per_s"])
        row["shared_kv_speedup"] = ours["pairs_per_s"] / row["pairs_per_s"]
        p_rerank_s = p_img * args.k / row["i2t_pairs_per_s"] + p_txt * args.k / row["t2i_pairs_per_s"]
        row["projected_rerank_min"] = p_rerank_s / 60
        row["projected_eval_min"] = (p_embed_s + p_rerank_s) / 60
    setting = (args.preset, res, args.k)
    meta = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "preset": args.preset, "image_res": res, "image_tokens": int(img_emb.shape[1]),
            "precision": args.precision, "images": n_img, "texts": n_txt, "k": args.k, "text_len": args.text_len,
            "itm_batch": args.itm_batch, "feature_pass": feature_method,
            "images_per_s": round(images_per_s, 1), "texts_per_s": round(texts_per_s, 1),
            "measured_feature_s": round(t_img + t_txt, 2),
            "measured_rerank_s": round(rerank_s, 2) if args.sample_batches <= 0 else None,
            "date": time.strftime("%Y-%m-%d")}
    projection = {"images": p_img, "texts": p_txt, "k": args.k, "formula": FORMULA,
                  "feature_min": round(p_embed_s / 60, 3),
                  "eval_min": {row["variant"]: round(row["projected_eval_min"], 2) for row in rows},
                  "coco_setting": setting == COCO_SETTING}
    print(" | ".join(f"{k} {v}" for k, v in meta.items()))
    print(f"{'variant':<10} | {'i2t pairs/s':>11} | {'t2i pairs/s':>11} | {'pairs/s':>9} | "
          f"{'shared_kv speed-up':>18} | {'COCO-5k min (proj.)':>19} | pairs timed, how")
    for row in rows:
        print(f"{row['variant']:<10} | {row['i2t_pairs_per_s']:>11.1f} | {row['t2i_pairs_per_s']:>11.1f} | "
              f"{row['pairs_per_s']:>9.1f} | {row['shared_kv_speedup']:>18.2f} | "
              f"{row['projected_eval_min']:>19.2f} | {row['pairs_timed']}, {row['timed']}")
    if check:
        print(f"score check, per_pair vs shared_kv on {check['check_pairs']} pairs of the first "
              f"{check['check_queries']} queries per direction: max abs diff i2t {check['max_abs_diff_i2t']:.3g}, "
              f"t2i {check['max_abs_diff_t2i']:.3g}")
    if args.sample_batches <= 0:
        print(f"measured on this set ({n_img} images, {n_txt} texts, k = {args.k}): feature pass "
              f"{t_img + t_txt:.1f} s + re-rank {rerank_s:.1f} s")
    print(f"projection, COCO-5k sized ({p_img} images, {p_txt} texts, k = {args.k}) on {meta['device']}, "
          f"{args.preset} at {res} px, {args.precision}: {projection['feature_min']:.2f} min feature pass + "
          f"re-rank -> " + ", ".join(f"{v} {m:.2f} min" for v, m in projection["eval_min"].items()))
    print(f"  {FORMULA}  (I = {p_img}, T = {p_txt}, k = {args.k}; rates measured above)"
          + ("" if projection["coco_setting"] else
             "; not the paper's COCO-5k setting (x2vlm_base, 384 px, k = 80): a figure for this setting only"))
    print(f"wall {time.perf_counter() - t_start:.1f} s")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({**meta, "rows": rows, "check": check, "projection": projection}) + "\n")


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
