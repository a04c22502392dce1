"""Draw the X²-VLM architecture diagram into docs/architecture.png (described in docs/architecture.md).

    python scripts/draw_architecture.py                 # → docs/architecture.png
    python scripts/draw_architecture.py --out arch.png

Left: how one vision pass gives the three kinds of visual concept (whole image, box region, video). The patch
grid of the region panel is computed with the model's own rule (``models.vision.box_patch_mask``), so the
picture shows exactly which patches a box selects. Right: text encoder, fusion, heads and losses.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "architecture.png"

VISION, TEXT, FUSION, HEAD, LOSS, DATA = "#cfe3f7", "#fde2c4", "#d9f0d3", "#eadcf5", "#f8d0d0", "#eeeeee"


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, size: float = 8.5,
         bold: bool = False) -> tuple[float, float, float, float]:
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", linewidth=1.0,
                                edgecolor="#444444", facecolor=color))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            fontweight="bold" if bold else "normal", wrap=True)
    return x, y, w, h


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", color: str = "#333333",
           style: str = "-|>", rad: float = 0.0) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": style, "color": color, "lw": 1.2,
                                                      "connectionstyle": f"arc3,rad={rad}"})
    if text:
        ax.text((start[0] + end[0]) / 2 + 0.08, (start[1] + end[1]) / 2, text, fontsize=7, color=color,
                ha="left", va="center")


def _patch_grid(ax, x: float, y: float, size: float, grid: int, box_cxcywh: tuple[float, float, float, float]
                ) -> int:
    """The ``grid``² patch grid of an image with ``box`` drawn; selected patches (box_patch_mask) shaded.
    Returns how many patches the box selects."""
    import torch
    from matplotlib.patches import Rectangle

    from models.vision import box_patch_mask
    mask = box_patch_mask(torch.tensor([box_cxcywh]), grid)[0, 1:].view(grid, grid)
    cell = size / grid
    for r in range(grid):
        for c in range(grid):
            on = bool(mask[r, c])
            ax.add_patch(Rectangle((x + c * cell, y + size - (r + 1) * cell), cell, cell, linewidth=0.4,
                                   edgecolor="#777777", facecolor="#7fb3e6" if on else "white"))
    cx, cy, w, h = box_cxcywh
    ax.add_patch(Rectangle((x + (cx - w / 2) * size, y + size - (cy + h / 2) * size), w * size, h * size,
                           linewidth=1.8, edgecolor="#d62728", facecolor="none"))
    return int(mask.sum())


def draw(out: str | Path = OUTPUT) -> Path:
    """Render the diagram to ``out`` (PNG) and return the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(16, 9))
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 9)
    ax.axis("off")
    ax.text(8, 8.75, "X²-VLM: one vision pass → visual concepts; text encoder; cross-attention fusion; heads",
            ha="center", fontsize=13, fontweight="bold")

    # ---------------------------------------------------------------- vision side
    _box(ax, 0.2, 7.3, 2.2, 0.8, "image (R×R)\nor video frames (T×R×R)", DATA)
    _box(ax, 0.2, 5.9, 2.2, 0.9, "patch embedding\n(R/p)² patches of p×p px", VISION)
    _box(ax, 0.2, 4.3, 2.2, 1.1, "BEiT-2 vision encoder\n(ViT blocks, relative\nposition bias, layer scale)",
         VISION)
    _box(ax, 0.2, 3.0, 2.2, 0.8, "patch tokens  P × D_v", VISION)
    _arrow(ax, (1.3, 7.3), (1.3, 6.8))
    _arrow(ax, (1.3, 5.9), (1.3, 5.4))
    _arrow(ax, (1.3, 4.3), (1.3, 3.8))

    # three concepts from the same tokens
    _box(ax, 3.0, 6.9, 3.0, 1.0, "whole image concept\n[CLS] = mean of all P patches\ntokens: [CLS] + P patches",
         VISION, 8)
    _box(ax, 3.0, 4.2, 3.0, 1.5, "box region concept\nmask = patches the box touches\n[CLS] = mean of those patches\n"
         "tokens: [CLS] + their patches\n(others masked out; no 2nd pass)", VISION, 8)
    _box(ax, 3.0, 1.9, 3.0, 1.2, "video concept\neach frame encoded, + temporal\nembedding, mean over T frames",
         VISION, 8)
    _arrow(ax, (2.4, 3.4), (3.0, 7.3), rad=-0.15)
    _arrow(ax, (2.4, 3.4), (3.0, 4.9))
    _arrow(ax, (2.4, 3.4), (3.0, 2.5), rad=0.1)

    grid, box = 8, (0.42, 0.55, 0.38, 0.42)
    n = _patch_grid(ax, 0.35, 0.25, 1.9, grid, box)
    ax.text(2.4, 1.1, f"region → concept:\nbox (red) on the {grid}×{grid}\npatch grid selects the\n{n} shaded "
            f"patches\n(models.vision.box_patch_mask)", fontsize=7.5, va="center")
    _arrow(ax, (2.25, 1.9), (3.6, 4.2), color="#d62728", rad=-0.2)

    # ---------------------------------------------------------------- text side
    _box(ax, 12.9, 7.3, 2.9, 0.8, "text  \"[CLS] a dog on a sofa [SEP]\"", DATA)
    _box(ax, 12.9, 5.7, 2.9, 1.1, "text encoder\n(BERT / RoBERTa / XLM-R,\nfirst L_t layers; transformers)", TEXT)
    _box(ax, 12.9, 4.5, 2.9, 0.7, "text tokens  L × D_t", TEXT)
    _arrow(ax, (14.35, 7.3), (14.35, 6.8))
    _arrow(ax, (14.35, 5.7), (14.35, 5.2))

    # ---------------------------------------------------------------- ITC
    _box(ax, 6.8, 7.1, 5.4, 0.9, "ITC: vision_proj([CLS] of concept) · text_proj([CLS] of text)\n"
         "cosine / learnable temperature, over the global batch", LOSS, 8.5)
    _arrow(ax, (6.0, 7.4), (6.8, 7.5))
    _arrow(ax, (12.9, 6.25), (12.2, 7.4), "[CLS]", rad=0.1)

    # ---------------------------------------------------------------- fusion
    _box(ax, 6.8, 3.6, 5.4, 2.6, "", FUSION)
    ax.text(9.5, 5.9, "fusion encoder (L_f layers)", ha="center", fontsize=10, fontweight="bold")
    ax.text(9.5, 4.8, "per layer: self-attention over text tokens\n→ cross-attention: text queries,\n"
            "   keys/values = the concept's tokens (masked)\n→ feed-forward", ha="center", va="center", fontsize=8.5)
    ax.text(9.5, 3.85, "output: fused text states, [CLS] first", ha="center", fontsize=8, style="italic")
    _arrow(ax, (6.0, 7.2), (6.8, 5.6), rad=0.1)
    _arrow(ax, (6.0, 4.9), (6.8, 4.9))
    _arrow(ax, (6.0, 2.5), (6.8, 4.0), rad=-0.1)
    ax.text(6.4, 6.55, "concept tokens:\nkeys / values", fontsize=7.5, ha="center", color="#333333")
    _arrow(ax, (12.9, 4.85), (12.2, 4.85))
    ax.text(12.55, 5.05, "queries", fontsize=7.5, ha="center", color="#333333")

    # ---------------------------------------------------------------- heads
    heads = [
        (6.8, "ITM head (MLP → 2)\nmatch / no match;\nhard negatives in batch", "ITM loss (CE)"),
        (8.65, "bbox head (MLP → 4)\nsigmoid box of the\ntext's referent", "L1 + GIoU"),
        (10.5, "MLM head (tied to\nword embeddings):\nmasked text tokens", "MLM loss (CE)"),
    ]
    for x, text, loss in heads:
        _box(ax, x, 1.75, 1.75, 1.2, text, HEAD, 7.2)
        _box(ax, x + 0.2, 0.8, 1.35, 0.5, loss, LOSS, 7.5)
        _arrow(ax, (x + 0.875, 3.6), (x + 0.875, 2.95))
        _arrow(ax, (x + 0.875, 1.75), (x + 0.875, 1.3))
    _box(ax, 12.6, 0.8, 3.2, 3.0, "fine-tuning heads\n\nVQA: answer decoder (causal,\ncross-attends fused states),"
         "\ncandidate answers ranked\n\ncaptioning: MLM head under a\ncausal mask, [MASK] appended\n\nNLVR2: two "
         "image passes,\nconcatenated [CLS] → MLP", HEAD, 7.5)
    _arrow(ax, (12.2, 4.2), (12.9, 3.5), rad=-0.2)
    ax.text(8, 0.3, "pretraining loss = ITC + ITM + MLM + bbox (each switchable under loss:)",
            ha="center", fontsize=9, style="italic")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUTPUT), help="PNG to write (default: docs/architecture.png)")
    args = p.parse_args(argv)
    out = draw(args.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
