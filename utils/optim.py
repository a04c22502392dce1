"""AdamW with weight-decay groups and learning-rate multipliers (freshly initialised, cross-modal parameters),
and the linear warm-up / linear decay schedule of the official recipe."""
from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "norm1.weight", "norm2.weight", "fc_norm.weight", "norm.weight",
                    "embeddings", "cls_token", "gamma_1", "gamma_2", "relative_position_bias_table",
                    "absolute_frame_pos_embed", "temp")


#: the official optim.py's rule: a parameter whose name contains one of these gets no decay (so embeddings,
#: layer scale, [CLS] token, temporal embedding and temperature are decayed; "bias" also exempts the
#: relative_position_bias_table)
OFFICIAL_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight", "norm.bias", "norm.weight", "norm1.bias",
                     "norm1.weight", "norm2.bias", "norm2.weight")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """``extended`` rule: biases, norms, embeddings, layer-scale, position tables, the temperature and every
    other parameter of at most one dimension get no decay."""
    return param.ndim <= 1 or any(marker in name for marker in NO_DECAY_MARKERS)


def official_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """``official`` rule (zengyan-97/X2-VLM optim.py): names with a bias or LayerNorm/norm marker only."""
    return any(marker in name for marker in OFFICIAL_NO_DECAY)


#: ``optimizer.no_decay`` → the rule that exempts a parameter from weight decay
NO_DECAY_RULES = {"extended": no_weight_decay, "official": official_no_weight_decay}


def is_cross_modal(name: str) -> bool:
    """Parameters under ``fusion.``: X²-VLM's fusion layers, FIBER's gated cross-attentions."""
    return name.startswith("fusion.")


def param_groups(model: nn.Module, lr: float, weight_decay: float, lr_mult: float = 1.0,
                 fresh: set[str] | None = None, cross_modal_lr_mult: float = 1.0, no_decay: str = "extended"
                 ) -> list[dict]:
    """Groups by weight decay (on / off, by the :data:`NO_DECAY_RULES` rule ``no_decay``) and learning rate:
    ``lr`` × (``lr_mult`` if freshly initialised) × (``cross_modal_lr_mult`` if cross-modal, see
    :func:`is_cross_modal`); empty groups dropped."""
    if no_decay not in NO_DECAY_RULES:
        raise ValueError(f"optimizer.no_decay must be one of {', '.join(NO_DECAY_RULES)}, got {no_decay!r}")
    exempt = NO_DECAY_RULES[no_decay]
    fresh = fresh or set()
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            factor = (lr_mult if name in fresh else 1.0) * (cross_modal_lr_mult if is_cross_modal(name) else 1.0)
            groups.setdefault((not exempt(name, param), factor), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * factor}
            for (decay, factor), params in groups.items()]


def build_optimizer(model: nn.Module, opt_cfg: dict, fresh: set[str] | None = None) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; torch's fused or foreach kernels per ``kernels`` (auto: fused on CUDA)."""
    groups = param_groups(model, opt_cfg["lr"], opt_cfg["weight_decay"], opt_cfg["lr_mult"], fresh,
                          opt_cfg["cross_modal_lr_mult"], opt_cfg["no_decay"])
    fused = {"auto": next(model.parameters()).is_cuda, "fused": True, "foreach": False}[opt_cfg["kernels"]]
    return torch.optim.AdamW(groups, lr=opt_cfg["lr"], betas=tuple(opt_cfg["betas"]),
                             eps=opt_cfg["eps"], fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict, total_steps: int):
    """Linear warm-up to each group's lr, then linear decay to 0 at ``total_steps``.

    ``warmup`` may be a step count (int) or a fraction of ``total_steps`` (float < 1)."""
    warmup = sched_cfg["warmup"]
    if isinstance(warmup, float) and warmup < 1:
        warmup = int(warmup * total_steps)
    return get_scheduler(sched_cfg["name"], optimizer, num_warmup_steps=int(warmup),
                         num_training_steps=total_steps)
