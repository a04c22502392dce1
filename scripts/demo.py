"""Score an image against a text with a trained X²-VLM and, optionally, draw where the text points.

    python scripts/demo.py --checkpoint x2vlm_base_4m.th --config configs/models/x2vlm_base.yaml \\
        --override model.text.tokenizer=/path/to/bert-base-uncased \\
        --image photo.jpg --text "a dog on a sofa" --box_png box.png --caption
    python scripts/demo.py --checkpoint output/retrieval_coco --image photo.jpg --text "a dog"   # our output folder

Prints the ITM match probability and the ITC similarity; with ``--box_png`` also the box predicted by the
grounding head (pixels, x0 y0 x1 y1) and writes the image with that box drawn; with ``--caption`` a generated
caption. A command line over the Python API (``from models import load_model``, models/api.py). An official
checkpoint needs its config (README: official checkpoints) and ``model.text.tokenizer`` pointing to the
matching tokenizer folder / vocab.txt.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.api import box_pixels, load_model  # noqa: E402,F401  (box_pixels: re-exported for callers)
from utils.config import add_config_args  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.set_defaults(config=None)
    p.add_argument("--checkpoint", help="weights: our output folder (model.safetensors + config.yaml), or a "
                                        "checkpoint file (official .th, ours .safetensors) with --config; "
                                        "none: random weights from --config")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--text", required=True, help="text to score against the image (and to ground)")
    p.add_argument("--box_png", help="write the image with the predicted box here")
    p.add_argument("--caption", action="store_true", help="also generate a caption (beam search, see caption.*)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    args = p.parse_args(argv)
    if args.trusted_checkpoint:
        from models.checkpoint import trust_checkpoints
        trust_checkpoints()
    vlm = load_model(args.checkpoint, config=args.config, overrides=args.override, device=args.device,
                     allow_partial=args.allow_partial_load)
    image = vlm.open_image(args.image)
    out: dict = {"itm": vlm.itm_score(image, args.text), "itc": float(vlm.similarity(image, args.text)[0, 0])}
    print(f"ITM match probability {out['itm']:.4f}, ITC similarity {out['itc']:.4f}")
    if args.box_png:
        xyxy = list(vlm.ground(image, args.text))
        drawn = image.convert("RGB")
        ImageDraw.Draw(drawn).rectangle([round(v) for v in xyxy], outline=(255, 0, 0),
                                        width=max(1, min(image.size) // 100))
        drawn.save(args.box_png)
        out["box_pixels"] = xyxy
        print("box (x0, y0, x1, y1): " + ", ".join(f"{v:.1f}" for v in xyxy) + f" -> {args.box_png}")
    if args.caption:
        out["caption"] = vlm.caption(image)
        print(f"caption: {out['caption']}")
    return out


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
