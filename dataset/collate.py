"""Tokenising collate for the task datasets: their samples carry cleaned text, the batches token ids."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


class TokenizeCollate:
    """Wrap a collate function; replace each text field (a list of strings) by ``<prefix>_ids`` and
    ``<prefix>_atts`` (padded to the longest in the batch, cut at ``max_tokens``).

    ``fields`` maps a batch key to the prefix, e.g. ``{"caption": "text", "answers": "answer"}``.
    The batch also gets ``_truncated`` (how many of its texts had more than ``max_tokens`` tokens and were cut)
    and ``_texts`` (how many texts it tokenised), plain ints like ``_skipped``: a DataLoader worker's counts
    travel with its batches, and :class:`dataset.sampling.EpochStream` sums them in the main process.
    Picklable, so it runs inside DataLoader workers.
    """

    def __init__(self, collate: Callable[[list], dict[str, Any]], tokenizer, max_tokens: int,
                 fields: Mapping[str, str]):
        self.collate, self.tokenizer, self.max_tokens, self.fields = collate, tokenizer, max_tokens, dict(fields)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(ids, atts, n_truncated)``: ids and mask cut at ``max_tokens``, and how many texts were cut."""
        texts = list(texts)
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        encodings = getattr(enc, "encodings", None)
        if encodings is not None:  # a fast (Rust) tokenizer keeps what truncation removed: free to count
            n_cut = sum(bool(e.overflowing) for e in encodings)
        else:  # a Python tokenizer: the uncut lengths
            n_cut = sum(len(ids) > self.max_tokens for ids in self.tokenizer(texts)["input_ids"])
        return enc["input_ids"], enc["attention_mask"], n_cut

    def __call__(self, samples: list) -> dict[str, Any]:
        batch = self.collate(samples)
        n_cut = n_texts = 0
        for key, prefix in self.fields.items():
            if key not in batch:
                raise KeyError(f"TokenizeCollate: batch has no text field '{key}' (has {sorted(batch)})")
            texts = batch.pop(key)
            batch[f"{prefix}_ids"], batch[f"{prefix}_atts"], cut = self.tokenize(texts)
            n_cut, n_texts = n_cut + cut, n_texts + len(texts)
        batch["_truncated"] = batch.get("_truncated", 0) + n_cut
        batch["_texts"] = batch.get("_texts", 0) + n_texts
        return batch
