"""Captioning training batches for the "MLM for generation" recipe (:mod:`models.captioning`): the caption with
its targets chosen and, FG-free, a ``[MASK]`` inserted before each target that shares its position id."""
from __future__ import annotations

import random
from typing import Any, cast

import torch

from dataset.masking import IGNORE, choose_spans, continuation_table


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """``[CLS]`` + the prompt's tokens: the fixed start of every generated caption."""
    words = tokenizer(prompt.strip(), add_special_tokens=False)["input_ids"] if prompt.strip() else []
    return [tokenizer.cls_token_id, *words]


class CaptionMLMCollate:
    """Samples ``{image, text, ...}`` (``text`` = prompt + cleaned caption, as :class:`dataset.tasks.CaptionDataset`
    gives them) → a training batch (see the module docstring). Picklable, for DataLoader workers.

    Targets: ``round((len(tokens) - n_prompt) * mask_prob)`` of them (at least 1, at most ``max_masks``; ``tokens``
    counts ``[CLS]`` and ``[SEP]``), drawn from the caption tokens and the final ``[SEP]``; with probability
    ``skipgram_prb`` a draw is a span of 2..``skipgram_size`` tokens, and spans grow to whole words.
    """

    def __init__(self, tokenizer, max_tokens: int, max_masks: int, mask_prob: float, skipgram_prb: float = 0.2,
                 skipgram_size: int = 3, whole_word: bool = True, prompt: str = "", fg_free: bool = True):
        self.tokenizer = tokenizer
        self.max_tokens, self.max_masks, self.mask_prob = max_tokens, max_masks, mask_prob
        self.skipgram_prb, self.skipgram_size, self.whole_word = skipgram_prb, skipgram_size, whole_word
        self.fg_free = fg_free
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.prompt_ids = prompt_token_ids(tokenizer, prompt)[1:]
        self.cont = continuation_table(tokenizer)

    def choose(self, ids: list[int], n_prompt: int, rng: random.Random) -> list[int]:
        """Target positions in ``ids`` (``[CLS] prompt caption [SEP]``), sorted."""
        lo, hi = 1 + n_prompt, len(ids)
        if hi <= lo:
            return []
        n_pred = min(self.max_masks, max(1, int(round((len(ids) - n_prompt) * self.mask_prob))))
        return choose_spans(ids, lo, hi, n_pred, rng, self.skipgram_prb, self.skipgram_size,
                            self.cont if self.whole_word else None)

    def encode(self, text: str, rng: random.Random | None = None) -> dict[str, list[int]]:
        """One caption → ``ids``, ``positions`` (position ids), ``slots``, ``targets`` (indices into ``ids``)
        and ``labels``."""
        rng = rng or cast(random.Random, random)
        tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_prompt = len(self.prompt_ids) if tokens[:len(self.prompt_ids)] == self.prompt_ids else 0
        ids = ([self.cls_id] + tokens + [self.sep_id])[:self.max_tokens]
        chosen = self.choose(ids, n_prompt, rng)
        if not self.fg_free:
            out = list(ids)
            for p in chosen:
                out[p] = self.mask_id
            return {"ids": out, "positions": list(range(len(ids))), "slots": [0] * len(ids), "targets": chosen,
                    "labels": [ids[p] for p in chosen]}
        out, pos, slots, targets = [], [], [], []
        chosen_set = set(chosen)
        for p, t in enumerate(ids):
            if p in chosen_set:
                targets.append(len(out))
                out.append(self.mask_id)
                pos.append(p)
                slots.append(1)
            out.append(t)
            pos.append(p)
            slots.append(0)
        return {"ids": out, "positions": pos, "slots": slots, "targets": targets,
                "labels": [ids[p] for p in chosen]}

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        enc = [self.encode(s["text"]) for s in samples]
        n, length = len(enc), max(len(e["ids"]) for e in enc)
        m = max(1, max(len(e["targets"]) for e in enc))
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        atts = torch.zeros(n, length, dtype=torch.long)
        pos = torch.zeros(n, length, dtype=torch.long)
        slots = torch.zeros(n, length, dtype=torch.bool)
        targets = torch.zeros(n, m, dtype=torch.long)
        labels = torch.full((n, m), IGNORE, dtype=torch.long)
        for i, e in enumerate(enc):
            k, t = len(e["ids"]), len(e["targets"])
            ids[i, :k] = torch.tensor(e["ids"])
            atts[i, :k] = 1
            pos[i, :k] = torch.tensor(e["positions"])
            slots[i, :k] = torch.tensor(e["slots"], dtype=torch.bool)
            targets[i, :t] = torch.tensor(e["targets"], dtype=torch.long)
            labels[i, :t] = torch.tensor(e["labels"], dtype=torch.long)
        batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples]), "text_ids": ids,
                                 "text_atts": atts, "position_ids": pos, "mask_slots": slots,
                                 "mlm_positions": targets, "mlm_labels": labels}
        if "image_id" in samples[0]:
            batch["image_id"] = [s["image_id"] for s in samples]
        return batch


__all__ = ["CaptionMLMCollate", "prompt_token_ids"]
