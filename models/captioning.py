"""X²-VLM image captioning as left-to-right masked-token prediction (the official "MLM for generation" recipe).

No separate decoder: the text encoder and the fusion layers run under one causal attention mask, and the
MLM head predicts a token from the hidden state of a ``[MASK]`` placed at that token's position.

Training ("FG-free", the official ``apply_FG_free: True``): the caption is ``[CLS] prompt caption [SEP]``;
some caption tokens (and possibly ``[SEP]``, never ``[CLS]`` or the prompt) are chosen as targets; before each
chosen token a ``[MASK]`` is inserted that shares its position id. Attention is causal, no token attends to
an inserted ``[MASK]`` except that ``[MASK]`` itself, so every real token sees exactly the left context it
will see at generation time. The loss is the KL divergence to a label-smoothed target (smoothing
``eps / (V - 2)`` on every id but the target and ``[CLS]``), averaged over the targets of the batch.
With ``fg_free=False`` the chosen tokens are replaced by ``[MASK]`` in place instead.

Generation: ``[CLS] prompt generated... [MASK]`` under the causal mask; the ``[MASK]`` state gives the next
token's distribution. Beam search as the official one: each live beam proposes its best ``K`` tokens, the
best ``K`` of those ``K × K`` continue, hypotheses ending in ``[SEP]`` leave the beam, ``[SEP]`` is blocked
for the first ``min_length`` tokens, repeated 3-grams are blocked, and the final caption is the hypothesis
with the highest summed log-probability (divided by ``((5 + n) / 6) ** length_penalty`` when that is > 0).
``num_beams=1`` is greedy decoding. Ids at or past the tokenizer's length (a vocabulary table larger than the
tokenizer, as in the tiny preset) are never generated.

Training batch (from :class:`dataset.captions.CaptionMLMCollate`): ``image`` ``(B, 3, H, W)``; ``text_ids``,
``text_atts`` (padding), ``position_ids``, ``mask_slots`` (True at inserted ``[MASK]`` tokens) ``(B, L)``;
``mlm_positions`` / ``mlm_labels`` ``(B, M)`` with -100 label padding.
"""
from __future__ import annotations

import math
from typing import Any, Self

import torch
import torch.nn.functional as F
import transformers

from models.tokens import Tokens
from models.x2vlm import X2VLM

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
IGNORE = -100  # label padding of the MLM targets (dataset.masking.IGNORE)


