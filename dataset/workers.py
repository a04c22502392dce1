"""DataLoader workers that survive a stop request sent to the whole process group.

Ctrl-C in a terminal (SIGINT), a closed terminal (SIGHUP) and a scheduler cancelling a job (Slurm's scancel sends
SIGTERM to every process of the job) reach the loader workers as well as the trainer. A worker killed by it
makes the trainer fail at once with "DataLoader worker exited unexpectedly" (torch's SIGCHLD handler), without
the checkpoint the trainer writes at the end of its step. So a worker ignores SIGINT and SIGHUP, and SIGTERM
from anyone but its parent: the trainer's own shutdown of its workers (``Process.terminate``) still works, and
a worker ends with the trainer however the trainer ends (DataLoader's watchdog).
"""
from __future__ import annotations

import os
import signal
import threading


def _exit_on_sigterm_from(parent: int) -> None:
    """Wait for SIGTERM (blocked in every other thread); when the parent sent it (or the parent is gone), die of
    it as an unprotected worker would (torch's worker-failure check expects a SIGTERM death, not an exit code)."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # this thread takes the re-sent signal
            os.kill(os.getpid(), signal.SIGTERM)
            return


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: see the module docstring. Where ``sigwaitinfo`` does not exist (not Linux)
    only SIGINT and SIGHUP are ignored."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    # blocked before any other thread of the worker starts: threads inherit the mask, so only the waiting
    # thread ever receives SIGTERM
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()
