"""Score an image against a text with a trained X²-VLM and, optionally, draw where the text points.

    python scripts/demo.py --config configs/models/x2vlm_base.yaml --checkpoint x2vlm_base_4m.th \\
        --image photo.jpg --text "a dog on a sofa" --box_png box.png

Prints the ITM match probability and the ITC similarity; with ``--box_png`` also the box predicted by the
grounding head (pixels, x0 y0 x1 y1) and writes the image with that box drawn. Works with the official
released checkpoints (``model.text.tokenizer`` must point to the matching tokenizer folder / vocab.txt).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import image_transform, load_tokenizer  # noqa: E402
from dataset.io import load_image  # noqa: E402
from models.x2vlm import X2VLM  # noqa: E402
from utils.config import add_config_args, config_from_args  # noqa: E402


@torch.no_grad()
def score(model: X2VLM, tokenizer, cfg: dict, image, text: str) -> dict[str, float | list[float]]:
    """ITM probability, ITC similarity and the predicted box (normalised cx, cy, w, h) of ``text`` in ``image``."""
    model.eval()
    pixels, _ = image_transform(cfg, train=False)(image)
    enc = tokenizer([text], padding="longest", truncation=True, max_length=cfg["data"]["max_tokens"],
                    return_tensors="pt")
    embeds, atts = model.encode_image(pixels[None])
    text_embeds = model.encode_text(enc["input_ids"], enc["attention_mask"])
    itm = model.itm_logits(embeds, atts, text_embeds, enc["attention_mask"]).softmax(-1)[0, 1]
    itc = (model.image_features(embeds) @ model.text_features(text_embeds).t())[0, 0]
    box = model.predict_boxes(embeds, text_embeds, enc["attention_mask"])[0]
    return {"itm": float(itm), "itc": float(itc), "box": [float(v) for v in box]}


def box_pixels(box_cxcywh: list[float], width: int, height: int) -> list[float]:
    cx, cy, w, h = box_cxcywh
    return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, default_config="configs/models/x2vlm_base.yaml")
    p.add_argument("--checkpoint", help="weights to load (sets model.checkpoint)")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--box_png", help="write the image with the predicted box here")
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    if args.checkpoint:
        cfg["model"]["checkpoint"] = args.checkpoint
    model = X2VLM.from_config(cfg)
    image = load_image(args.image)
    out = score(model, load_tokenizer(cfg), cfg, image, args.text)
    print(f"ITM match probability {out['itm']:.4f}, ITC similarity {out['itc']:.4f}")
    if args.box_png:
        xyxy = box_pixels(out["box"], *image.size)
        drawn = image.convert("RGB")
        ImageDraw.Draw(drawn).rectangle(xyxy, outline=(255, 0, 0), width=max(1, min(image.size) // 100))
        drawn.save(args.box_png)
        out["box_pixels"] = xyxy
        print("box (x0, y0, x1, y1): " + ", ".join(f"{v:.1f}" for v in xyxy) + f" -> {args.box_png}")
    return out


if __name__ == "__main__":
    main()
