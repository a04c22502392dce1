"""The official X²-VLM key layouts and how they map onto this project's module names: one table, used by every
task model and by ``load_model``.

The official code (zengyan-97/X2-VLM) keeps the text encoder and the fusion in *one* BERT: layers
``0 .. n_text-1`` are text layers, the layers after them carry a ``crossattention`` and are the fusion. Its
pretraining model wraps that BERT in ``BertForMaskedLM`` (keys ``text_encoder.bert.*`` and the MLM head
``text_encoder.cls.*``; the captioning model too); its fine-tuned retrieval, NLVR2, grounding, VQA and video-QA
models use a plain ``BertModel`` (``text_encoder.encoder.layer.N.*``, no ``bert.`` level). Here text and fusion
are separate modules (``text_encoder.encoder.layer.i``, ``fusion.layer.j``) and the MLM head is ``mlm_head``.

Where the fusion starts is read from the checkpoint itself (the first layer with a ``crossattention``), not from
the model, so a checkpoint of another depth is reported as not fitting instead of being split at the wrong
layer. Every other official key (vision encoder, projections, heads, ``text_decoder.*``, ``temp``,
``absolute_frame_pos_embed``) already has our name.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

#: stands for "text layer N, or fusion layer N - n_text when the checkpoint's layer N has a cross-attention"
BERT_LAYER = "<bert layer>"

#: official key pattern → our key (``re`` replacement) or :data:`BERT_LAYER`, or ``None``: a buffer the official
#: code derives from its hyperparameters (dropped, reported as derived). First match wins; no match: same name.
OFFICIAL_KEY_MAP: tuple[tuple[str, str | None], ...] = (
    # text + fusion layers: pretraining / captioning (bert. or roberta.) and fine-tuned models (no level)
    (r"text_encoder\.(?:bert\.|roberta\.)?encoder\.layer\.(?P<layer>\d+)\.(?P<rest>.+)", BERT_LAYER),
    # X-VLM-style models with a separate cross encoder
    (r"cross_encoder\.encoder\.layer\.(\d+)\.(.+)", r"fusion.layer.\1.\2"),
    # embeddings (and a pooler where one was saved)
    (r"text_encoder\.(?:bert|roberta)\.(.+)", r"text_encoder.\1"),
    # the MLM head of BertForMaskedLM
    (r"text_encoder\.cls\.(.+)", r"mlm_head.\1"),
    # the captioning loss's label-smoothing distribution (a constant of label_smoothing and the vocabulary)
    (r"crit_mask_lm_smoothed\.one_hot", None),
)
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in OFFICIAL_KEY_MAP)
_LAYER = _COMPILED[0][0]

#: buffers every model recomputes (never taken from a checkpoint; reported as derived)
DERIVED_SUFFIXES = ("relative_position_index", "position_ids", "k_bias")

#: our key prefixes of each fusion architecture (``model.architecture``)
ARCHITECTURE_SIGNATURES: dict[str, tuple[str, ...]] = {
    "x2vlm": ("fusion.layer.",),
    "fiber": ("fusion.text_cross.", "fusion.image_cross."),
}

#: our key prefix → the backbone part it belongs to; these must load from a checkpoint (else random init)
BACKBONE_PARTS: dict[str, str] = {
    "vision_encoder.": "vision encoder",
    "text_encoder.": "text encoder",
    "fusion.": "fusion",
}


#: weights tied in both codes (one tensor, two names); a file may hold one name only (safetensors stores a tied
#: tensor once), so each name stands for its partner too
TIED_KEYS: tuple[tuple[str, str], ...] = (
    ("text_encoder.embeddings.word_embeddings.weight", "mlm_head.predictions.decoder.weight"),
    ("mlm_head.predictions.bias", "mlm_head.predictions.decoder.bias"),
    ("text_decoder.bert.embeddings.word_embeddings.weight", "text_decoder.cls.predictions.decoder.weight"),
    ("text_decoder.cls.predictions.bias", "text_decoder.cls.predictions.decoder.bias"),
)


def complete_ties(state: dict, wanted) -> dict:
    """``state`` (our layout) plus, for every tied pair of :data:`TIED_KEYS` of which it holds one name, the
    other name where ``wanted`` (the model's keys) has it."""
    out = dict(state)
    for pair in TIED_KEYS:
        for have, need in (pair, pair[::-1]):
            if have in out and need not in out and need in wanted:
                out[need] = out[have]
    return out


def fusion_start(keys: Mapping[str, object] | list[str]) -> int | None:
    """The first official BERT layer with a cross-attention (= the number of text layers), or ``None``."""
    starts = [int(m.group("layer")) for k in keys if (m := _LAYER.fullmatch(k))
              and m.group("rest").startswith("crossattention.")]
    return min(starts) if starts else None


def our_key(key: str, n_text: int | None) -> str | None:
    """Our name of an official key (``n_text``: :func:`fusion_start` of its checkpoint); ``None``: derived."""
    for pattern, target in _COMPILED:
        m = pattern.fullmatch(key)
        if not m:
            continue
        if target is None:
            return None
        if target == BERT_LAYER:
            i, rest = int(m.group("layer")), m.group("rest")
            if n_text is not None and i >= n_text:
                return f"fusion.layer.{i - n_text}.{rest}"
            return f"text_encoder.encoder.layer.{i}.{rest}"
        return m.expand(target)
    return key


def is_derived(key: str) -> bool:
    return key.split(".")[-1] in DERIVED_SUFFIXES


def to_our_layout(state: dict) -> tuple[dict, list[str]]:
    """``(state in our names, official keys dropped as derived)``; our own layout passes through unchanged."""
    n_text = fusion_start(state)
    out, derived = {}, []
    for key, value in state.items():
        name = our_key(key, n_text)
        if name is None:
            derived.append(key)
        else:
            out[name] = value
    return out, derived


def architecture_of(keys) -> str | None:
    """``x2vlm`` / ``fiber`` from the fusion keys (our layout), ``None`` for a checkpoint without fusion keys."""
    found = [arch for arch, prefixes in ARCHITECTURE_SIGNATURES.items() if any(k.startswith(prefixes) for k in keys)]
    return found[0] if len(found) == 1 else None


def backbone_part(key: str) -> str | None:
    for prefix, part in BACKBONE_PARTS.items():
        if key.startswith(prefix):
            return part
    return None


__all__ = ["OFFICIAL_KEY_MAP", "TIED_KEYS", "complete_ties", "BACKBONE_PARTS", "ARCHITECTURE_SIGNATURES",
           "fusion_start", "our_key", "to_our_layout", "architecture_of", "backbone_part", "is_derived"]
