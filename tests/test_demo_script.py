"""scripts/demo.py: ITM/ITC scores of an image-text pair and the predicted box drawn into a PNG."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from dataset.synthetic import generate
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)


def test_box_pixels() -> None:
    assert demo.box_pixels([0.5, 0.25, 0.5, 0.5], 200, 100) == [50.0, 0.0, 150.0, 50.0]


def test_scores_and_box_png(tmp_path: Path) -> None:
    files = generate(tmp_path / "syn", seed=0, n_images=4, n_videos=0)
    image = tmp_path / "syn" / "images" / "img_0000.jpg"
    torch.manual_seed(0)
    out = demo.main(["--config", str(ROOT / "configs" / "models" / "tiny.yaml"),
                     "--override", f"model.text.tokenizer={files['vocab']}", "--image", str(image),
                     "--text", "a red circle", "--box_png", str(tmp_path / "box.png")])
    assert 0.0 <= out["itm"] <= 1.0 and -1.0 <= out["itc"] <= 1.0
    x0, y0, x1, y1 = out["box_pixels"]
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96  # sigmoid box inside the 96 px image
    drawn = Image.open(tmp_path / "box.png").convert("RGB")
    assert drawn.size == (96, 96)
    assert drawn.getpixel((int(round(x0)), int((y0 + y1) / 2))) == pytest.approx((255, 0, 0), abs=40)  # left edge red
