"""FIBER-style fusion in the backbone (Dou et al., 2022, "Coarse-to-Fine Vision-Language Pre-training with
Fusion in the Backbone") as a swap of X²-VLM's fusion component (``model.architecture: fiber``).

Instead of fusion layers after the encoders, the top ``K = model.fiber.layers`` layers of *both* backbones get
a cross-attention to the other modality, each scaled by a learnable scalar gate that starts at 0 (the public
microsoft/FIBER code: 6 of 12 RoBERTa layers and the last 6 Swin blocks, ``alpha`` initialised to 0):

* text layer: ``s = SelfAttnOut(h)`` (self-attention and output projection, before the residual);
  ``s = s + alpha_t · CrossAttn(q=s, kv=image)``; then the layer's own residual + LayerNorm and FFN;
* vision block: ``a = Attn(norm1(x))``; ``a = a + alpha_i · CrossAttn(q=LN(a), kv=text)``; then the block's own
  layer scale, residual and MLP.

With every gate at 0 a fused layer computes exactly the plain backbone layer, so the uni-modal pass (ITC and
retrieval candidates) is simply the backbones as they are. Here the backbones are the project's BEiT-2 and
Hugging Face text encoders; the layers are wrapped by composition (their own submodules are called), not copied.

Layout in this project (so that the task scripts and the trainer run unchanged): :class:`FiberFusion` implements
the :class:`~models.fusion_interface.Fusion` interface.

* ``encode_vision`` / ``encode_text`` run the backbones once, uni-modally, and return
  :class:`~models.tokens.Tokens` with ``final`` (the backbone output: ITC features, uni-modal heads) and
  ``state`` (the tokens entering the top K layers). Row operations (selection, region concepts, the mean over
  video frames) act on both alike.
* ``fuse`` re-runs the top K layers of both backbones from the states with the cross-attentions on, and returns
  the fused text tokens (for the ITM, MLM, box, VQA and captioning heads).

Deviations from FIBER, all because the project's heads read fused *text* tokens only: (1) FIBER updates the
two streams in parallel and pools both into its ITM/VQA heads; here layer k runs the vision block first and the
text layer then reads the updated image stream, so every image-side cross-attention reaches the output;
(2) under a causal or custom text mask (captioning) the image stream does not read the text (no leak of future
tokens) and runs its top K blocks uni-modally, as FIBER's captioning, whose image side is not fused.
Region concepts (``region_concepts``) also overwrite position 0 of the state with the box's patch mean.

Boxes (pretraining's box loss, grounding) come from the fused *image* stream, not the text [CLS]
(:class:`FiberBoxHead`): FIBER's fine stage predicts boxes from the fused image features and scores them by their
alignment with the text (a GLIP/DyHead detector over Swin's feature maps); here each patch regresses a box and the
alignment scores weight them. A box from the text [CLS] did not learn in the tiny preset: behind a gate that starts
at 0 the image hardly reaches the text [CLS] (zero-shot grounding 0.5 % vs 1.6 % for the best constant box).
"""
from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.fusion import attention_mask
from models.fusion_interface import Backbones, Fusion
from models.heads import build_mlp
from models.tokens import Tokens
from utils.box_ops import xyxy_to_cxcywh

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


class GatedCrossAttention(nn.Module):
    """``gate · Proj(MHA(q=norm(x), k=context, v=context))`` — the caller adds it to its own branch.

    ``gate`` is a scalar parameter initialised to 0; ``norm`` is a LayerNorm when ``query_norm`` (the image
    side in FIBER) else identity."""

    def __init__(self, dim: int, context_dim: int, heads: int, query_norm: bool = False, eps: float = 1e-6,
                 dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.norm = nn.LayerNorm(dim, eps=eps) if query_norm else nn.Identity()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(context_dim, dim)
        self.value = nn.Linear(context_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(1))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                context_index: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, Lq, D) reads ``context`` (B, Lk, Dc) — or (U, Lk, Dc) with ``context_index`` (B,) naming
        each row's context (keys/values projected once per context; ``mask`` then has U rows)."""
        q = self._split(self.query(self.norm(x)))
        k, v = self._split(self.key(context)), self._split(self.value(context))
        if context_index is not None:
            k, v = k[context_index], v[context_index]
            mask = mask[context_index] if mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.gate * self.dropout(self.proj(out.transpose(1, 2).flatten(2)))


