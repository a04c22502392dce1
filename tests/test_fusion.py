"""Fusion layers against a hand-written plain-torch reference; causal and vision masking behaviour."""
from __future__ import annotations

import math

import pytest
import torch

from models.fusion import FusionEncoder, FusionLayer, attention_mask

HIDDEN, HEADS, INNER, VISION = 32, 4, 64, 24
EPS = 1e-12


def make_encoder(layers: int = 2, seed: int = 0) -> FusionEncoder:
    """A fusion stack with random weights (LayerNorms and biases included), dropout on but eval mode."""
    torch.manual_seed(seed)
    enc = FusionEncoder(layers, HIDDEN, HEADS, INNER, VISION, eps=EPS, dropout=0.1, attn_dropout=0.1)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
        for name, p in enc.named_parameters():
            if "LayerNorm.weight" in name:
                p.add_(1.0)
    return enc.eval()


def additive_mask(key_mask: torch.Tensor | None, lq: int, lk: int, causal: bool = False) -> torch.Tensor:
    """Additive mask ``(B or 1, 1, Lq, Lk)``: 0 where attended, -inf where not."""
    mask = torch.zeros(1, 1, lq, lk)
    if key_mask is not None:
        mask = mask + torch.zeros(key_mask.shape[0], 1, 1, lk).masked_fill(key_mask[:, None, None, :] == 0,
                                                                              float("-inf"))
    if causal:
        mask = mask + torch.full((lq, lk), float("-inf")).triu(1)
    return mask


def ref_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm written out: biased variance over the last dim."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * w + b


