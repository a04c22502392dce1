"""Masked-language-modelling targets with the official recipe: mask ``mask_prob`` of the tokens (at least one,
at most ``max_masks``), spans of 2..``skipgram_size`` tokens with probability ``skipgram_prb``, whole words kept
together, and each chosen token replaced by [MASK] 80% / a random token 10% / itself 10%.

The random replacement is drawn uniformly from the whole vocabulary, special tokens included, as the official
``TextMaskingGenerator.get_random_word`` does (``dataset/pretrain_dataset.py``: a uniform id in
``[0, len(vocab) - 1]``)."""
from __future__ import annotations

import random
from typing import cast

import numpy as np

IGNORE = -100


def continuation_table(tokenizer) -> np.ndarray:
    """Bool per vocabulary id: True when the token continues the previous word (WordPiece ``##x``;
    for BPE / SentencePiece vocabularies: tokens without the word-start marker ``Ġ`` / ``▁``)."""
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        for t, i in vocab.items():
            table[i] = t.startswith("##")
        return table
    marker = "Ġ" if any(t.startswith("Ġ") for t in tokens) else "▁"
    special = set(tokenizer.all_special_tokens)
    for t, i in vocab.items():
        table[i] = not t.startswith(marker) and t not in special
    return table


def choose_spans(ids: list[int], lo: int, hi: int, n_pred: int, rng: random.Random, skipgram_prb: float,
                 skipgram_size: int, cont: np.ndarray | None = None) -> list[int]:
    """``n_pred`` (or fewer) sorted positions in ``[lo, hi)`` of ``ids``: random starts, a span of
    2..``skipgram_size`` tokens with probability ``skipgram_prb``, widened to whole words when ``cont``
    (:func:`continuation_table`) is given; spans that overshoot are cut back to a random subset."""
    cand = list(range(lo, hi))
    rng.shuffle(cand)
    chosen: set[int] = set()
    for pos in cand:
        if len(chosen) >= n_pred:
            break
        if pos in chosen:
            continue
        start, end = pos, pos + 1
        if skipgram_size >= 2 and skipgram_prb > 0 and rng.random() < skipgram_prb:
            end = pos + rng.randint(2, skipgram_size)
        if cont is not None:
            while start > lo and cont[ids[start]]:
                start -= 1
            while end < hi and cont[ids[end]]:
                end += 1
        chosen.update(range(start, min(end, hi)))
    positions = sorted(chosen)
    if len(positions) > n_pred:
        positions = sorted(rng.sample(positions, n_pred))
    return positions


class MaskGenerator:
    """Callable ``(ids, rng) -> (masked_ids, positions, labels)``; ``ids`` start with [CLS] and end with [SEP].

    ``positions``/``labels`` are padded to ``max_masks`` with 0 / -100.
    """

    def __init__(self, tokenizer, mask_prob: float = 0.5, max_masks: int = 12, skipgram_prb: float = 0.2,
                 skipgram_size: int = 3, whole_word: bool = True):
        self.mask_prob = mask_prob
        self.max_masks = max_masks
        self.skipgram_prb = skipgram_prb
        self.skipgram_size = skipgram_size
        self.whole_word = whole_word
        self.mask_id = tokenizer.mask_token_id
        self.cont = continuation_table(tokenizer)
        # every id of the vocabulary (added tokens too), specials included: the official recipe's draw
        self.random_ids = np.array(sorted(set(tokenizer.get_vocab().values())), dtype=np.int64)

    def __call__(self, ids: list[int], rng: random.Random | None = None) -> tuple[list[int], list[int], list[int]]:
        rng = rng or cast(random.Random, random)
        lo, hi = 1, len(ids) - 1  # candidates exclude [CLS] and the final [SEP]
        n_cand = hi - lo
        if n_cand <= 0:
            return list(ids), [0] * self.max_masks, [IGNORE] * self.max_masks
        n_pred = min(self.max_masks, max(1, int(round(n_cand * self.mask_prob))))
        positions = choose_spans(ids, lo, hi, n_pred, rng, self.skipgram_prb, self.skipgram_size,
                                 self.cont if self.whole_word else None)
        masked = list(ids)
        labels = []
        for p in positions:
            labels.append(ids[p])
            r = rng.random()
            if r < 0.8:
                masked[p] = self.mask_id
            elif r < 0.9:
                masked[p] = int(self.random_ids[rng.randrange(len(self.random_ids))])
        pad = self.max_masks - len(positions)
        return masked, positions + [0] * pad, labels + [IGNORE] * pad
