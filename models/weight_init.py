"""BERT-style initialisation of one freshly built module (no recursion: callers choose the traversal)."""
from __future__ import annotations

import torch
from torch import nn


def bert_init_(module: nn.Module, std: float) -> None:
    """Linear: truncated-normal weights (``std``), zero bias; Embedding: normal weights, zero padding row;
    LayerNorm: unit weight, zero bias. Other modules are left as they are."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