def _hf_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean ``(B, 1, Lq, Lk)`` mask in the form a Hugging Face self-attention module takes."""
    if _TRANSFORMERS_MAJOR >= 5:
        return mask
    return (~mask).to(dtype) * torch.finfo(dtype).min  # 4.x: additive "extended" mask


def text_layer_step(layer: Any, hidden: torch.Tensor, mask: torch.Tensor, cross: GatedCrossAttention,
                    image: torch.Tensor, image_mask: torch.Tensor | None,
                    image_index: torch.Tensor | None = None) -> torch.Tensor:
    """One BERT/RoBERTa layer (HF module, used through its submodules) with the gated text→image
    cross-attention between its self-attention output and the residual + LayerNorm."""
    att = layer.attention
    s = att.self(hidden, attention_mask=_hf_mask(mask, hidden.dtype))[0]
    s = att.output.dropout(att.output.dense(s))
    s = s + cross(s, image, image_mask, image_index)
    a = att.output.LayerNorm(s + hidden)
    return layer.output(layer.intermediate(a), a)


def vision_block_step(block: Any, x: torch.Tensor, cross: GatedCrossAttention | None,
                      text: torch.Tensor | None, text_mask: torch.Tensor | None,
                      rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
    """One timm BEiT block with the gated image→text cross-attention added to its attention branch (before the
    layer scale and residual); ``text=None`` runs the plain block."""
    if text is None or cross is None:
        return block(x, shared_rel_pos_bias=rel_pos_bias)
    a = block.attn(block.norm1(x), shared_rel_pos_bias=rel_pos_bias)
    a = a + cross(a, text, text_mask)
    x = x + block.drop_path1(a if block.gamma_1 is None else block.gamma_1 * a)
    m = block.mlp(block.norm2(x))
    return x + block.drop_path2(m if block.gamma_2 is None else block.gamma_2 * m)


class FiberFusion(Fusion):
    """The gated cross-attentions of the top ``num_layers`` text layers (``text_cross.{k}``, text queries,
    vision keys/values) and vision blocks (``image_cross.{k}``); the backbones' own layers are passed in at
    call time (they stay registered once, under ``vision_encoder`` / ``text_encoder``)."""

    def __init__(self, num_layers: int, text_hidden: int, text_heads: int, vision_width: int, vision_heads: int,
                 text_eps: float = 1e-12, vision_eps: float = 1e-6, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.text_cross = nn.ModuleList([
            GatedCrossAttention(text_hidden, vision_width, text_heads, False, text_eps, dropout, attn_dropout)
            for _ in range(num_layers)])
        self.image_cross = nn.ModuleList([
            GatedCrossAttention(vision_width, text_hidden, vision_heads, True, vision_eps, dropout, attn_dropout)
            for _ in range(num_layers)])
        self.grad_checkpointing = False

    #: every weight of this module is a cross-attention (the backbones' own layers hold the rest)
    CROSS_ATTENTION_KEYS = r"(?:text|image)_cross\..+"

    @classmethod
    def from_config(cls, model_cfg: dict, text_config) -> FiberFusion:
        v, tc = model_cfg["vision"], text_config
        return cls(num_layers=fiber_layers(model_cfg, v["depth"], tc.num_hidden_layers), text_hidden=tc.hidden_size,
                   text_heads=tc.num_attention_heads, vision_width=v["width"], vision_heads=v["heads"],
                   text_eps=tc.layer_norm_eps, dropout=tc.hidden_dropout_prob,
                   attn_dropout=tc.attention_probs_dropout_prob)

    @property
    def num_layers(self) -> int:
        return len(self.text_cross)

    def init_from_text(self, text_layers: nn.ModuleList) -> list[str]:
        """Nothing to copy: the fused layers *are* the text encoder's top layers (the X²-VLM fusion copies its
        self-attention and FFN from them). Returns no key."""
        return []

    def decoder_start_layers(self, text_depth: int) -> list[str]:
        """The fused top text layers of the text encoder."""
        return [f"text_encoder.encoder.layer.{text_depth - self.num_layers + j}." for j in range(self.num_layers)]

    def freeze_unused_for_causal_text(self) -> None:
        """Under a causal text mask the image stream never reads the text: its cross-attentions are frozen."""
        self.image_cross.requires_grad_(False)

    def gates(self) -> dict[str, float]:
        """Current gate values, ``{"text.k": alpha, "image.k": alpha}`` (for logs and tests)."""
        out = {f"text.{k}": float(m.gate) for k, m in enumerate(self._crosses(self.text_cross))}
        out.update({f"image.{k}": float(m.gate) for k, m in enumerate(self._crosses(self.image_cross))})
        return out

    @staticmethod
    def _crosses(modules: nn.ModuleList) -> list[GatedCrossAttention]:
        return [cast(GatedCrossAttention, m) for m in modules]

    # ------------------------------------------------------------------ the interface's passes
    def encode_vision(self, backbones: Backbones, images: torch.Tensor) -> Tokens:
        """The final tokens and the state entering the top K blocks, from one pass."""
        final, state = backbones.vision.forward_with_state(images, len(backbones.vision.blocks) - self.num_layers)
        return Tokens(final, state)

    def encode_text(self, backbones: Backbones, **inputs) -> Tokens:
        """The last hidden state and the hidden state entering the top K layers, from one pass."""
        out = backbones.text(**inputs, output_hidden_states=True)
        return Tokens(out.last_hidden_state, out.hidden_states[len(out.hidden_states) - 1 - self.num_layers])

    def fuse(self, backbones: Backbones, image: Tokens, image_atts: torch.Tensor | None, text: Tokens,
             text_atts: torch.Tensor | None, causal: bool = False, image_index: torch.Tensor | None = None,
             text_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self(_state(text), text_atts, _state(image), image_atts, causal=causal, vision_index=image_index,
                    backbones=backbones, text_mask=text_mask)

    def build_box_head(self, vision_width: int, text_width: int) -> nn.Module:
        return FiberBoxHead(vision_width, text_width)

    def boxes_and_scores(self, backbones: Backbones, head: nn.Module, image: Tokens, text: Tokens,
                         text_atts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """From the fused image stream (:class:`FiberBoxHead`) and the fused text [CLS]."""
        fused_text, fused_image = self(_state(text), text_atts, _state(image), None, backbones=backbones,
                                       return_image=True)
        return head(fused_image, fused_text[:, 0])

    def forward(self, text: torch.Tensor, text_atts: torch.Tensor | None, vision: torch.Tensor,
                vision_atts: torch.Tensor | None, causal: bool = False, vision_index: torch.Tensor | None = None,
                *, backbones: Backbones, text_mask: torch.Tensor | None = None,
                return_image: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fused text tokens ``(B, Lt, H)``; with ``return_image`` also the fused image tokens ``(B, Lv, Dv)``
        (as the vision encoder's ``output_tokens``: [mean of patches, patches]).

        ``text`` (B, Lt, H) and ``vision`` (B or U, Lv, Dv) are the backbone states (``Tokens.state``);
        ``vision_atts`` masks the visual keys (region concepts); ``vision_index`` (B,) names text row i's visual
        input; ``causal`` or a boolean ``text_mask`` (B, 1, Lt, Lt) replaces the padding mask of the text
        self-attention, and then the image stream does not read the text."""
        t, v, k = text, vision, self.num_layers
        read_text = text_mask is None and not causal
        if text_mask is None:
            atts = text_atts if text_atts is not None else text.new_ones(text.shape[:2], dtype=torch.long)
            text_mask = cast(torch.Tensor, attention_mask(atts, t.shape[1], causal))  # atts given: a mask
        if read_text and vision_index is not None:  # each text gets its own image stream
            v = v.index_select(0, vision_index)
            vision_atts = vision_atts.index_select(0, vision_index) if vision_atts is not None else None
            vision_index = None
        text_keys = attention_mask(text_atts, v.shape[1]) if text_atts is not None else None
        vision_keys = attention_mask(vision_atts, t.shape[1])
        vision_encoder, text_encoder = backbones
        rel_pos_bias = vision_encoder.rel_pos_bias() if vision_encoder.rel_pos_bias is not None else None
        blocks = vision_encoder.blocks[len(vision_encoder.blocks) - k:]
        layers = text_encoder.encoder.layer[len(text_encoder.encoder.layer) - k:]
        image_crosses, text_crosses = self._crosses(self.image_cross), self._crosses(self.text_cross)
        for j in range(k):
            image_cross, text_cross = image_crosses[j], text_crosses[j]
            text_in = t if read_text else None
            if self.grad_checkpointing and self.training:
                v = checkpoint(vision_block_step, blocks[j], v, image_cross, text_in, text_keys, rel_pos_bias,
                               use_reentrant=False)
                t = checkpoint(text_layer_step, layers[j], t, text_mask, text_cross, v, vision_keys, vision_index,
                               use_reentrant=False)
            else:
                v = vision_block_step(blocks[j], v, image_cross, text_in, text_keys, rel_pos_bias)
                t = text_layer_step(layers[j], t, text_mask, text_cross, v, vision_keys, vision_index)
        return (t, vision_encoder.output_tokens(v)) if return_image else t


