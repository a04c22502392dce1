"""X²-VLM for VQA: the answer is *generated* by a text decoder and, at test time, *ranked* over a candidate list.

Architecture (as the official ``XVLMForVQA``, models/model_generation.py of zengyan-97/X2-VLM):

* question states = the fusion output of image + question (``X2VLM.fuse``);
* ``text_decoder``: a BERT-shaped decoder of ``model.fusion.layers`` layers (official ``num_dec_layers: 6``,
  or half the fusion layers) — word/position/type embeddings, then per layer causal self-attention,
  cross-attention to the question states, FFN — and an LM head tied to the decoder's word embeddings.
  Parameter names follow the official ``text_decoder.bert.{embeddings,encoder.layer.i}.*`` /
  ``text_decoder.cls.predictions.*`` so a fine-tuned official VQA checkpoint loads one-to-one;
* fine-tuning from pretrained weights initialises the decoder from the model itself (official
  ``load_pretrained``): embeddings ← text embeddings, decoder layer i ← fusion layer i (or 2i+1 for half as
  many layers; cross-attention key/value only where the widths agree), LM head ← MLM head. The whole decoder
  gets ``optimizer.lr_mult`` (official ``large_lr_for_dec: True``).

Training batch: ``images`` (B, 3, H, W) (or ``image``; (B, T, 3, H, W) videos), ``text_ids``/``text_atts``
(B, Lq) the questions, ``answer_ids``/``answer_atts`` (A, La) all answers of the batch flattened
(``[CLS] answer [SEP]``), ``weights`` (A,) and ``n_answers`` (B,) (dataset.tasks.collate_vqa). Loss: teacher-forced
next-token cross-entropy summed over each answer's tokens, times the answer's weight, summed and divided
by B (official recipe).

Inference (:meth:`X2VLMForVQA.rank_answers`, official ``rank_answer``): the decoder's first step from
``[CLS]`` gives every candidate's first-token probability; the ``k`` candidates with the highest go on, each
scored by log p(first token) + the log-likelihood of its whole sequence (first token, rest, [SEP]) — the
official sum, which counts the first token twice — and re-ranked by that score.
"""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from models.fusion import FusionEncoder
from models.heads import MLMHead
from models.weight_init import bert_init_
from models.x2vlm import X2VLM

_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


def decoder_layers(model_cfg: dict, fused_layers: int) -> int:
    """Answer-decoder depth: ``model.decoder.layers`` where the config has it, else the number of fused layers
    (the official recipes: ``num_dec_layers`` 6 = the fusion layers)."""
    return int((model_cfg.get("decoder") or {}).get("layers") or fused_layers)


class DecoderEmbeddings(nn.Module):
    """BERT embeddings (word + absolute position + token type 0 → LayerNorm → dropout), official names."""

    def __init__(self, tc):
        super().__init__()
        self.word_embeddings = nn.Embedding(tc.vocab_size, tc.hidden_size, padding_idx=tc.pad_token_id)
        self.position_embeddings = nn.Embedding(tc.max_position_embeddings, tc.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(int(tc.type_vocab_size), 1), tc.hidden_size)
        self.LayerNorm = nn.LayerNorm(tc.hidden_size, eps=tc.layer_norm_eps)
        self.dropout = nn.Dropout(tc.hidden_dropout_prob)
        # RoBERTa-style position tables start after the padding index
        self.position_offset = (tc.pad_token_id + 1) if tc.model_type in _ROBERTA_TYPES else 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device) + self.position_offset
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class _DecoderBody(nn.Module):
    def __init__(self, tc, num_layers: int, context_width: int):
        super().__init__()
        self.embeddings = DecoderEmbeddings(tc)
        self.encoder = FusionEncoder.sized_like(tc, num_layers, context_width)


