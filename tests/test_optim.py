"""Weight-decay groups, the fresh-parameter learning-rate multiplier, and the schedule."""
import pytest
import torch

from models.x2vlm import X2VLM
from utils.config import load_defaults
from utils.optim import build_optimizer, build_scheduler, no_weight_decay, param_groups


def test_no_decay_rules(tiny_model: X2VLM) -> None:
    params = dict(tiny_model.named_parameters())
    assert no_weight_decay("temp", params["temp"])
    assert no_weight_decay("vision_encoder.blocks.0.gamma_1", params["vision_encoder.blocks.0.gamma_1"])
    assert no_weight_decay("text_encoder.embeddings.word_embeddings.weight",
                           params["text_encoder.embeddings.word_embeddings.weight"])
    assert not no_weight_decay("fusion.layer.0.crossattention.self.key.weight",
                               params["fusion.layer.0.crossattention.self.key.weight"])


def test_param_groups_cover_every_parameter_once(tiny_model: X2VLM) -> None:
    fresh = {n for n, _ in tiny_model.named_parameters() if n.startswith(("itm_head", "bbox_head"))}
    groups = param_groups(tiny_model, lr=1e-4, weight_decay=0.05, lr_mult=3.0, fresh=fresh)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(tiny_model.parameters()))
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(tiny_model.named_parameters())
    assert by_param[id(named["itm_head.0.weight"])]["lr"] == pytest.approx(3e-4)
    assert by_param[id(named["itm_head.0.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["itm_head.0.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["vision_proj.weight"])]["lr"] == pytest.approx(1e-4)


def test_cross_modal_multiplier_stacks_with_the_fresh_one(tiny_model: X2VLM) -> None:
    fresh = {"fusion.layer.0.crossattention.self.key.weight", "bbox_head.0.weight"}
    groups = param_groups(tiny_model, lr=1e-4, weight_decay=0.05, lr_mult=3.0, fresh=fresh, cross_modal_lr_mult=5.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(tiny_model.named_parameters())
    lr = {n: by_param[id(named[n])]["lr"] for n in (*fresh, "fusion.layer.1.output.dense.weight",
                                                       "fusion.layer.1.output.dense.bias", "text_proj.weight")}
    assert lr == pytest.approx({"fusion.layer.0.crossattention.self.key.weight": 1.5e-3, "bbox_head.0.weight": 3e-4,
                                "fusion.layer.1.output.dense.weight": 5e-4, "fusion.layer.1.output.dense.bias": 5e-4,
                                "text_proj.weight": 1e-4})
    assert by_param[id(named["fusion.layer.1.output.dense.bias"])]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(tiny_model.parameters()))


def test_linear_warmup_then_decay() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, {"name": "linear", "warmup": 0.2}, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    assert lrs[-1] == pytest.approx(0.125)


def test_build_optimizer_uses_config(tiny_model: X2VLM) -> None:
    opt_cfg = {**load_defaults()["optimizer"], "lr": 2e-4, "weight_decay": 0.01, "lr_mult": 2.0, "betas": [0.9, 0.98]}
    opt = build_optimizer(tiny_model, opt_cfg)
    assert opt.defaults["betas"] == (0.9, 0.98)
    assert {g["lr"] for g in opt.param_groups} == {2e-4}


def test_official_no_decay_rule_is_the_official_optim_py(tiny_model) -> None:
    """optimizer.no_decay=official: only names with a bias / LayerNorm / norm marker are exempt (zengyan-97/X2-VLM
    optim.py), so embeddings, layer scale, the [CLS] token and the temperature are decayed; extended exempts them."""
    from utils.optim import official_no_weight_decay
    params = dict(tiny_model.named_parameters())
    for name in ("temp", "vision_encoder.blocks.0.gamma_1", "text_encoder.embeddings.word_embeddings.weight",
                 "vision_encoder.cls_token"):
        assert not official_no_weight_decay(name, params[name]) and no_weight_decay(name, params[name]), name
    for name in ("fusion.layer.0.crossattention.self.key.bias", "text_encoder.embeddings.LayerNorm.weight",
                 "vision_encoder.blocks.0.norm1.weight", "vision_encoder.fc_norm.weight",
                 "vision_encoder.blocks.0.attn.relative_position_bias_table"):  # its name holds "bias"
        assert official_no_weight_decay(name, params[name]), name
    groups = param_groups(tiny_model, lr=1e-4, weight_decay=0.05, no_decay="official")
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(params["temp"]) in decayed and id(params["fusion.layer.0.crossattention.self.key.bias"]) not in decayed
    with pytest.raises(ValueError, match="optimizer.no_decay must be one of"):
        param_groups(tiny_model, lr=1e-4, weight_decay=0.05, no_decay="some")
