"""The 4M pretraining recipes (configs/pretrain/x2vlm_{base,large}_4m.yaml): they load, carry the official
recipe's numbers (sources in each file's header), and build models of the published sizes.

Models are built on the meta device: shapes and parameter counts without allocating any weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.x2vlm import X2VLM
from utils.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "pretrain" / "x2vlm_base_4m.yaml"
LARGE = ROOT / "configs" / "pretrain" / "x2vlm_large_4m.yaml"

# Numbers of the official recipes (configs/pretrain/x2vlm_{base,large}_4m.yaml of zengyan-97/X2-VLM).
COMMON = {
    "model.image_res": 224, "model.patch_size": 16, "model.embed_dim": 256, "model.temp": 0.07,
    "model.fusion.layers": 6, "model.fusion.init_from_text": True, "model.vision.drop_path": 0.1,
    "model.vision.init_values": 0.1, "model.max_frames": 0,
    "loss.itc": True, "loss.itm": True, "loss.mlm": True, "loss.bbox": True,
    "data.max_words": 40, "data.max_tokens": 40, "data.mask_prob": 0.5, "data.max_masks": 12,
    "data.mask_whole_word": True, "data.skipgram_prb": 0.2, "data.skipgram_size": 3,
    "data.regions.max_regions": 5, "data.regions.min_perc_in_image": 0.5,
    "data.crop_scale_pretrain": [0.2, 1.0], "data.randaugment": True, "data.randaugment_magnitude": 7,
    "data.train_file_videos": [],
    "optimizer.weight_decay": 0.01, "optimizer.lr_mult": 2.0,
    "scheduler.name": "linear", "scheduler.warmup": 2500,
    "train.clip_grad": 1.0, "train.grad_accum": 1, "train.precision": "bf16", "train.engine": "ddp",
    "train.ckpt_every": 50000, "seed": 42,
}
RECIPES = {
    "base": (BASE, {
        "model.vision.width": 768, "model.vision.depth": 12, "model.text.config.hidden_size": 768,
        "model.text.config.num_hidden_layers": 12,
        "data.images.batch_size": 128, "data.regions.batch_size": 128, "data.regions.max_images": 50,
        "optimizer.lr": 1.0e-4, "train.steps": 101 * 4995,  # 101 epochs of ceil(5114489 / (128 x 8)) steps
    }),
    "large": (LARGE, {
        "model.vision.width": 1024, "model.vision.depth": 24, "model.text.config.hidden_size": 1024,
        "model.text.config.num_hidden_layers": 12,
        "data.images.batch_size": 64, "data.regions.batch_size": 64, "data.regions.max_images": 25,
        "optimizer.lr": 5.0e-5, "train.steps": 250_000,
    }),
}
GPUS = {"base": 8, "large": 16}  # official global batch 1024 = per-GPU batch x GPUs


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_loads_with_official_numbers(name):
    path, specific = RECIPES[name]
    cfg = load_config(path)  # strict: an unknown key would raise ConfigError
    for key, expected in {**COMMON, **specific}.items():
        assert _get(cfg, key) == expected, f"{path.name}: {key} = {_get(cfg, key)!r}, recipe says {expected!r}"
    assert cfg["data"]["images"]["batch_size"] * GPUS[name] == 1024
    # every source is listed, with paths under data/
    assert len(cfg["data"]["train_file"]) == 4 and len(cfg["data"]["train_file_regions"]) == 6
    for f in cfg["data"]["train_file"] + cfg["data"]["train_file_regions"]:
        assert f.startswith("data/")


def _meta_model(path: Path) -> X2VLM:
    # the recipes name local weight folders (data/bert-*); build from the preset's text config instead
    cfg = load_config(path, ["model.text.name_or_path=null"])
    with torch.device("meta"):
        model = X2VLM.from_config(cfg, load_weights=False)
    assert next(model.parameters()).is_meta
    return model


def test_base_recipe_builds_255m_model_on_meta():
    model = _meta_model(BASE)
    n = sum(p.numel() for p in model.parameters())
    # measured 254,758,401 (paper: 255M): vision 85.76M, text 108.89M, fusion 56.71M, heads/projections 3.4M
    assert 254.5e6 < n < 255.5e6, n
    assert sum(p.numel() for p in model.vision_encoder.parameters()) == pytest.approx(85.76e6, rel=1e-3)
    assert len(model.fusion.layer) == 6 and len(model.text_encoder.encoder.layer) == 12
    assert model.vision_encoder.patch_embed.proj.weight.shape[-1] == 16


def test_large_recipe_builds_593m_model_on_meta():
    model = _meta_model(LARGE)
    n = sum(p.numel() for p in model.parameters())
    # measured 592,949,057 (official README: 593M): vision 303.41M, text 182.94M, fusion 100.78M
    assert 592.5e6 < n < 593.5e6, n
