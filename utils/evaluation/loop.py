"""What every evaluation loop shares: the bare model in eval mode without gradients (:func:`evaluating`), the
process's place in the job, tokenising, encoding pixels in the model's dtype, and progress bars."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from models.tokens import Tokens

if TYPE_CHECKING:
    from models.x2vlm import X2VLM


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP / DeepSpeed / compile wrapper."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    return model


def world_of(dist_info) -> tuple[int, int]:
    if dist_info is None:
        return 0, 1
    return int(dist_info.rank), int(dist_info.world_size)


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int, device, padding: str = "max_length"):
    """``(ids, atts)`` on ``device`` from a Hugging Face tokenizer (or any callable with its interface)."""
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def encode_visual(model: X2VLM, pixels: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
    """Whole-image tokens; ``(B, T, 3, H, W)`` inputs are videos. Pixels take the model's dtype (a model
    held in bf16, as under DeepSpeed, gets bf16 inputs)."""
    pixels = pixels.to(next(model.parameters()).dtype)
    if pixels.ndim == 5:
        return model.encode_video(pixels)
    return model.encode_image(pixels)


def progress_bar(iterable, desc: str, total: int | None = None):
    """``iterable`` with a tqdm bar: rank 0 only, only when stderr is a terminal (tqdm's ``disable=None``), and
    never with ``TQDM_DISABLE=1`` in the environment. The values pass through unchanged."""
    from tqdm import tqdm
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return iterable
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return iterable
    return tqdm(iterable, desc=desc, total=total, disable=None, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[Any]:
    """The bare model under any DDP / DeepSpeed / compile wrapper (:func:`unwrap`), in eval mode and under
    ``torch.no_grad()``; its train / eval mode comes back afterwards, however the loop ends. (Typed ``Any``: the
    bare model's class is the caller's, whatever wrapper it passed.)"""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
