"""Run a command with a time limit that ends its whole process group (torch.compile's worker pool, data-loader
workers), not only the process started: a timed-out configuration leaves nothing behind that eats the next one's
CPU or GPU."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

_ACTIVE: set[int] = set()  # process groups started by run_limited and still running
_LOCK = threading.Lock()


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    timed_out: bool


def run_limited(cmd: list[str], timeout: float, **kwargs) -> Result:
    """``cmd`` in a new session; after ``timeout`` seconds its process group gets SIGTERM, 5 s later SIGKILL
    (rc 124, ``timed_out``). Output is captured as text."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    with _LOCK:
        _ACTIVE.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
        return Result(proc.returncode, out, err, False)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                out, err = proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                out, err = "", ""
        return Result(124, out or "", (err or "") + f"\ntimed out after {timeout:.0f} s", True)
    finally:
        with _LOCK:
            _ACTIVE.discard(proc.pid)


def end_children_on_sigterm() -> None:
    """On SIGTERM (the stage's ``timeout`` in gpu_suite.sh) end every running child group, then exit 124: the
    children run in sessions of their own, so they would outlive this process otherwise."""
    def handler(signum, frame) -> None:  # noqa: ARG001
        with _LOCK:
            groups = list(_ACTIVE)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        print(f"stopped by signal {signum}; ended {len(groups)} running child process group(s)", file=sys.stderr,
              flush=True)
        os._exit(124)
    signal.signal(signal.SIGTERM, handler)


def error_tail(text: str, lines: int = 6) -> str:
    """The last non-empty lines of ``text`` joined by `` | `` (progress-bar lines dropped)."""
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines()
            if ln.strip() and not ln.startswith(("train:", "Writing model shards"))]
    return " | ".join(kept[-lines:])
