"""Bad-input policy: in training skip and count broken samples (abort when too many fail); in evaluation raise."""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.sharedctypes
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from dataset.io import BadSample

log = logging.getLogger("x2vlm.data")


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of a window of samples failed."""


class _SharedWindow:
    """The sliding window of one :class:`SkipGuard` in shared memory, so that every DataLoader worker forked
    (or spawned) from the process that made it adds to the same window: a ring of ``window`` bad/ok flags, the
    number of bad ones in it, totals, and — once the limit is exceeded — the abort message, under one lock."""

    MESSAGE_BYTES = 2048

    def __init__(self, window: int):
        # a lock of the spawn context works in workers started any way: forked ones inherit it, spawned and
        # forkserver ones get it pickled (a fork-context lock cannot be sent to those)
        self.lock = multiprocessing.get_context("spawn").Lock()
        self.ring = multiprocessing.sharedctypes.RawArray(ctypes.c_bool, window)
        self.counters = multiprocessing.sharedctypes.RawArray(ctypes.c_int64, 5)  # pos, filled, bad, total, total_bad
        self.message = multiprocessing.sharedctypes.RawArray(ctypes.c_char, self.MESSAGE_BYTES)


class SkipGuard:
    """Counts failures and enforces ``max_bad_fraction`` over a sliding ``window`` of attempts — one window for
    the whole DataLoader: the window lives in shared memory made when the guard is made (in the main process,
    with the dataset), so worker processes add to the same counts and the abort comes at the same sample with
    any ``num_workers``. Once one worker has exceeded the limit, every further sample in any worker raises the
    same :class:`TooManyBadSamples` (with the loader-wide count). :meth:`report` counts failures by reason in
    this process (the main process when ``num_workers=0``); :attr:`bad_total` / :attr:`total` are loader-wide.
    A copy made other than by starting a worker process (``pickle``, ``copy.deepcopy``) gets a window of its own.
    """

    def __init__(self, max_bad_fraction: float = 0.1, window: int = 1000, name: str = "data"):
        self.max_bad_fraction = float(max_bad_fraction)
        self.window = max(1, int(window))
        self.name = name
        self.counts: Counter[str] = Counter()
        self._shared = _SharedWindow(self.window)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # not a worker being started: no sharing
            state["_shared"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._shared is None:
            self._shared = _SharedWindow(self.window)

    @property
    def total(self) -> int:
        """Samples attempted, loader-wide."""
        return int(self._shared.counters[3])

    @property
    def bad_total(self) -> int:
        """Broken samples, loader-wide."""
        return int(self._shared.counters[4])

    def _record(self, bad: bool) -> tuple[int, int, int]:
        """Add one attempt; ``(bad in window, attempts in window, bad in total)``; raises once the limit is
        exceeded (by this attempt or an earlier one in any process)."""
        sh = self._shared
        with sh.lock:
            if sh.message.value:
                raise TooManyBadSamples(sh.message.value.decode("utf-8", "replace"))
            c = sh.counters
            pos, filled = int(c[0]), int(c[1])
            if filled == self.window:
                c[2] -= sh.ring[pos]
            else:
                c[1] = filled = filled + 1
            sh.ring[pos] = bad
            c[0] = (pos + 1) % self.window
            c[2] += bad
            c[3] += 1
            c[4] += bad
            return int(c[2]), filled, int(c[4])

    def _trip(self, text: str) -> TooManyBadSamples:
        """The abort: its message kept in shared memory (the first one wins), so every worker raises it."""
        sh = self._shared
        with sh.lock:
            if not sh.message.value:
                sh.message.value = text.encode("utf-8")[: _SharedWindow.MESSAGE_BYTES - 1]
            return TooManyBadSamples(sh.message.value.decode("utf-8", "replace"))

    def ok(self) -> None:
        self._record(False)

    def bad(self, error: Exception) -> None:
        bad_in_window, filled, n_bad = self._record(True)
        reason = error.__class__.__name__
        self.counts[reason] += 1
        if n_bad <= 10 or n_bad % 100 == 0:
            log.warning("%s: skipped broken sample #%d (%s): %s", self.name, n_bad, reason, error)
        if bad_in_window > self.max_bad_fraction * self.window:
            raise self._trip(
                f"{self.name}: {bad_in_window} of the last {filled} samples failed, counted over all DataLoader "
                f"workers (limit {self.max_bad_fraction:.0%} of {self.window}, i.e. at most "
                f"{int(self.max_bad_fraction * self.window)}); last error: {error}")

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
    rng = rng or cast(random.Random, random)  # the caller's seeded global state (see dataset.sampling.seeded_random)
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
