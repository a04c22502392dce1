"""Tokenising collate for the task datasets: their samples carry cleaned text, the batches token ids."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


class TokenizeCollate:
    """Wrap a collate function; replace each text field (a list of strings) by ``<prefix>_ids`` and
    ``<prefix>_atts`` (padded to the longest in the batch, cut at ``max_tokens``).

    ``fields`` maps a batch key to the prefix, e.g. ``{"caption": "text", "answers": "answer"}``.
    Picklable, so it runs inside DataLoader workers.
    """

    def __init__(self, collate: Callable[[list], dict[str, Any]], tokenizer, max_tokens: int,
                 fields: Mapping[str, str]):
        self.collate, self.tokenizer, self.max_tokens, self.fields = collate, tokenizer, max_tokens, dict(fields)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, samples: list) -> dict[str, Any]:
        batch = self.collate(samples)
        for key, prefix in self.fields.items():
            if key not in batch:
                raise KeyError(f"TokenizeCollate: batch has no text field '{key}' (has {sorted(batch)})")
            batch[f"{prefix}_ids"], batch[f"{prefix}_atts"] = self.tokenize(batch.pop(key))
        return batch
