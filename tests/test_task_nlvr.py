"""NLVR2 (models/nlvr.py, NLVR.py): the two-pass classifier and a short fine-tune of a random tiny model that
ends clearly above the majority-class rate of the test split.

The fine-tune uses NLVR2-format pairs of the generated images with colour sentences ("there are red shapes in
both images", true when both images hold a shape of that colour), written here from the generator's
grounding annotations (which name every shape). The generator's own NLVR pairs ask about shape kinds, which a
randomly initialised tiny model does not learn within a test's budget.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import NLVR
from dataset.synthetic import generate
from models.nlvr import X2VLMForNLVR
from utils.config import load_config
from utils.evaluation.nlvr import nlvr_metrics

DEMO = "configs/finetune/nlvr_demo.yaml"
COLOURS = ("red", "blue")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, str]:
    return generate(tmp_path_factory.mktemp("nlvr_data"), n_images=64, n_videos=0)


def _colours(grounding_file: str) -> dict[str, set[str]]:
    """Image path → colours of its shapes (grounding texts read "<colour> <kind> ...")."""
    out: dict[str, set[str]] = {}
    for row in json.loads(Path(grounding_file).read_text()):
        out.setdefault(row["image"], set()).add(row["text"].split()[0])
    return out


def _colour_pairs(grounding_file: str, n: int, rng: random.Random) -> list[dict]:
    """``n`` NLVR2 records, alternately true and false."""
    colours = _colours(grounding_file)
    images = sorted(colours)
    rows: list[dict] = []
    while len(rows) < n:
        colour, want = rng.choice(COLOURS), len(rows) % 2 == 0
        left, right = rng.sample(images, 2)
        if (colour in colours[left] and colour in colours[right]) != want:
            continue
        rows.append({"images": [left, right], "sentence": f"There are {colour} shapes in both images.",
                     "label": "True" if want else "False"})
    return rows


def test_model_heads_and_batch_independence() -> None:
    cfg = load_config(DEMO)
    torch.manual_seed(0)
    model = X2VLMForNLVR.from_config(cfg, load_weights=False).eval()
    width = model.text_width
    head = model.cls_head
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (2 * width, 4 * width, 2)
    for name in ("itm_head", "bbox_head", "mlm_head", "vision_proj", "text_proj"):
        assert not hasattr(model, name)
    res = cfg["model"]["image_res"]
    batch = {"image0": torch.randn(3, 3, res, res), "image1": torch.randn(3, 3, res, res),
             "text_ids": torch.randint(5, 100, (3, 7)), "text_atts": torch.ones(3, 7, dtype=torch.long),
             "label": torch.tensor([0, 1, 1])}
    out = model(batch)
    assert out["loss"].ndim == 0 and 0.0 <= float(out["acc"]) <= 1.0
    with torch.no_grad():
        full = model.logits(batch["image0"], batch["image1"], batch["text_ids"], batch["text_atts"])
        one = model.logits(batch["image0"][1:2], batch["image1"][1:2], batch["text_ids"][1:2],
                           batch["text_atts"][1:2])
        swapped = model.logits(batch["image1"], batch["image0"], batch["text_ids"], batch["text_atts"])
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, swapped)  # left and right are told apart (concatenation order)


def test_metrics_hand_case() -> None:
    m = nlvr_metrics([1, 0, 1, 1], [1, 0, 0, 0])
    assert m == {"acc": 50.0, "majority": 75.0, "n": 4}


def test_finetune_above_majority(synth, tmp_path) -> None:
    rng = random.Random(0)
    train = tmp_path / "nlvr_colour_train.json"
    test = tmp_path / "nlvr_colour_test.json"
    train.write_text(json.dumps(_colour_pairs(synth["grounding_train"], 600, rng)))
    test_rows = _colour_pairs(synth["grounding_test"], 64, rng)
    test.write_text(json.dumps(test_rows))
    labels = [r["label"] == "True" for r in test_rows]
    majority = 100.0 * max(sum(labels), len(labels) - sum(labels)) / len(labels)

    overrides = [f"data.root={synth['root']}", f"model.text.tokenizer={synth['vocab']}",
                 f"data.finetune.train_file=[{train}]", f"data.finetune.test_file=[{test}]",
                 "model.image_res=32", "data.crop_scale_finetune=[1.0,1.0]", "train.epochs=6",
                 "optimizer.lr=3.0e-4"]
    argv = ["--config", DEMO, "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    results = NLVR.main(argv + [a for o in overrides for a in ("--override", o)])
    print(f"nlvr: test acc {results['test/acc']:.1f}% vs majority {majority:.1f}%")
    assert results["test/n"] == len(test_rows)
    assert results["test/majority"] == pytest.approx(majority)
    assert results["test/acc"] >= majority + 15.0
    assert json.loads((tmp_path / "out" / "nlvr.json").read_text()) == pytest.approx(results)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_official_recipe_config_loads() -> None:
    cfg = load_config("configs/finetune/nlvr2.yaml")  # strict: every key exists in configs/defaults.yaml
    ft = cfg["data"]["finetune"]
    assert (cfg["model"]["image_res"], cfg["model"]["vision"]["width"], cfg["model"]["fusion"]["layers"]) == \
        (384, 768, 6)
    assert (ft["batch_size_train"], cfg["optimizer"]["lr"], cfg["optimizer"]["lr_mult"]) == (10, 3.0e-5, 2.0)
    assert (cfg["train"]["epochs"], cfg["scheduler"]["warmup"], cfg["train"]["clip_grad"]) == (10, 0.1, 0.0)
    assert cfg["data"]["hflip"] == "careful" and ft["val_file"] and ft["test_file"]
