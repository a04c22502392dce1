"""Prediction heads: the official two-layer MLP (ITM, bbox) and a BERT-style MLM head."""
from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


def build_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(d, 2d) → LayerNorm → GELU → Linear(2d, out): indices 0, 1, 3 as in the official heads."""
    return nn.Sequential(nn.Linear(in_dim, 2 * in_dim), nn.LayerNorm(2 * in_dim), nn.GELU(),
                         nn.Linear(2 * in_dim, out_dim))


class _Transform(nn.Module):
    def __init__(self, hidden: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[act]
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, hidden: int, vocab: int, act: str, eps: float):
        super().__init__()
        self.transform = _Transform(hidden, act, eps)
        self.decoder = nn.Linear(hidden, vocab)
        self.bias = self.decoder.bias  # saved under both names, like BERT's checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class MLMHead(nn.Module):
    """``predictions.transform.{dense,LayerNorm}`` → ``predictions.decoder`` (weight tied to word embeddings)."""

    def __init__(self, hidden: int, vocab: int, act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.predictions = _Predictions(hidden, vocab, act, eps)

    def tie_to(self, word_embeddings: nn.Embedding) -> None:
        if word_embeddings.weight.shape != self.predictions.decoder.weight.shape:
            raise ValueError("MLM decoder and word embeddings differ in shape")
        self.predictions.decoder.weight = word_embeddings.weight
        self.predictions.bias = self.predictions.decoder.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)