class AnswerDecoder(nn.Module):
    """Causal text decoder with cross-attention to a context (the question states) and a tied LM head."""

    def __init__(self, tc, num_layers: int, context_width: int):
        super().__init__()
        self.bert = _DecoderBody(tc, num_layers, context_width)
        self.cls = MLMHead(tc.hidden_size, tc.vocab_size, act=tc.hidden_act, eps=tc.layer_norm_eps)
        self.cls.tie_to(self.bert.embeddings.word_embeddings)
        self._init_weights(tc.initializer_range)

    def _init_weights(self, std: float) -> None:
        for m in self.modules():
            bert_init_(m, std)
        nn.init.zeros_(self.cls.predictions.bias)

    @property
    def layers(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    def forward(self, ids: torch.Tensor, atts: torch.Tensor | None, context: torch.Tensor,
                context_atts: torch.Tensor | None) -> torch.Tensor:
        """Vocabulary logits ``(N, L, V)``; position t sees tokens ≤ t and the whole context."""
        hidden = self.bert.encoder(self.bert.embeddings(ids), atts, context, context_atts, causal=True)
        return self.cls(hidden)

    def sequence_nll(self, ids: torch.Tensor, atts: torch.Tensor, context: torch.Tensor,
                     context_atts: torch.Tensor | None) -> torch.Tensor:
        """``(N,)``: minus the log-likelihood of tokens 1.. of each sequence (its padding excluded), given
        token 0 and the context — the official per-answer loss (cross-entropy summed over the tokens)."""
        logits = self(ids, atts, context, context_atts)[:, :-1].float()
        targets = ids[:, 1:].masked_fill(atts[:, 1:] == 0, -100)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        return nll.sum(dim=1)


class X2VLMForVQA(X2VLM):
    """X²-VLM + answer decoder, as the official VQA model (no pretraining head). Build with :meth:`from_config`;
    train with ``forward(batch)``; answer with :meth:`answer` / :meth:`rank_answers` (see the module docstring)."""

    heads: tuple[str, ...] = ()

    def __init__(self, model_cfg: dict, loss_cfg: dict | None = None, load_text_weights: bool = True):
        super().__init__(model_cfg, loss_cfg, load_text_weights)
        self.text_decoder = AnswerDecoder(self.text_encoder.config, decoder_layers(model_cfg, self.fusion.num_layers),
                                          self.text_width)
        if model_cfg.get("grad_checkpointing"):
            self.set_grad_checkpointing(True)
        self.decoder_init: list[str] = []  # decoder keys the official init wrote
        self.decoder_source: str | None = None  # "checkpoint" (a fine-tuned VQA model), "encoder" (official init)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: dict, load_weights: bool = True, trusted: bool | None = None) -> Self:
        """As :meth:`X2VLM.from_config`. A checkpoint without decoder (pretraining) gives the decoder the official
        init from its own weights (:meth:`adapt_checkpoint_state`); with pretrained weights but no checkpoint
        (text / vision weights only) the decoder starts as a copy of the model's embeddings / fusion layers.
        With any pretrained weights every decoder parameter gets ``optimizer.lr_mult``."""
        model = super().from_config(cfg, load_weights, trusted)
        m = cfg["model"] if isinstance(cfg.get("model"), dict) else cfg
        pretrained = load_weights and bool(m["vision"].get("checkpoint") or m["text"].get("name_or_path")
                                           or m.get("checkpoint"))
        if pretrained:
            if model.decoder_source is None:
                model.decoder_init = model.init_decoder_from_encoder()
            model.fresh_parameters = set(model.fresh_parameters) | {
                "text_decoder." + n for n, _ in model.text_decoder.named_parameters()}
        return model

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        if hasattr(self, "text_decoder"):
            self.text_decoder.bert.encoder.grad_checkpointing = enable

    def tie_weights(self) -> None:
        super().tie_weights()
        self.text_decoder.cls.tie_to(self.text_decoder.bert.embeddings.word_embeddings)

    def _decoder_sources(self) -> list[str]:
        """Key prefixes (our layout) of the layers decoder layer i starts from: all fusion layers, or the odd
        ones for a decoder of half the depth (official ``num_dec_layers``); the fused layers are the fusion's
        (:meth:`~models.fusion_interface.Fusion.decoder_start_layers`; FIBER: its fused top text layers)."""
        n_dec = len(self.text_decoder.layers)
        fusion = self.fusion.decoder_start_layers(len(self.text_encoder.encoder.layer))
        if n_dec == len(fusion):
            return fusion
        if n_dec == len(fusion) // 2:
            return [fusion[2 * i + 1] for i in range(n_dec)]  # the odd fusion layers, as the official code
        raise ValueError(f"a {n_dec}-layer answer decoder cannot start from {len(fusion)} fusion layers "
                         f"(it takes as many, or half as many)")

    def decoder_state_from(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official decoder init as decoder weights derived from ``state`` (our layout): embeddings ← text
        embeddings, layer i ← its fusion layer (:meth:`_decoder_sources`), LM head ← MLM head (where ``state``
        has one). Cross-attention key/value read the vision tokens in the fusion but the question states in the
        decoder: taken only where the two widths agree, as the official code. Keys the decoder has, shapes equal."""
        own = self.state_dict()
        narrow = self.vision_width != self.text_width
        renames = [("text_encoder.embeddings.", "text_decoder.bert.embeddings."), ("mlm_head.", "text_decoder.cls.")]
        renames += [(src, f"text_decoder.bert.encoder.layer.{i}.") for i, src in enumerate(self._decoder_sources())]
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            for src, dst in renames:
                if not key.startswith(src):
                    continue
                rest = key[len(src):]
                if narrow and rest.startswith(("crossattention.self.key.", "crossattention.self.value.")):
                    break
                name = dst + rest
                if name in own and own[name].shape == value.shape:
                    out[name] = value
                break
        return out

    def adapt_checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint without ``text_decoder.*`` keys (pretraining, or another task) gets the official decoder
        init derived from its own weights (:meth:`decoder_state_from`); a fine-tuned VQA checkpoint loads as is."""
        if any(k.startswith("text_decoder.") for k in state):
            self.decoder_source = "checkpoint"
            return state
        derived = self.decoder_state_from(state)
        self.decoder_source, self.decoder_init = "encoder", sorted(derived)
        return {**state, **derived}

    @torch.no_grad()
    def init_decoder_from_encoder(self) -> list[str]:
        """Official decoder initialisation from the model's own (loaded) weights; returns the decoder keys written."""
        derived = self.decoder_state_from(self.state_dict())
        self.load_state_dict(derived, strict=False)
        self.decoder_source = "encoder"
        return sorted(derived)

    # ------------------------------------------------------------------ encoding
    def question_states(self, images: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor
                        ) -> torch.Tensor:
        """Fusion output ``(B, Lq, H)`` of image (or video frames) and question."""
        image_embeds, image_atts = self.encode_video(images) if images.ndim == 5 else self.encode_image(images)
        return self.fuse(image_embeds, image_atts, self.encode_text(text_ids, text_atts), text_atts)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """Weighted answer-generation loss of a training batch (module docstring)."""
        images = batch["images"] if "images" in batch else batch["image"]
        text_atts = batch["text_atts"]
        states = self.question_states(images, batch["text_ids"], text_atts)
        n_answers = batch["n_answers"].to(states.device)
        owner = torch.repeat_interleave(torch.arange(states.shape[0], device=states.device), n_answers)
        nll = self.text_decoder.sequence_nll(batch["answer_ids"], batch["answer_atts"], states[owner],
                                             text_atts[owner])
        loss = (batch["weights"].to(nll.dtype) * nll).sum() / states.shape[0]
        return {"loss": loss}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rank_answers(self, states: torch.Tensor, state_atts: torch.Tensor, answer_ids: torch.Tensor,
                     answer_atts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the candidate list ``answer_ids``/``answer_atts`` (N, La) for every question: ``(ids, probs)``
        of shape (B, k), best first — candidate indices and their softmax over the k re-ranking scores."""
        b, n = states.shape[0], answer_ids.shape[0]
        k = max(1, min(int(k), n))
        start = answer_ids[:1, :1].expand(b, 1)  # [CLS] opens every answer
        first_logits = self.text_decoder(start, None, states, state_atts)[:, 0].float()
        first_prob = first_logits.softmax(dim=-1).index_select(1, answer_ids[:, 1])  # (B, N)
        top_probs, top_ids = first_prob.topk(k, dim=1)
        cand_ids = answer_ids[top_ids].flatten(0, 1)  # (B*k, La)
        cand_atts = answer_atts[top_ids].flatten(0, 1)
        nll = self.text_decoder.sequence_nll(cand_ids, cand_atts, states.repeat_interleave(k, dim=0),
                                             state_atts.repeat_interleave(k, dim=0)).view(b, k)
        scores = top_probs.log() - nll  # official: log p(first token) + log p(whole answer)
        probs, order = scores.softmax(dim=-1).topk(k, dim=1)
        return top_ids.gather(1, order), probs

    @torch.no_grad()
    def answer(self, images: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor,
               answer_ids: torch.Tensor, answer_atts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rank_answers` for a batch of images and tokenised questions."""
        return self.rank_answers(self.question_states(images, text_ids, text_atts), text_atts, answer_ids,
                                 answer_atts, k)


__all__ = ["X2VLMForVQA", "AnswerDecoder", "DecoderEmbeddings", "decoder_layers"]
