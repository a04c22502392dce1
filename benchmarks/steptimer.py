"""Warm-up then timed steps, the device synchronised around each timed one: the loop every step benchmark shares.

Imports only torch, so the official-step benchmark (which must not see this repository's ``utils`` / ``models``
packages) can use it as well as ours.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepTimes:
    warmup_s: float     # the warm-up steps together (compilation happens there)
    times: list[float]  # seconds of each timed step
    last: Any           # what the last step returned


def time_steps(step: Callable[[int], Any], warmup: int, steps: int, device: torch.device) -> StepTimes:
    """``step(i)`` for i < ``warmup`` untimed, then ``steps`` timed ones (i continues); on CUDA the device is
    synchronised after the warm-up and each timed step, and the allocator's peak is reset after the warm-up."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    last = None
    t0 = time.perf_counter()
    for i in range(warmup):
        last = step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup, warmup + steps):
        t = time.perf_counter()
        last = step(i)
        sync()
        times.append(time.perf_counter() - t)
    return StepTimes(warmup_s, times, last)
