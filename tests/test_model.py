"""X2VLM API shapes, pretraining losses and gradients, loss switches, bf16, tying, and a small learning run —
each for both fusion architectures (``model.architecture``: x2vlm and fiber), which the model serves through one
interface."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models import losses as L
from models.vision import box_patch_mask
from models.x2vlm import X2VLM
from utils.config import apply_overrides, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"
TINY_CONFIGS = {"x2vlm": CONFIGS / "tiny.yaml", "fiber": CONFIGS / "fiber_tiny.yaml"}
#: the pretraining losses of each architecture (FIBER's box head also scores patches: ``loss_align``)
LOSSES = {"x2vlm": {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"},
          "fiber": {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou", "loss_align"}}
BOX_LOSSES = {"loss_bbox", "loss_giou", "loss_align"}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def architecture(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_cfg(architecture: str) -> dict:
    """The tiny config of the architecture under test (overrides conftest's, so ``tiny_model`` and
    ``make_batch`` follow it)."""
    return load_config(TINY_CONFIGS[architecture])


def build(*overrides: str, architecture: str = "x2vlm", seed: int = 0) -> tuple[X2VLM, dict]:
    """Tiny model (eval mode) and its full config, with ``overrides`` applied."""
    cfg = load_config(TINY_CONFIGS[architecture], list(overrides))
    torch.manual_seed(seed)
    return X2VLM.from_config(cfg).eval(), cfg


def open_gates(model: X2VLM) -> X2VLM:
    """Gated cross-attentions (FIBER's, which start at 0: the fused layers then compute the plain backbone layers,
    and the image cannot reach the text) set to 0.5; a model without gates is returned as it is."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(0.5)
    return model


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator (hard-negative sampling, random inputs)."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- encoders and heads

def test_encode_image_shapes(tiny_model: X2VLM) -> None:
    images = torch.randn(2, 3, 64, 64, generator=gen())
    with torch.no_grad():
        embeds, atts = tiny_model.encode_image(images)
    assert tiny_model.grid_size == 8
    assert embeds.shape == (2, 65, 64)
    assert atts.dtype == torch.long and torch.equal(atts, torch.ones(2, 65, dtype=torch.long))
    assert torch.allclose(embeds.final[:, 0], embeds.final[:, 1:].mean(1), atol=1e-6)


def test_encode_image_with_boxes_and_index(tiny_model: X2VLM) -> None:
    images = torch.randn(2, 3, 64, 64, generator=gen())
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.9375, 0.9375, 0.1, 0.1]])
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        full, _ = tiny_model.encode_image(images)
        concepts, atts = tiny_model.encode_image(images, boxes, index)
    assert concepts.shape == (3, 65, 64)
    assert torch.equal(atts, box_patch_mask(boxes, 8))
    # box 0: a 4x4 block of patches; box 1: all; box 2: x, y in [7.1, 7.9] patch units → only the last patch
    assert int(atts[0].sum()) == 1 + 16 and int(atts[1].sum()) == 65 and int(atts[2].sum()) == 1 + 1
    assert atts[2, -1] == 1
    for row, img in enumerate(index.tolist()):
        for part in ("final", "state") if full.state is not None else ("final",):
            concept, image = getattr(concepts, part), getattr(full, part)
            assert torch.allclose(concept[row, 1:], image[img, 1:])
            selected = image[img, 1:][atts[row, 1:].bool()]
            assert torch.allclose(concept[row, 0], selected.mean(0), atol=1e-6)
    with pytest.raises(ValueError):
        tiny_model.encode_image(images, boxes)  # 3 boxes, 2 images, no index


