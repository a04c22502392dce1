"""Bad-input policy: in training skip and count broken samples (abort when too many fail); in evaluation raise."""
from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from dataset.io import BadSample

log = logging.getLogger("x2vlm.data")


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of a window of samples failed."""


class SkipGuard:
    """Counts failures by reason and enforces ``max_bad_fraction`` over a sliding ``window`` of attempts."""

    def __init__(self, max_bad_fraction: float = 0.1, window: int = 1000, name: str = "data"):
        self.max_bad_fraction = float(max_bad_fraction)
        self.window = int(window)
        self.name = name
        self.recent: deque[bool] = deque(maxlen=self.window)
        self.counts: Counter[str] = Counter()
        self.total = 0

    def ok(self) -> None:
        self.recent.append(False)
        self.total += 1

    def bad(self, error: Exception) -> None:
        self.recent.append(True)
        self.total += 1
        reason = error.__class__.__name__
        self.counts[reason] += 1
        n_bad = sum(self.counts.values())
        if n_bad <= 10 or n_bad % 100 == 0:
            log.warning("%s: skipped broken sample #%d (%s): %s", self.name, n_bad, reason, error)
        bad_in_window = sum(self.recent)
        if bad_in_window > self.max_bad_fraction * self.window:
            raise TooManyBadSamples(
                f"{self.name}: {bad_in_window} of the last {len(self.recent)} samples failed "
                f"(limit {self.max_bad_fraction:.0%} of {self.window}); last error: {error}")

    def report(self) -> dict[str, int]:
        return dict(self.counts)


SKIPPABLE = (BadSample, OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError)


def robust_fetch(fetch: Callable[[int], Any], index: int, size: int, training: bool, guard: SkipGuard,
                 rng: random.Random | None = None, max_tries: int = 50) -> tuple[Any, int]:
    """``fetch(index)``; in training a failing sample is replaced by a random other one (up to ``max_tries``).

    Returns ``(sample, n_skipped)``. In evaluation the first error propagates (it names the file and line).
    """
    if not training:
        return fetch(index), 0
    rng = rng or random  # the caller's seeded global state (see dataset.sampling.seeded_random)
    skipped = 0
    for _ in range(max_tries):
        try:
            sample = fetch(index)
        except TooManyBadSamples:
            raise
        except SKIPPABLE as e:
            guard.bad(e)
            skipped += 1
            index = rng.randrange(size)
            continue
        guard.ok()
        return sample, skipped
    raise TooManyBadSamples(f"{guard.name}: {max_tries} consecutive samples failed; is the data readable?")
