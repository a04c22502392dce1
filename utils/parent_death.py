"""A process that ends with its parent: the kernel sends :data:`PARENT_DIED` to it when its parent goes (Linux
``PR_SET_PDEATHSIG``), and the training loop treats that signal as a stop request (checkpoint, then exit).

The signal is SIGHUP, not SIGTERM, because the kernel sends it once per thread of the parent that exits while
the process is re-parented among them: a launcher killed with -9 (torchrun has several threads) may deliver it
two or three times within milliseconds. SIGTERM / SIGINT twice mean "stop at once"; SIGHUP repeated means
nothing more than once. Torch-free (``run.py`` imports it before torch).
"""
from __future__ import annotations

import os
import signal

PARENT_DIED = signal.SIGHUP
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)``; False where it is not available."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(signum: int = PARENT_DIED) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent exits; False where that is not
    available. If the parent is already gone (re-parented to init), the signal is sent now."""
    ok = prctl(_PR_SET_PDEATHSIG, int(signum))
    if ok and os.getppid() == 1:  # the parent died before the request: nobody will send it
        os.kill(os.getpid(), signum)
    return ok


def become_subreaper() -> bool:
    """Orphans below this process are re-parented to it instead of init (Linux ``PR_SET_CHILD_SUBREAPER``),
    so it can wait for them; False where that is not available."""
    return prctl(_PR_SET_CHILD_SUBREAPER, 1)