def ref_attention(x: torch.Tensor, ctx: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str,
                  mask: torch.Tensor) -> torch.Tensor:
    """Explicit multi-head softmax attention + dense + residual + post-LN, from state-dict tensors."""
    def lin(t: torch.Tensor, name: str) -> torch.Tensor:
        return t @ sd[f"{prefix}{name}.weight"].t() + sd[f"{prefix}{name}.bias"]

    def split(t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, HEADS, HIDDEN // HEADS).permute(0, 2, 1, 3)

    q, k, v = split(lin(x, "self.query")), split(lin(ctx, "self.key")), split(lin(ctx, "self.value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS) + mask
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    out = (probs @ v).permute(0, 2, 1, 3).reshape(x.shape)
    return ref_layer_norm(lin(out, "output.dense") + x, sd[f"{prefix}output.LayerNorm.weight"],
                          sd[f"{prefix}output.LayerNorm.bias"])


def ref_fusion_layer(text: torch.Tensor, text_mask: torch.Tensor, vision: torch.Tensor, vision_mask: torch.Tensor,
                     sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Self-attention → cross-attention → exact-GELU FFN, each with a post-LN residual."""
    x = ref_attention(text, text, sd, "attention.", text_mask)
    x = ref_attention(x, vision, sd, "crossattention.", vision_mask)
    h = x @ sd["intermediate.dense.weight"].t() + sd["intermediate.dense.bias"]
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    h = h @ sd["output.dense.weight"].t() + sd["output.dense.bias"]
    return ref_layer_norm(h + x, sd["output.LayerNorm.weight"], sd["output.LayerNorm.bias"])


def inputs(seed: int = 1, b: int = 3, lt: int = 7, lv: int = 10
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random text/vision tokens with padding masks (every row keeps its first token)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, lt, HIDDEN, generator=g)
    vision = torch.randn(b, lv, VISION, generator=g)
    text_atts = torch.ones(b, lt, dtype=torch.long)
    text_atts[1, 4:] = 0
    text_atts[2, 2:] = 0
    vision_atts = torch.ones(b, lv, dtype=torch.long)
    vision_atts[0, 6:] = 0
    vision_atts[2, [1, 3, 8]] = 0
    return text, text_atts, vision, vision_atts


@pytest.mark.parametrize("causal", [False, True])
def test_fusion_matches_reference(causal: bool) -> None:
    enc = make_encoder(layers=2)
    text, text_atts, vision, vision_atts = inputs()
    lt, lv = text.shape[1], vision.shape[1]
    with torch.no_grad():
        ours = enc(text, text_atts, vision, vision_atts, causal=causal)
        ref = text
        for layer in enc.layer:
            ref = ref_fusion_layer(ref, additive_mask(text_atts, lt, lt, causal), vision,
                                   additive_mask(vision_atts, lt, lv), layer.state_dict())
    assert ours.shape == text.shape
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() < 1e-5
    # non-trivial: the layers really change the input
    assert (ours - text).abs().max() > 0.1


def test_single_layer_matches_reference_without_masks() -> None:
    enc = make_encoder(layers=1, seed=3)
    layer: FusionLayer = enc.layer[0]
    text, _, vision, _ = inputs(seed=4)
    with torch.no_grad():
        ours = layer(text, None, vision, None)
        ref = ref_fusion_layer(text, additive_mask(None, 7, 7), vision, additive_mask(None, 7, 10),
                               layer.state_dict())
    assert (ours - ref).abs().max() < 1e-5


def test_attention_mask_helper() -> None:
    assert attention_mask(None, 5) is None
    causal = attention_mask(None, 3, causal=True)
    assert causal.shape == (1, 1, 3, 3)
    assert causal[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    key = torch.tensor([[1, 1, 0]])
    both = attention_mask(key, 3, causal=True)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    key_only = attention_mask(key, 2)
    assert key_only.shape == (1, 1, 1, 3)  # broadcast over queries
    assert key_only[0, 0, 0].tolist() == [True, True, False]


def test_causal_output_ignores_later_tokens() -> None:
    enc = make_encoder()
    text, _, vision, vision_atts = inputs()
    text_atts = torch.ones(text.shape[:2], dtype=torch.long)
    t = 3
    perturbed = text.clone()
    perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:]) * 3
    with torch.no_grad():
        a = enc(text, text_atts, vision, vision_atts, causal=True)
        b = enc(perturbed, text_atts, vision, vision_atts, causal=True)
        a_full = enc(text, text_atts, vision, vision_atts, causal=False)
        b_full = enc(perturbed, text_atts, vision, vision_atts, causal=False)
    assert (a[:, : t + 1] - b[:, : t + 1]).abs().max() < 1e-5
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-2
    # without the causal mask the early positions do see the later tokens
    assert (a_full[:, : t + 1] - b_full[:, : t + 1]).abs().max() > 1e-2


def test_masked_vision_tokens_do_not_matter() -> None:
    enc = make_encoder()
    text, text_atts, vision, vision_atts = inputs()
    masked = vision_atts == 0
    perturbed = vision.clone()
    perturbed[masked] = torch.randn(int(masked.sum()), VISION) * 10
    with torch.no_grad():
        a = enc(text, text_atts, vision, vision_atts)
        b = enc(text, text_atts, perturbed, vision_atts)
    assert torch.allclose(a, b, atol=1e-5)
    # a visible token does matter
    visible = vision.clone()
    visible[0, 0] += 5.0
    with torch.no_grad():
        c = enc(text, text_atts, visible, vision_atts)
    assert (c[0] - a[0]).abs().max() > 1e-2
    assert torch.allclose(c[1:], a[1:], atol=1e-6)  # other rows untouched


def test_padded_text_keys_do_not_affect_valid_positions() -> None:
    enc = make_encoder()
    text, text_atts, vision, vision_atts = inputs()
    perturbed = text.clone()
    perturbed[text_atts == 0] += 7.0
    with torch.no_grad():
        a = enc(text, text_atts, vision, vision_atts)
        b = enc(perturbed, text_atts, vision, vision_atts)
    valid = text_atts.bool()
    assert (a[valid] - b[valid]).abs().max() < 1e-5


def test_eval_is_deterministic_and_train_uses_dropout() -> None:
    enc = make_encoder()
    text, text_atts, vision, vision_atts = inputs()
    with torch.no_grad():
        assert torch.equal(enc(text, text_atts, vision, vision_atts), enc(text, text_atts, vision, vision_atts))
        enc.train()
        torch.manual_seed(0)
        d1 = enc(text, text_atts, vision, vision_atts)
        torch.manual_seed(1)
        d2 = enc(text, text_atts, vision, vision_atts)
    assert (d1 - d2).abs().max() > 1e-3


def test_grad_checkpointing_gives_same_output_and_grads() -> None:
    enc = make_encoder()
    enc.layer.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
    for layer in enc.layer:
        layer.attention.attn_dropout = layer.crossattention.attn_dropout = 0.0
    enc.train()
    text, text_atts, vision, vision_atts = inputs()
    grads = []
    outs = []
    for flag in (False, True):
        enc.grad_checkpointing = flag
        enc.zero_grad()
        out = enc(text, text_atts, vision, vision_atts)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(enc.layer[0].crossattention.self.key.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert grads[0].abs().sum() > 0


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="multiple"):
        FusionLayer(hidden=30, heads=4, inner=8, vision_width=8)


def test_shared_vision_index_equals_repeated_vision() -> None:
    """Texts reading one of U distinct visual inputs through ``vision_index`` get what they get from
    their own copy of it (the ITM re-ranking path), masks included, with and without grad checkpointing."""
    enc = make_encoder()
    text, text_atts, vision, vision_atts = inputs()
    vision, vision_atts = vision[[0, 2]], vision_atts[[0, 2]]  # U = 2 distinct inputs (both masked)
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        repeated = enc(text, text_atts, vision[index], vision_atts[index])
        shared = enc(text, text_atts, vision, vision_atts, vision_index=index)
    assert torch.allclose(shared, repeated, atol=1e-5)
    enc.train().grad_checkpointing = True
    torch.manual_seed(3)
    a = enc(text, text_atts, vision, vision_atts, vision_index=index)
    torch.manual_seed(3)
    b = enc(text, text_atts, vision[index], vision_atts[index])
    assert torch.allclose(a, b, atol=1e-5)
