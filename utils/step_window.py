"""What the training loop keeps of each step on the device, read back once per log window.

A read of a device value (``float(loss)``, ``bool(isfinite(loss))``) makes the host wait for the step's
kernels: done per step, the next step cannot be queued while this one runs. :class:`LogWindow` (the losses) and
:class:`NonFiniteCount` (the skipped steps) add each step's tensors on the device and are read at the end of
a log window (:meth:`LogWindow.close`, :meth:`NonFiniteCount.read`), one transfer each.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


class LogWindow:
    """The losses (of the steps with a finite loss) and images of the steps since the last log record."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor] = {}
        self.images = 0
        self.start = time.perf_counter()
        self.last: dict[str, float] = {}  # the mean losses of the last closed window

    def add_losses(self, losses: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """Add one step's losses (0-d tensors) where ``keep`` (a 0-d bool tensor: the step's loss was finite)."""
        for k, v in losses.items():
            v = v.detach().float()
            self._sums[k] = self._sums.get(k, 0.0) + torch.where(keep, v, torch.zeros_like(v))
            self._counts[k] = self._counts.get(k, 0.0) + keep.float()

    def add_images(self, n: int) -> None:
        self.images += n

    def close(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
              ) -> tuple[dict[str, float], float]:
        """``(mean losses, images per second of this rank)`` of the window; a new window starts. ``reduce_mean``
        averages a tensor over the ranks (one collective for all losses); losses no kept step had are left out."""
        elapsed = time.perf_counter() - self.start
        keys = list(self._sums)
        self.last = {}
        if keys:
            sums = reduce_mean(torch.stack([self._sums[k] for k in keys]))
            counts = torch.stack([self._counts[k] for k in keys])
            means = (sums / counts.clamp_min(1)).tolist()
            self.last = {k: m for k, m, n in zip(keys, means, counts.tolist(), strict=True) if n > 0}
        rate = self.images / max(elapsed, 1e-9)
        self._sums.clear()
        self._counts.clear()
        self.images, self.start = 0, time.perf_counter()
        return dict(self.last), rate


class NonFiniteCount:
    """Steps skipped for a non-finite loss, and the longest run of them in a row, counted on ``device``."""

    def __init__(self, device: torch.device, total: int = 0) -> None:
        self._state = torch.tensor([total, 0, 0], dtype=torch.int64, device=device)  # total, run, longest run

    def add(self, finite: torch.Tensor) -> None:
        """Count one step (``finite``: a 0-d bool tensor)."""
        bad = (~finite).long()
        total, run, longest = self._state.unbind()
        run = (run + bad) * bad
        self._state = torch.stack([total + bad, run, torch.maximum(longest, run)])

    def read(self) -> tuple[int, int]:
        """``(total skipped, longest run since the last read)``; the next read's longest run starts from the
        current run."""
        total, run, longest = self._state.tolist()
        self._state = torch.tensor([total, run, run], dtype=torch.int64, device=self._state.device)
        return total, longest

    @property
    def total(self) -> int:
        return int(self._state[0])
