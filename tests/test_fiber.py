"""FIBER-style fusion in the backbone (models/fiber.py, ``model.architecture: fiber``): gate-zero equivalence
with the plain backbones, the effect of open gates, no future-token leak under the causal mask, per-text image
selection, the box head on the fused image patches, every task script on its demo config, train.stages switching
the losses (the tiny preset's pretraining demo to zero-shot retrieval and grounding above chance is in
tests/test_pretrain_demo.py)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from models.x2vlm import X2VLM
from tests.conftest import ROOT, random_batch
from utils.config import ConfigError, apply_overrides, load_config
from utils.dist import DistInfo
from utils.trainer import Trainer

FIBER_TINY = ROOT / "configs" / "models" / "fiber_tiny.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(FIBER_TINY, ["model.fiber.layers=2"])  # both tiny layers fused: every path is exercised


def build(cfg: dict) -> X2VLM:
    torch.manual_seed(0)
    return X2VLM.from_config(cfg).eval()


def set_gates(model: X2VLM, text: float, image: float) -> None:
    with torch.no_grad():
        for m in model.fusion.text_cross:
            m.gate.fill_(text)
        for m in model.fusion.image_cross:
            m.gate.fill_(image)


def inputs(cfg: dict, seed: int = 0) -> dict:
    return random_batch(cfg, n_images=2, n_texts=4, seq_len=9, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_unimodal_pass_is_the_plain_backbones_and_zero_gates_fuse_to_them(cfg, tiny_cfg) -> None:
    model, b = build(cfg), inputs(cfg)
    assert model.fusion.gates() == {"text.0": 0.0, "text.1": 0.0, "image.0": 0.0, "image.1": 0.0}
    plain = X2VLM.from_config(tiny_cfg).eval()  # X²-VLM with the same backbones and projections
    missing, _ = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing and all(k.startswith(("fusion.", "bbox_head.")) for k in missing)  # FIBER's box head differs
    image, image_atts = model.encode_image(b["images"])
    text = model.encode_text(b["text_ids"], b["text_atts"])
    plain_image, _ = plain.encode_image(b["images"])
    plain_text = plain.encode_text(b["text_ids"], b["text_atts"])
    assert plain_image.state is None and plain_text.state is None  # a fusion after the encoders needs no state
    assert image.state.shape == plain_image.shape and text.state.shape == plain_text.shape
    assert torch.equal(image.final, plain_image.final) and torch.equal(text.final, plain_text.final)
    assert torch.equal(model.image_features(image), plain.image_features(plain_image))
    assert torch.equal(model.text_features(text), plain.text_features(plain_text))
    # the states: the sequences entering the fused layers (here: the embeddings, K = depth = 2)
    assert torch.equal(image.state, model.vision_encoder.embed(b["images"]))
    # the fused pass re-runs the top layers; with zero gates it is the plain text encoder again
    fused = model.fuse(image, image_atts, text, b["text_atts"], image_index=b["image_index"])
    torch.testing.assert_close(fused, plain_text.final, rtol=0, atol=1e-6)
    # open gates: the fused output changes and depends on the image and on the image stream's own fusion
    set_gates(model, 5.0, 0.0)
    text_only = model.fuse(image, image_atts, text, b["text_atts"], image_index=b["image_index"])
    assert (text_only - plain_text.final).abs().max() > 1e-2
    other = model.fuse(image, image_atts, text, b["text_atts"], image_index=1 - b["image_index"])
    assert (other - text_only).abs().max() > 1e-2
    set_gates(model, 5.0, 5.0)
    both = model.fuse(image, image_atts, text, b["text_atts"], image_index=b["image_index"])
    assert (both - text_only).abs().max() > 1e-3
    # ... while the uni-modal pass stays the plain backbones
    assert torch.equal(model.encode_text(b["text_ids"], b["text_atts"]).final, plain_text.final)


@torch.no_grad()
def test_image_index_selects_each_texts_image_and_masks_are_respected(cfg) -> None:
    model, b = build(cfg), inputs(cfg)
    set_gates(model, 5.0, 5.0)
    image, atts = model.encode_image(b["images"])
    text = model.encode_text(b["text_ids"], b["text_atts"])
    idx = b["image_index"]
    shared = model.itm_logits(image, atts, text, b["text_atts"], image_index=idx)
    repeated = model.itm_logits(image[idx], atts[idx], text, b["text_atts"])
    torch.testing.assert_close(shared, repeated, rtol=0, atol=1e-6)
    # padding keys are ignored: changing the padded tokens' ids changes nothing at the real tokens
    ids = b["text_ids"].clone()
    ids[b["text_atts"] == 0] = 7
    again = model.fuse(image[idx], atts[idx], model.encode_text(ids, b["text_atts"]), b["text_atts"])
    base = model.fuse(image[idx], atts[idx], text, b["text_atts"])
    real = b["text_atts"].bool()
    torch.testing.assert_close(again[real], base[real], rtol=0, atol=1e-5)


@torch.no_grad()
def test_causal_fuse_does_not_leak_future_tokens(cfg) -> None:
    model, b = build(cfg), inputs(cfg)
    set_gates(model, 5.0, 5.0)
    from models.captioning import caption_attention
    image, _ = model.encode_image(b["images"][:1])
    ids = b["text_ids"][:1].clone()
    ids2 = ids.clone()
    ids2[0, 5:] = 9
    full = torch.ones_like(ids)
    # the text pass under the causal mask too, as captioning runs it
    attn = caption_attention(full)
    t1 = model.text_tokens(input_ids=ids, attention_mask=attn)
    t2 = model.text_tokens(input_ids=ids2, attention_mask=attn)
    o1 = model.fuse(image, None, t1, None, text_mask=attn)
    o2 = model.fuse(image, None, t2, None, text_mask=attn)
    torch.testing.assert_close(o1[:, :5], o2[:, :5], rtol=0, atol=1e-6)
    assert (o1[:, 5:] - o2[:, 5:]).abs().max() > 1e-3
    # the same through causal=True with a padding mask
    c1 = model.fuse(image, None, t1, full, causal=True)
    torch.testing.assert_close(c1, o1, rtol=0, atol=1e-6)


def test_pretraining_losses_reach_every_parameter(cfg) -> None:
    model = build(cfg).train()
    b = inputs(cfg)
    out = model.forward_pretrain(b)
    assert {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # at zero gates only the text-side gates can move first (the FIBER start); both get gradients after that
    assert all(float(m.gate.grad.abs()) > 0 for m in model.fusion.text_cross)
    # activation checkpointing (backbones and the fused pass) changes neither the losses nor the gradients
    set_gates(model, 0.5, 0.5)
    model.zero_grad()
    b["sample_seed"] = 7
    ref = model.forward_pretrain(b)
    ref["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model.forward_pretrain(b)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"], ref["loss"])
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_config_errors_name_the_key(tiny_cfg) -> None:
    with pytest.raises(ValueError, match="model.architecture"):
        X2VLM.from_config(apply_overrides(tiny_cfg, ["model.architecture=fibre"]))
    with pytest.raises(ValueError, match="model.fiber.layers"):
        X2VLM.from_config(apply_overrides(tiny_cfg, ["model.architecture=fiber", "model.fiber.layers=3"]))
    for name in ("fiber_tiny", "fiber_base"):  # the presets load (base: built without weights, not run)
        c = load_config(ROOT / "configs" / "models" / f"{name}.yaml")
        assert c["model"]["architecture"] == "fiber"
    assert load_config(ROOT / "configs" / "models" / "fiber_base.yaml")["model"]["fiber"]["layers"] == 6


def test_stages_switch_the_losses(cfg, tmp_path) -> None:
    c = copy.deepcopy(cfg)
    c["output_dir"] = str(tmp_path)
    c["train"].update(steps=3, log_every=1, ckpt_every=100, stages=[
        {"steps": 2, "loss": {"bbox": False}}, {"steps": 1, "loss": {"bbox": True, "mlm": False}}])
    model = build(c)
    seen: list[tuple[str, ...]] = []
    forward = model.forward_pretrain

    def record(batch, generator=None):
        out = forward(batch, generator)
        seen.append(tuple(sorted(k for k in out if k != "loss")))
        return out
    model.forward = record
    trainer = Trainer(c, model, DistInfo())

    def batches(start):
        while True:
            yield inputs(c, start)
            start += 1
    trainer.fit(batches)
    fine = ("loss_align", "loss_bbox", "loss_giou", "loss_itc", "loss_itm")
    assert seen == [("loss_itc", "loss_itm", "loss_mlm")] * 2 + [fine]
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["step"]) for e in events if e.get("event") == "stage"] == [(0, 0), (1, 2)]
    bad = copy.deepcopy(c)
    bad["train"]["stages"] = [{"steps": 2, "loss": {"bbox": False}}]
    with pytest.raises(ConfigError, match=r"train.stages: .* add up to 2, train.steps is 3"):
        Trainer(bad, build(bad), DistInfo())
    bad["train"]["stages"] = [{"steps": 3, "loss": {"box": False}}]
    with pytest.raises(ConfigError, match=r"train.stages\[0\].loss"):
        Trainer(bad, build(bad), DistInfo())


def test_fiber_box_head_weights_the_patch_boxes_by_text_alignment() -> None:
    from models.fiber import FiberBoxHead
    assert FiberBoxHead.patch_centres(4, torch.device("cpu")).tolist() == [
        [0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    head = FiberBoxHead(vision_width=8, text_width=6)
    with torch.no_grad():  # every patch box: its centre ± 0.1 (sigmoid(logit 0.1) on each side)
        head.box[3].weight.zero_()
        head.box[3].bias.fill_(math.log(0.1 / 0.9))
        for m in (head.image_align, head.text_align):
            m.weight.zero_()
            m.bias.zero_()
    tokens, text = torch.randn(2, 5, 8), torch.randn(2, 6)
    box, scores = head(tokens, text)
    assert scores.shape == (2, 4) and torch.equal(scores, torch.zeros(2, 4))
    # equal scores: the mean of the four patch boxes, xyxy (0.4, 0.4, 0.6, 0.6)
    torch.testing.assert_close(box, torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2))
    with torch.no_grad():  # the score reads feature 0 of a patch: patch 3 of image 0 and patch 1 of image 1 win
        head.image_align.weight[0, 0] = 1.0
        head.text_align.bias[0] = 100.0
        tokens[..., 0] = 0.0
        tokens[0, 1 + 3, 0] = tokens[1, 1 + 1, 0] = 5.0
    box, scores = head(tokens, text)
    assert scores.argmax(-1).tolist() == [3, 1]
    torch.testing.assert_close(box, torch.tensor([[0.75, 0.75, 0.2, 0.2], [0.75, 0.25, 0.2, 0.2]]))


def test_fiber_grounding_losses_train_the_box_head_and_the_fusion(cfg) -> None:
    from models.grounding import X2VLMForGrounding
    torch.manual_seed(0)
    model = X2VLMForGrounding.from_config(cfg)
    b = inputs(cfg)
    batch = {"image": b["images"][:2], "text_ids": b["text_ids"][:2], "text_atts": b["text_atts"][:2],
             "target_bbox": torch.tensor([[0.3, 0.3, 0.2, 0.4], [0.7, 0.6, 0.3, 0.2]])}
    out = model(batch)
    assert set(out) == {"loss", "loss_bbox", "loss_giou", "loss_align"}
    torch.testing.assert_close(out["loss"], out["loss_bbox"] + out["loss_giou"] + out["loss_align"])
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("bbox_head.box.0.weight", "bbox_head.image_align.weight", "bbox_head.text_align.weight",
                 "fusion.text_cross.0.gate", "fusion.image_cross.1.gate", "vision_encoder.patch_embed.proj.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert not any(n.startswith(("itm_head.", "vision_proj.", "mlm_head.")) for n in grads)  # grounding: box head only
    model.eval()
    with torch.no_grad():  # inference: the same box the loss saw
        emb, _ = model.encode_image(batch["image"])
        text = model.encode_text(batch["text_ids"], batch["text_atts"])
        pred = model.predict_boxes(emb, text, batch["text_atts"])
        again = model.box_losses(emb, text, batch["text_atts"], batch["target_bbox"])
    assert pred.shape == (2, 4) and ((pred >= 0) & (pred <= 1)).all()
    torch.testing.assert_close(again["loss_bbox"], out["loss_bbox"])


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("syn"), seed=0)


def test_every_task_script_runs_with_fiber(syn, tmp_path) -> None:
    """Retrieval, VQA, NLVR2, grounding and captioning: the unchanged task scripts on their demo configs with
    ``model.architecture=fiber`` (3 training steps, then their evaluation)."""
    import Captioning
    import Grounding
    import NLVR
    import Retrieval
    import VQA
    common = [f"data.root={syn['root']}", f"model.text.tokenizer={syn['vocab']}", "model.architecture=fiber",
              "model.fiber.layers=1", "train.epochs=0", "train.steps=3"]
    tasks = [
        (Retrieval, "retrieval_demo", [f"data.finetune.train_file=[{syn['retrieval_train']}]",
                                       f"data.finetune.test_file=[{syn['retrieval_test']}]", "eval.k_test=4"], [],
         "test/txt_r1"),
        (VQA, "vqa_demo", [f"data.finetune.train_file=[{syn['vqa_train']}]",
                           f"data.finetune.test_file=[{syn['vqa_test']}]",
                           f"data.finetune.answer_list={syn['answer_list']}"], [], "vqa_acc"),
        (NLVR, "nlvr_demo", [f"data.finetune.train_file=[{syn['nlvr_train']}]",
                             f"data.finetune.test_file=[{syn['nlvr_test']}]"], [], "test/acc"),
        (Grounding, "grounding_demo", [f"data.finetune.train_file=[{syn['grounding_train']}]",
                                       f"data.finetune.test_file=[{syn['grounding_test']}]"], [], "test/acc"),
        (Captioning, "caption_demo", [f"data.finetune.train_file=[{syn['caption_train']}]",
                                      f"data.finetune.test_file=[{syn['caption_test']}]", "caption.max_length=6"],
         ["--metrics", "bleu", "--caption_tokenizer", "simple"], "test/Bleu_1"),
    ]
    for module, config, overrides, extra, metric in tasks:
        torch.manual_seed(0)
        argv = ["--config", str(ROOT / "configs" / "finetune" / f"{config}.yaml"), "--device", "cpu",
                "--output_dir", str(tmp_path / config), *extra]
        results = module.main(argv + [a for o in common + overrides for a in ("--override", o)])
        assert metric in results, (config, sorted(results))


def test_vqa_decoder_starts_from_the_fused_text_layers(cfg, tmp_path) -> None:
    from models.checkpoint import save_checkpoint_weights
    from models.vqa import X2VLMForVQA
    pretrained = build(cfg)
    save_checkpoint_weights(pretrained, tmp_path)
    model = X2VLMForVQA.from_config(apply_overrides(cfg, [f"model.checkpoint={tmp_path / 'model.safetensors'}"]))
    assert all(k.startswith("text_decoder.") for k in model.load_report.missing)  # the gates etc. all loaded
    assert "fusion.text_cross.0.gate" in model.load_report.loaded
    layers = model.text_decoder.layers
    assert len(layers) == 2  # model.fiber.layers, the fused text layers
    for i in range(2):
        for key, value in model.text_encoder.encoder.layer[i].state_dict().items():
            torch.testing.assert_close(layers[i].state_dict()[key], value)