def _state(tokens: Tokens) -> torch.Tensor:
    if tokens.state is None:
        raise ValueError("FIBER fuses from the backbone states: pass tokens from this model's encode_image / "
                         "encode_video / encode_text (these have no state)")
    return tokens.state


class FiberBoxHead(nn.Module):
    """Fine-grained box head on the fused image stream, in the spirit of FIBER's fine stage (GLIP-style
    region–text alignment) rather than a box from the text [CLS]: every patch regresses a box (its distances
    to the four sides, as fractions of the image, from the patch centre; ``box``) and scores its alignment with
    the fused text [CLS] (``image_align`` · ``text_align`` / √H). The predicted box is the mean of the patch
    boxes weighted by the softmax of the scores over patches, so L1 + GIoU on it train both parts, and
    :func:`models.losses.patch_alignment_loss` supervises the scores directly."""

    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.box = build_mlp(vision_width, 4)
        self.image_align = nn.Linear(vision_width, text_width)
        self.text_align = nn.Linear(text_width, text_width)

    @staticmethod
    def patch_centres(num_patches: int, device: torch.device) -> torch.Tensor:
        """``(P, 2)`` normalised (x, y) centres of a square patch grid, row-major."""
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise ValueError(f"{num_patches} patches do not form a square grid")
        steps = (torch.arange(grid, device=device, dtype=torch.float32) + 0.5) / grid
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([xs.flatten(), ys.flatten()], dim=-1)

    def forward(self, image_tokens: torch.Tensor, text_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_tokens`` (B, 1+P, Dv) fused, ``text_cls`` (B, H) fused → box ``(B, 4)`` normalised
        (cx, cy, w, h) and the alignment scores ``(B, P)``."""
        patches = image_tokens[:, 1:]
        scores = torch.einsum("bpd,bd->bp", self.image_align(patches), self.text_align(text_cls))
        scores = scores.float() / math.sqrt(text_cls.shape[-1])
        centres = self.patch_centres(patches.shape[1], patches.device)
        sides = self.box(patches).float().sigmoid()  # (B, P, 4): left, top, right, bottom
        boxes = torch.cat([centres - sides[..., :2], centres + sides[..., 2:]], dim=-1).clamp(0, 1)
        xyxy = (scores.softmax(-1)[..., None] * boxes).sum(1)
        return xyxy_to_cxcywh(xyxy), scores


def fiber_layers(model_cfg: dict, vision_depth: int, text_depth: int) -> int:
    """``model.fiber.layers`` checked against the two backbones' depths."""
    k = int((model_cfg.get("fiber") or {}).get("layers") or 0)
    if not 1 <= k <= min(vision_depth, text_depth):
        raise ValueError(f"model.fiber.layers must be between 1 and the shallower backbone's depth "
                         f"(vision {vision_depth}, text {text_depth}), got {k}")
    return k