def caption_attention(text_atts: torch.Tensor, mask_slots: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean attention ``(B, 1, L, L)`` (True = attend): causal, padding keys off, and no query but itself
    attends to a ``mask_slots`` key."""
    b, n = text_atts.shape
    allowed = torch.ones(n, n, dtype=torch.bool, device=text_atts.device).tril()[None].expand(b, n, n)
    allowed = allowed & text_atts.bool()[:, None, :]
    if mask_slots is not None:
        eye = torch.eye(n, dtype=torch.bool, device=text_atts.device)[None]
        allowed = allowed & (~mask_slots.bool()[:, None, :] | eye)
    return allowed[:, None]


def smoothed_kl_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, exclude_id: int) -> torch.Tensor:
    """Mean over non-ignored targets of KL(q || softmax(logits)), q = ``1 - smoothing`` on the label,
    ``smoothing / (V - 2)`` on every other id except ``exclude_id`` (0 there). ``smoothing=0`` is cross-entropy."""
    valid = labels != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[valid].float(), dim=-1)
    target = labels[valid]
    v = logp.shape[-1]
    lp_target = logp.gather(1, target[:, None])[:, 0]
    if smoothing <= 0:
        return -lp_target.mean()
    s = smoothing / (v - 2)
    lp_rest = logp.sum(-1) - lp_target - logp[:, exclude_id]
    entropy_part = (1 - smoothing) * math.log(1 - smoothing) if smoothing < 1 else 0.0
    entropy_part += (v - 2) * s * math.log(s)
    return (entropy_part - (1 - smoothing) * lp_target - s * lp_rest).mean()


# ------------------------------------------------------------------------------------------------ model
class X2VLMForCaptioning(X2VLM):
    """The backbone and the (tied) MLM head, as the official captioning model (no ITC / ITM / bbox head).

    ``label_smoothing`` (official 0.1) comes from ``caption.label_smoothing`` (:meth:`from_config`); a model
    built otherwise (e.g. the Python API's generation view) sets it before training."""

    heads = ("mlm",)

    def __init__(self, model_cfg: dict, loss_cfg: dict | None = None, load_text_weights: bool = True):
        super().__init__(model_cfg, loss_cfg, load_text_weights)
        self.fusion.freeze_unused_for_causal_text()  # FIBER: its image stream never reads a causal text
        self.label_smoothing: float | None = None
        self._cls_id: int | None = None
        self._sep_id: int | None = None
        self._mask_id: int | None = None
        self._n_tokens: int | None = None  # ids at or past the tokenizer's length are never generated
        emb = self.text_encoder.embeddings
        # RoBERTa-style position ids start after the padding index
        self._pos_offset = emb.padding_idx + 1 if "roberta" in type(emb).__name__.lower() else 0

    @classmethod
    def from_config(cls, cfg: dict, load_weights: bool = True, trusted: bool | None = None) -> Self:
        """As :meth:`X2VLM.from_config`; with the full config, ``label_smoothing`` from ``caption.label_smoothing``."""
        model = super().from_config(cfg, load_weights, trusted)
        if "caption" in cfg:
            model.label_smoothing = float(cfg["caption"]["label_smoothing"])
        return model

    def caption_states(self, ids: torch.Tensor, position_ids: torch.Tensor, attn: torch.Tensor,
                       image_embeds: Tokens, image_atts: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion output ``(B, L, H)`` with the text and fusion self-attention under ``attn`` ``(B, 1, L, L)``."""
        text_mask = attn if _TRANSFORMERS_MAJOR >= 5 else attn[:, 0].long()  # 4.x takes (B, L, L) 0/1 masks
        text = self.text_tokens(input_ids=ids, attention_mask=text_mask, position_ids=position_ids + self._pos_offset)
        vision_atts = None if image_atts is None or bool(image_atts.all()) else image_atts
        return self.fuse(image_embeds, vision_atts, text, None, text_mask=attn)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """``{"loss"}``: the smoothed masked-token loss of one training batch."""
        image_embeds, image_atts = self.encode_image(batch["image"])
        attn = caption_attention(batch["text_atts"], batch.get("mask_slots"))
        states = self.caption_states(batch["text_ids"], batch["position_ids"], attn, image_embeds, image_atts)
        logits = self.mlm_logits(states, batch["mlm_positions"])
        cls_id = self._special_tokens()[0]
        if self.label_smoothing is None:
            raise RuntimeError("set label_smoothing (caption.label_smoothing; from_config does) before training")
        loss = smoothed_kl_loss(logits, batch["mlm_labels"], self.label_smoothing, cls_id)
        return {"loss": loss}

    def set_special_tokens(self, tokenizer) -> None:
        """Ids the model needs: ``[CLS]`` (no smoothing mass; the official ``ignore_index``), ``[SEP]`` (end of
        caption) and ``[MASK]``; ids the tokenizer does not have (a vocabulary table larger than the tokenizer)
        are never generated."""
        self._cls_id, self._sep_id, self._mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, \
            tokenizer.mask_token_id
        self._n_tokens = len(tokenizer)

    def _special_tokens(self) -> tuple[int, int, int]:
        """``([CLS], [SEP], [MASK])`` ids, as :meth:`set_special_tokens` set them."""
        if self._cls_id is None or self._sep_id is None or self._mask_id is None:
            raise RuntimeError("call set_special_tokens(tokenizer) first: the model needs [CLS], [SEP] and [MASK]")
        return self._cls_id, self._sep_id, self._mask_id

    def next_token_logprobs(self, image_embeds: Tokens, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(N, V)`` of the token after ``prefix`` ``(N, L)`` (a ``[MASK]`` is appended)."""
        n, length = prefix.shape
        ids = torch.cat([prefix, prefix.new_full((n, 1), self._special_tokens()[2])], dim=1)
        atts = torch.ones_like(ids)
        pos = torch.arange(length + 1, device=ids.device)[None].expand(n, -1)
        states = self.caption_states(ids, pos, caption_attention(atts), image_embeds)
        return F.log_softmax(self.mlm_head(states[:, -1]).float(), dim=-1)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompt_ids: list[int], num_beams: int = 3, max_length: int = 50,
                 min_length: int = 5, length_penalty: float = 0.0, no_repeat_ngram: int = 3) -> list[list[int]]:
        """Token ids of one caption per image (without the prompt and the final ``[SEP]``); see the module
        docstring. ``max_length`` counts generated tokens."""
        sep_id = self._special_tokens()[1]
        image_embeds, _ = self.encode_image(images)
        b, k, dev = images.shape[0], num_beams, images.device
        image_embeds = image_embeds.repeat_interleave(k, 0)
        prefix = torch.tensor(prompt_ids, dtype=torch.long, device=dev)[None].expand(b * k, -1)
        gen = prefix.new_zeros(b * k, 0)
        score = torch.full((b, k), -math.inf, device=dev)
        score[:, 0] = 0.0  # the beams start identical: expand only the first
        done: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
        steps_run = 0
        for step in range(max_length):
            steps_run = step + 1
            logp = self.next_token_logprobs(image_embeds, torch.cat([prefix, gen], dim=1))
            if self._n_tokens is not None and self._n_tokens < logp.shape[-1]:
                logp[:, self._n_tokens:] = -math.inf
            if step < min_length:
                logp[:, sep_id] = -math.inf
            if no_repeat_ngram > 0 and gen.shape[1] + 1 >= no_repeat_ngram:
                _block_repeats(logp, gen.tolist(), no_repeat_ngram)
            top_lp, top_id = logp.topk(k, dim=-1)  # each beam proposes its best k tokens
            cand = (score.reshape(b * k, 1) + top_lp).reshape(b, k * k)
            best, idx = cand.topk(k, dim=-1)
            token = top_id.reshape(b, k * k).gather(1, idx)
            rows = (torch.arange(b, device=dev)[:, None] * k + torch.div(idx, k, rounding_mode="floor")).reshape(-1)
            gen = torch.cat([gen[rows], token.reshape(-1, 1)], dim=1)
            score = best
            ended = (token == sep_id) & torch.isfinite(best)
            for i, j in ended.nonzero().tolist():
                done[i].append((_normalise(float(best[i, j]), step, length_penalty), gen[i * k + j, :-1].tolist()))
            score = score.masked_fill(token == sep_id, -math.inf)
            if _finished(done, score, length_penalty):
                break
        out = []
        for i in range(b):
            hyps = list(done[i])
            for j in range(k):  # beams still open at the last step are candidates too
                if math.isfinite(float(score[i, j])):
                    hyps.append((_normalise(float(score[i, j]), steps_run - 1, length_penalty),
                                 gen[i * k + j].tolist()))
            out.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
        return out


def _normalise(score: float, step: int, length_penalty: float) -> float:
    return score / ((5 + step + 1) / 6.0) ** length_penalty if length_penalty > 0 else score


def _finished(done: list[list[tuple[float, list[int]]]], score: torch.Tensor, length_penalty: float) -> bool:
    """Every image is settled: no open beam, or (summed log-probabilities only fall) no open beam can still
    beat its best ended hypothesis."""
    best_open = score.max(dim=1).values.tolist()
    for hyps, open_best in zip(done, best_open, strict=True):
        if math.isinf(open_best):
            continue
        if length_penalty > 0 or not hyps or max(h[0] for h in hyps) < open_best:
            return False
    return True


def _block_repeats(logp: torch.Tensor, seqs: list[list[int]], n: int) -> None:
    """Forbid (−inf) every token that would repeat an ``n``-gram already in the row's generated tokens."""
    for row, seq in enumerate(seqs):
        if len(seq) < n - 1:
            continue
        tail = tuple(seq[len(seq) - (n - 1):]) if n > 1 else ()
        banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail}
        if banned:
            logp[row, list(banned)] = -math.inf

