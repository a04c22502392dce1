"""The tokens an encoder hands to the fusion, as one named type for both fusion architectures.

``final`` is the backbone's uni-modal output — what the ITC features and the uni-modal heads read. ``state`` is
what a fusion *inside* the backbone re-runs from (FIBER: the tokens entering the top ``K`` layers); a fusion
after the encoders (X²-VLM) has none. Row operations (selection, a box's concept, the mean over video frames)
act on both parts alike through :meth:`Tokens.map`, so code that moves tokens around never needs to know which
fusion made them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Tokens:
    """``final`` ``(B, L, D)``; ``state`` ``(B, L, D)`` or ``None``; rows (dim 0) are the batch."""

    final: torch.Tensor
    state: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Tokens:
        """``fn`` applied to every part (a per-token or per-row operation)."""
        return Tokens(fn(self.final), None if self.state is None else fn(self.state))

    @classmethod
    def cat(cls, parts: Sequence[Tokens]) -> Tokens:
        """The rows of ``parts`` one after the other (all with a ``state`` or all without)."""
        if len({p.state is None for p in parts}) > 1:
            raise ValueError("cannot concatenate tokens with and without a backbone state")
        states = None if parts[0].state is None else torch.cat([p.state for p in parts])  # type: ignore[misc]
        return cls(torch.cat([p.final for p in parts]), states)

    def __getitem__(self, rows) -> Tokens:
        return self.map(lambda t: t[rows])

    def __setitem__(self, rows, value: Tokens) -> None:
        self.final[rows] = value.final
        if self.state is not None:
            if value.state is None:
                raise ValueError("cannot write tokens without a backbone state into tokens with one")
            self.state[rows] = value.state

    def new_zeros(self, rows: int) -> Tokens:
        """``rows`` rows of zeros shaped, typed and placed like these tokens' rows."""
        return self.map(lambda t: t.new_zeros((rows, *t.shape[1:])))

    def index_select(self, dim: int, index: torch.Tensor) -> Tokens:
        return self.map(lambda t: t.index_select(dim, index))

    def repeat_interleave(self, repeats: int | torch.Tensor, dim: int = 0) -> Tokens:
        return self.map(lambda t: t.repeat_interleave(repeats, dim=dim))

    @property
    def shape(self) -> torch.Size:
        """The shape of :attr:`final`."""
        return self.final.shape

    @property
    def device(self) -> torch.device:
        return self.final.device

    @property
    def dtype(self) -> torch.dtype:
        return self.final.dtype

    def __len__(self) -> int:
        return self.final.shape[0]


__all__ = ["Tokens"]