def test_encode_video_is_time_mean_with_temporal_embedding(architecture: str) -> None:
    model, _ = build("model.max_frames=4", architecture=architecture)
    assert model.absolute_frame_pos_embed.shape == (1, 4, 1, 64)
    frames = torch.randn(2, 3, 3, 64, 64, generator=gen(1))
    with torch.no_grad():
        embeds, atts = model.encode_video(frames)
        per_frame = torch.stack([model.vision_encoder(frames[:, t]) for t in range(3)], dim=1)
        expected = (per_frame + model.absolute_frame_pos_embed[:, :3]).mean(dim=1)
        without_time = per_frame.mean(dim=1)
    assert embeds.shape == (2, 65, 64) and atts.shape == (2, 65)
    assert torch.allclose(embeds.final, expected, atol=1e-5)
    assert (embeds.final - without_time).abs().max() > 1e-4  # the temporal embedding is really added
    with pytest.raises(ValueError, match="max_frames"):
        model.encode_video(torch.randn(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        model.encode_video(torch.randn(2, 3, 64, 64))


def test_encode_video_without_temporal_embedding(tiny_model: X2VLM) -> None:
    assert tiny_model.absolute_frame_pos_embed is None
    frames = torch.randn(1, 2, 3, 64, 64, generator=gen(2))
    with torch.no_grad():
        embeds, _ = tiny_model.encode_video(frames)
        expected = (tiny_model.vision_encoder(frames[:, 0]) + tiny_model.vision_encoder(frames[:, 1])) / 2
    assert torch.allclose(embeds.final, expected, atol=1e-5)


def test_text_fusion_and_head_shapes(tiny_model: X2VLM, make_batch: Callable[..., dict]) -> None:
    open_gates(tiny_model)
    b = make_batch(n_images=3, n_texts=3, seq_len=8)
    with torch.no_grad():
        image_embeds, image_atts = tiny_model.encode_image(b["images"])
        text_embeds = tiny_model.encode_text(b["text_ids"], b["text_atts"])
        fused = tiny_model.fuse(image_embeds, image_atts, text_embeds, b["text_atts"])
        img_feat = tiny_model.image_features(image_embeds)
        txt_feat = tiny_model.text_features(text_embeds)
        itm = tiny_model.itm_logits(image_embeds, image_atts, text_embeds, b["text_atts"])
        boxes = tiny_model.predict_boxes(image_embeds, text_embeds, b["text_atts"])
        mlm = tiny_model.mlm_logits(fused, b["mlm_positions"])
    assert text_embeds.shape == (3, 8, 64)
    assert fused.shape == (3, 8, 64)
    assert img_feat.shape == (3, 32) and txt_feat.shape == (3, 32)
    assert torch.allclose(img_feat.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt_feat.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert itm.shape == (3, 2)
    assert boxes.shape == (3, 4) and (boxes > 0).all() and (boxes < 1).all()
    assert mlm.shape == (3, 2, 512)
    # mlm_logits reads the fusion output at the given positions
    row, j = 1, 0
    pos = int(b["mlm_positions"][row, j])
    with torch.no_grad():
        direct = tiny_model.mlm_head(fused[row:row + 1, pos:pos + 1])[0, 0]
    assert torch.allclose(mlm[row, j], direct, atol=1e-5)
    # the fusion output depends on the image
    with torch.no_grad():
        other = tiny_model.fuse(image_embeds[[2, 1, 0]], image_atts, text_embeds, b["text_atts"])
    assert (other - fused).abs().max() > 1e-4


def test_mlm_decoder_is_tied_to_word_embeddings(tiny_model: X2VLM) -> None:
    emb = tiny_model.text_encoder.get_input_embeddings().weight
    assert tiny_model.mlm_head.predictions.decoder.weight is emb
    assert tiny_model.mlm_head.predictions.bias is tiny_model.mlm_head.predictions.decoder.bias
    names = [n for n, p in tiny_model.named_parameters() if p is emb]
    assert len(names) == 1  # counted once by named_parameters
    opt = torch.optim.SGD(tiny_model.parameters(), lr=1.0)
    tiny_model.mlm_head(torch.randn(2, 3, 64)).sum().backward()
    opt.step()
    assert tiny_model.mlm_head.predictions.decoder.weight is tiny_model.text_encoder.get_input_embeddings().weight


def test_clamp_temperature(tiny_model: X2VLM, tiny_cfg: dict) -> None:
    lo, hi = tiny_cfg["model"]["temp_min"], tiny_cfg["model"]["temp_max"]
    assert tiny_model.temp.item() == pytest.approx(0.07)
    with torch.no_grad():
        tiny_model.temp.fill_(10.0)
    tiny_model.clamp_temperature()
    assert tiny_model.temp.item() == pytest.approx(hi)
    with torch.no_grad():
        tiny_model.temp.fill_(-1.0)
    tiny_model.clamp_temperature()
    assert tiny_model.temp.item() == pytest.approx(lo)
    with torch.no_grad():
        tiny_model.temp.fill_(0.2)
    tiny_model.clamp_temperature()
    assert tiny_model.temp.item() == pytest.approx(0.2)
    assert tiny_model.temp.requires_grad


# ---------------------------------------------------------------- pretraining losses

def test_forward_pretrain_losses(tiny_model: X2VLM, make_batch: Callable[..., dict], architecture: str) -> None:
    b = make_batch(n_images=2, n_texts=4)
    out = tiny_model.forward_pretrain(b, generator=gen())
    assert set(out) == LOSSES[architecture] | {"loss"}
    for k in LOSSES[architecture]:
        assert out[k].ndim == 0 and torch.isfinite(out[k]) and out[k] > 0, k
    assert torch.allclose(out["loss"], sum(out[k] for k in LOSSES[architecture]))
    # forward() is the same computation (hard negatives aside)
    out2 = tiny_model(b)
    assert set(out2) == set(out)
    assert torch.allclose(out2["loss_itc"], out["loss_itc"]) and torch.allclose(out2["loss_mlm"], out["loss_mlm"])


def test_every_parameter_gets_a_gradient(make_batch: Callable[..., dict], architecture: str) -> None:
    model, cfg = build("model.max_frames=2", architecture=architecture)
    open_gates(model).train()
    b = make_batch(cfg=cfg, n_images=2, n_texts=4)
    b["videos"] = torch.randn(1, 2, 3, 64, 64, generator=gen(3))
    b["image_index"] = torch.tensor([0, 1, 2, 2])  # the last two texts describe the video
    model.forward_pretrain(b, generator=gen())["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_visual_concepts_pool_images_and_videos(architecture: str) -> None:
    model, cfg = build("model.max_frames=2", architecture=architecture)
    images = torch.randn(2, 3, 64, 64, generator=gen(4))
    videos = torch.randn(1, 2, 3, 64, 64, generator=gen(5))
    batch = {"images": images, "videos": videos, "text_ids": torch.zeros(3, 4, dtype=torch.long),
             "image_index": torch.tensor([2, 0, 1])}
    with torch.no_grad():
        concepts, atts, full = model.visual_concepts(batch)
        assert torch.allclose(concepts.final[0], model.encode_video(videos)[0].final[0], atol=1e-5)
        assert torch.allclose(concepts.final[1:], model.vision_encoder(images), atol=1e-5)
        assert torch.equal(atts, torch.ones(3, 65, dtype=torch.long))
        # with boxes, only region rows get a box concept; whole-image rows keep every patch
        batch["boxes"] = torch.tensor([[0.25, 0.25, 0.5, 0.5]] * 3)
        batch["is_region"] = torch.tensor([True, False, True])
        concepts, atts, full2 = model.visual_concepts(batch)
    assert torch.allclose(full2.final, full.final)
    assert int(atts[0].sum()) == 17 and int(atts[1].sum()) == 65 and int(atts[2].sum()) == 17
    assert torch.allclose(concepts.final[1, 0], full.final[1, 1:].mean(0), atol=1e-6)
    assert torch.allclose(concepts.final[2, 0], full.final[2, 1:][atts[2, 1:].bool()].mean(0), atol=1e-6)


@pytest.mark.parametrize(("flag", "gone"), [
    ("itc", {"loss_itc"}), ("itm", {"loss_itm"}), ("mlm", {"loss_mlm"}), ("bbox", BOX_LOSSES),
])
def test_loss_flags_switch_losses_off(flag: str, gone: set[str], make_batch: Callable[..., dict],
                                      architecture: str) -> None:
    model, cfg = build(f"loss.{flag}=false", architecture=architecture)
    assert model.loss_cfg[flag] is False
    out = model.forward_pretrain(make_batch(cfg=cfg), generator=gen())
    assert set(out) == (LOSSES[architecture] - gone) | {"loss"}
    assert torch.allclose(out["loss"], sum(v for k, v in out.items() if k != "loss"))


def test_all_losses_off_and_missing_inputs(make_batch: Callable[..., dict], architecture: str) -> None:
    model, cfg = build("loss.itc=false", "loss.itm=false", "loss.mlm=false", "loss.bbox=false",
                       architecture=architecture)
    out = model.forward_pretrain(make_batch(cfg=cfg))
    assert set(out) == {"loss"} and out["loss"].item() == 0.0
    model, cfg = build(architecture=architecture)
    b = make_batch(cfg=cfg)
    for key in ("mlm_ids", "boxes", "is_region"):
        b.pop(key)
    out = model.forward_pretrain(b, generator=gen())
    assert set(out) == {"loss_itc", "loss_itm", "loss"}


def test_bf16_autocast_forward_pretrain(tiny_model: X2VLM, make_batch: Callable[..., dict]) -> None:
    b = make_batch(n_images=2, n_texts=4)
    ref = tiny_model.forward_pretrain(b, generator=gen())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model.forward_pretrain(b, generator=gen())
    assert set(out) == set(ref)
    for k, v in out.items():
        assert torch.isfinite(v), k
        assert abs(v.float().item() - ref[k].item()) < 0.1 * max(1.0, ref[k].item()), k
    out["loss"].backward()
    assert torch.isfinite(tiny_model.vision_proj.weight.grad).all()


def test_grad_checkpointing_matches(make_batch: Callable[..., dict], architecture: str) -> None:
    plain, cfg = build(architecture=architecture)
    ckpt, _ = build("model.grad_checkpointing=true", architecture=architecture)
    ckpt.load_state_dict(plain.state_dict())
    plain.train()
    ckpt.train()
    assert ckpt.fusion.grad_checkpointing and ckpt.vision_encoder.grad_checkpointing
    b = make_batch(cfg=cfg)
    a = plain.forward_pretrain(b, generator=gen())
    c = ckpt.forward_pretrain(b, generator=gen())
    assert torch.allclose(a["loss"], c["loss"], atol=1e-5)
    a["loss"].backward()
    c["loss"].backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


# ---------------------------------------------------------------- learning

def synthetic_task(n: int = 8, seq_len: int = 8, res: int = 32, seed: int = 0) -> dict[str, Any]:
    """``n`` random images, each with its own caption and one region text (own box); fixed MLM masks."""
    g = gen(seed)
    ids = torch.randint(5, 512, (2 * n, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    atts = torch.ones_like(ids)
    for i in range(1, 2 * n, 3):  # some padded rows
        ids[i, -2], ids[i, -1], atts[i, -1] = 3, 0, 0
    positions = torch.stack([torch.randperm(seq_len - 3, generator=g)[:2] + 1 for _ in range(2 * n)])
    mlm_ids = ids.clone().scatter_(1, positions, 4)
    region_boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.rand(n, 2, generator=g) * 0.3 + 0.2],
                             dim=1)
    return {
        "images": torch.randn(n, 3, res, res, generator=g),
        "text_ids": ids, "text_atts": atts,
        "image_index": torch.arange(2 * n) % n,
        "boxes": torch.cat([torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(n, 1), region_boxes]),
        "is_region": torch.arange(2 * n) >= n,
        "ids": torch.arange(2 * n),
        "mlm_ids": mlm_ids, "mlm_positions": positions, "mlm_labels": torch.gather(ids, 1, positions),
    }


def evaluate(model: X2VLM, batch: dict[str, Any], n: int) -> tuple[dict[str, float], float, float]:
    """Losses (fixed hard negatives) and image→text / text→image R@1 of the ``n`` captions."""
    model.eval()
    with torch.no_grad():
        out = {k: v.item() for k, v in model.forward_pretrain(batch, generator=gen()).items()}
        img = model.image_features(model.encode_image(batch["images"])[0])
        txt = model.text_features(model.encode_text(batch["text_ids"][:n], batch["text_atts"][:n]))
        sim = img @ txt.t()
        target = torch.arange(n)
        i2t = (sim.argmax(1) == target).float().mean().item()
        t2i = (sim.argmax(0) == target).float().mean().item()
    model.train()
    return out, i2t, t2i


def test_tiny_model_learns_synthetic_task(architecture: str) -> None:
    n = 8
    model, _ = build("model.image_res=32", architecture=architecture)
    batch = synthetic_task(n)
    before, _, _ = evaluate(model, batch, n)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = gen(1)
    for _ in range(150):
        loss = model.forward_pretrain(batch, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_temperature()
    after, i2t, t2i = evaluate(model, batch, n)
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    for k in ("loss_itc", "loss_mlm", "loss_bbox", "loss_giou"):
        assert after[k] < 0.5 * before[k], (k, before[k], after[k])
    assert i2t == 1.0 and t2i == 1.0, (i2t, t2i)


def test_itm_negatives_stay_in_their_group_and_follow_the_seed(tiny_cfg: dict, make_batch: Callable[..., dict],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = X2VLM.from_config(apply_overrides(tiny_cfg, ["loss.itm_neg_group=3"])).eval()
    drawn = []
    original = L.sample_hard_negatives

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(L, "sample_hard_negatives", spy)
    batch = make_batch(n_images=3, n_texts=6)
    batch["ids"] = torch.arange(6)
    with torch.no_grad():
        a = model.forward_pretrain({**batch, "sample_seed": 5})["loss_itm"]
        b = model.forward_pretrain({**batch, "sample_seed": 5})["loss_itm"]
    assert len(drawn) == 4 and all(d[0].shape == (3,) for d in drawn)  # 2 groups of 3, per forward
    assert all(int(d[0].max()) < 3 and int(d[2].max()) < 3 for d in drawn)  # indices within the group
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(drawn[0], drawn[2], strict=True))
    with pytest.raises(ValueError, match="itm_neg_group=4"):
        X2VLM.from_config(apply_overrides(tiny_cfg, ["loss.itm_neg_group=4"])).forward_pretrain(batch)


def test_bert_init_sets_each_module_kind() -> None:
    from models.weight_init import bert_init_
    torch.manual_seed(0)
    lin, emb, norm = nn.Linear(256, 256), nn.Embedding(300, 64, padding_idx=0), nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(1.0)
    for m in (lin, emb, norm):
        bert_init_(m, std=0.125)
    assert float(lin.weight.std()) == pytest.approx(0.125, rel=0.05)
    assert float(lin.weight.abs().max()) <= 2.0 + 1e-6 and not lin.bias.any()
    assert float(emb.weight[1:].std()) == pytest.approx(0.125, rel=0.05) and not emb.weight[0].any()
    assert torch.equal(norm.weight, torch.ones(8)) and not norm.bias.any()
