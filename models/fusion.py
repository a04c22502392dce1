"""Fusion encoder: BERT-shaped layers of self-attention, cross-attention (text → vision) and FFN.

:class:`FusionEncoder` is the layer stack (also the VQA answer decoder's body); :class:`X2VLMFusion` is X²-VLM's
fusion after the encoders (``model.architecture: x2vlm``), the :class:`~models.fusion_interface.Fusion` on top
of it. Parameter names follow a BERT layer with ``crossattention`` (as the official fusion layers
``text_encoder.bert.encoder.layer.{12..17}``), so those weights load one-to-one.
All attention runs through ``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

from typing import ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN

from models.fusion_interface import Backbones, Fusion
from models.heads import build_mlp
from models.tokens import Tokens


def attention_mask(key_mask: torch.Tensor | None, query_len: int, causal: bool = False) -> torch.Tensor | None:
    """Boolean SDPA mask ``(B, 1, Lq, Lk)`` (True = attend) from a ``(B, Lk)`` 0/1 key mask."""
    if key_mask is None and not causal:
        return None
    mask = None
    if key_mask is not None:
        mask = key_mask.bool()[:, None, None, :]
    if causal:
        lk = key_mask.shape[1] if key_mask is not None else query_len
        tri = torch.ones(query_len, lk, dtype=torch.bool, device=mask.device if mask is not None else None).tril()
        mask = tri[None, None] if mask is None else mask & tri[None, None]
    return mask


class _SelfProjections(nn.Module):
    def __init__(self, hidden: int, kv_width: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)


class _Output(nn.Module):
    """Dense → dropout → residual → LayerNorm (BERT's post-LN block ending)."""

    def __init__(self, in_width: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    """Multi-head attention with BERT names (``self.query/key/value``, ``output.dense/LayerNorm``)."""

    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float, dropout: float, attn_dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.self = _SelfProjections(hidden, kv_width)
        self.output = _Output(hidden, hidden, eps, dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, Lq, H) attends to ``context``: (B, Lk, Dk), or (U, Lk, Dk) shared by several rows of
        ``x`` when ``context_index`` (B,) names each row's context (keys/values projected once per context;
        ``mask`` then has U rows too)."""
        q = self._split(self.self.query(x))
        k = self._split(self.self.key(context))
        v = self._split(self.self.value(context))
        if context_index is not None:
            k, v = k[context_index], v[context_index]
            mask = mask[context_index] if mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).flatten(2)
        return self.output(out, x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int, act: str):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        self.act = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class FusionLayer(nn.Module):
    """Text self-attention → cross-attention over vision tokens → feed-forward."""

    def __init__(self, hidden: int, heads: int, inner: int, vision_width: int, eps: float = 1e-12,
                 dropout: float = 0.1, attn_dropout: float = 0.1, act: str = "gelu"):
        super().__init__()
        self.attention = Attention(hidden, heads, hidden, eps, dropout, attn_dropout)
        self.crossattention = Attention(hidden, heads, vision_width, eps, dropout, attn_dropout)
        self.intermediate = _Intermediate(hidden, inner, act)
        self.output = _Output(inner, hidden, eps, dropout)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor | None, vision: torch.Tensor,
                vision_mask: torch.Tensor | None, vision_index: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(text, text, text_mask)
        x = self.crossattention(x, vision, vision_mask, vision_index)
        return self.output(self.intermediate(x), x)


class FusionEncoder(nn.Module):
    """A stack of :class:`FusionLayer` (``layer.{i}``); sizes follow the text encoder's config."""

    def __init__(self, num_layers: int, hidden: int, heads: int, inner: int, vision_width: int,
                 eps: float = 1e-12, dropout: float = 0.1, attn_dropout: float = 0.1, act: str = "gelu"):
        super().__init__()
        self.layer = nn.ModuleList([
            FusionLayer(hidden, heads, inner, vision_width, eps, dropout, attn_dropout, act)
            for _ in range(num_layers)
        ])
        self.grad_checkpointing = False

    @classmethod
    def sized_like(cls, text_config, num_layers: int, vision_width: int) -> Self:
        """``num_layers`` layers with the text encoder's (Hugging Face config's) widths, heads, activation, norm
        epsilon and dropouts, reading context tokens of ``vision_width``."""
        tc = text_config
        return cls(num_layers=num_layers, hidden=tc.hidden_size, heads=tc.num_attention_heads,
                   inner=tc.intermediate_size, vision_width=vision_width, eps=tc.layer_norm_eps,
                   dropout=tc.hidden_dropout_prob, attn_dropout=tc.attention_probs_dropout_prob, act=tc.hidden_act)

    #: our key patterns (under ``fusion.``) of the cross-attention weights, which a text-encoder swap keeps
    CROSS_ATTENTION_KEYS: ClassVar[str] = r"layer\.\d+\.crossattention\..+"

    @torch.no_grad()
    def init_from_text(self, text_layers: nn.ModuleList) -> list[str]:
        """The official init: fusion layer i's self-attention and FFN ← text layer ``n_text - n_fusion + i``
        (where the shapes agree). Returns the keys written (relative to this module)."""
        offset = len(text_layers) - len(self.layer)
        written = []
        for i, layer in enumerate(self.layer):
            own = layer.state_dict()
            shared = {k: v for k, v in text_layers[offset + i].state_dict().items()
                      if k in own and own[k].shape == v.shape}
            layer.load_state_dict(shared, strict=False)
            written += [f"layer.{i}.{k}" for k in sorted(shared)]
        return written

    def forward(self, text: torch.Tensor, text_atts: torch.Tensor | None, vision: torch.Tensor,
                vision_atts: torch.Tensor | None, causal: bool = False,
                vision_index: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``text`` (B, Lt, H) attends to itself (causally if asked) and to ``vision`` (B, Lv, Dv). With
        ``vision_index`` (B,), ``vision`` / ``vision_atts`` hold U distinct visual inputs and text row i
        attends to ``vision[vision_index[i]]``: each layer projects a visual input's keys and values once,
        however many texts read it (the ITM re-ranking's one image × k texts). A boolean ``text_mask``
        (B, 1, Lt, Lt) replaces the self-attention mask built from ``text_atts`` / ``causal``."""
        if text_mask is None:
            text_mask = attention_mask(text_atts, text.shape[1], causal)
        vision_mask = attention_mask(vision_atts, text.shape[1])
        for layer in self.layer:
            if self.grad_checkpointing and self.training:
                text = checkpoint(layer, text, text_mask, vision, vision_mask, vision_index, use_reentrant=False)
            else:
                text = layer(text, text_mask, vision, vision_mask, vision_index)
        return text


class X2VLMFusion(FusionEncoder, Fusion):
    """X²-VLM's fusion: ``model.fusion.layers`` :class:`FusionLayer` after the two encoders, sized like the text
    encoder; the box comes from the fused text [CLS]. Tokens carry no backbone state."""

    @classmethod
    def from_config(cls, model_cfg: dict, text_config) -> X2VLMFusion:
        return cls.sized_like(text_config, model_cfg["fusion"]["layers"], model_cfg["vision"]["width"])

    @property
    def num_layers(self) -> int:
        return len(self.layer)

    def encode_vision(self, backbones: Backbones, images: torch.Tensor) -> Tokens:
        return Tokens(backbones.vision(images))

    def encode_text(self, backbones: Backbones, **inputs) -> Tokens:
        return Tokens(backbones.text(**inputs).last_hidden_state)

    def fuse(self, backbones: Backbones, image: Tokens, image_atts: torch.Tensor | None, text: Tokens,
             text_atts: torch.Tensor | None, causal: bool = False, image_index: torch.Tensor | None = None,
             text_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self(text.final, text_atts, image.final, image_atts, causal=causal, vision_index=image_index,
                    text_mask=text_mask)

    def build_box_head(self, vision_width: int, text_width: int) -> nn.Module:
        return build_mlp(text_width, 4)

    def boxes_and_scores(self, backbones: Backbones, head: nn.Module, image: Tokens, text: Tokens,
                         text_atts: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return head(self.fuse(backbones, image, None, text, text_atts)[:, 0]).sigmoid(), None

    def decoder_start_layers(self, text_depth: int) -> list[str]:
        return [f"fusion.layer.{j}." for j in range(self.num_layers)]
