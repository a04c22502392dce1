"""torch.distributed set-up from the environment torchrun provides (RANK, WORLD_SIZE, LOCAL_RANK), a collective
timeout (``train.dist_timeout``) and the one-line report of a rank that stopped answering."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.config import ConfigError
from utils.errors import COLLECTIVE_TIMEOUT_EXIT, ExitWithMessage
from utils.parent_death import die_with_parent

_timeout_s: float | None = None  # the process group's collective timeout, as init_distributed set it


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout: float | None = None) -> DistInfo:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1); pick the device.

    ``device``: ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``. Backend: NCCL on CUDA, gloo on CPU.
    ``timeout``: seconds a collective waits for the other ranks before it fails (``train.dist_timeout``;
    None: torch's default). A worker of torchrun also asks the kernel for SIGHUP when torchrun dies (Linux:
    :func:`utils.parent_death.die_with_parent`), so a killed launcher leaves no training orphans (the signal
    stops training with a checkpoint).
    """
    global _timeout_s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        require_gpu(local)
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if "TORCHELASTIC_RUN_ID" in os.environ:
            die_with_parent()
        kwargs: dict[str, Any] = {} if not timeout else {"timeout": timedelta(seconds=float(timeout))}
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
        if restart > 0:
            # torchrun keeps its store over restarts: the group's keys get a prefix of their own, or a restarted
            # rank would read a dead rank's address from the previous attempt ("Connection refused")
            from torch.distributed.rendezvous import rendezvous
            store, _, _ = next(rendezvous("env://", rank, world, **kwargs))
            kwargs.update(store=dist.PrefixStore(f"x2vlm/restart_{restart}", store), rank=rank, world_size=world)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kwargs)
        _timeout_s = float(timeout) if timeout else None
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def require_gpu(local_rank: int = 0) -> None:
    """Raise a one-line :class:`~utils.config.ConfigError` when CUDA was asked for (``train.device: cuda`` /
    ``--device cuda``) but this process sees no GPU for ``local_rank``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank < count:
        return
    if count == 0:
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        seen = f"torch {torch.__version__} ({build}) sees no CUDA GPU"
    else:
        seen = f"local rank {local_rank} needs GPU {local_rank} but only {count} are visible"
    raise ConfigError(f"train.device is cuda but {seen}; use --device cpu (or train.device=auto), or run.py "
                      f"--dist with at most as many processes per node as GPUs")


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


class LaggedMax:
    """The largest of every rank's value, one call late, without waiting for the device's queue: call ``i``
    starts an all-reduce of this rank's value and returns call ``i - 1``'s result (0 on the first call), copied
    to host memory behind the work queued before it, so the read waits for the previous step only and the current
    one stays queued. Every rank gets the same answer at the same call. Not distributed: the value itself."""

    def __init__(self, device: torch.device):
        self.device = device
        self._pending: tuple[torch.Tensor, Any] | None = None

    def __call__(self, value: int) -> int:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if self.device.type == "cuda":
            host = torch.empty(1, dtype=torch.int64, pin_memory=True)
            host.copy_(t, non_blocking=True)
            done: Any = torch.cuda.Event()
            done.record()
        else:
            host, done = t, None
        previous = self._take_pending()
        self._pending = (host, done)
        return previous

    def now(self, value: int) -> int:
        """The largest of every rank's ``value`` at once (waits for the device), and of any vote still pending."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return max(self._take_pending(), int(t.item()))

    def _take_pending(self) -> int:
        """The result of the vote started last (0 if none), which then counts as read."""
        if self._pending is None:
            return 0
        (host, done), self._pending = self._pending, None
        if done is not None:
            done.synchronize()
        return int(host[0])


class CollectiveTimeout(ExitWithMessage):
    """A collective of this rank waited ``train.dist_timeout`` seconds for other ranks; ``missing``: the ranks
    that did not report the timeout themselves (those that stopped answering), None if unknown."""

    def __init__(self, rank: int, timeout: float | None, missing: list[int] | None, step: int | None = None):
        self.rank, self.timeout, self.missing, self.step = rank, timeout, missing, step
        after = f" after {timeout:g} s" if timeout else ""
        if missing:
            who = "ranks " + ", ".join(map(str, missing)) + " (they stopped answering"
            who += f" during step {step})" if step is not None else ")"
        else:
            who = "other ranks (which could not be told)"
        super().__init__(f"rank {rank}: collective timed out{after} waiting for {who}; every rank stops "
                         f"(train.dist_timeout sets the wait)", COLLECTIVE_TIMEOUT_EXIT)


def is_collective_timeout(error: BaseException) -> bool:
    """Whether ``error`` (raised by a collective of an initialised process group) is its timeout."""
    if not (dist.is_available() and dist.is_initialized()) or not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return ("timed out" in text or "timeout" in text) and "dataloader" not in text


def unresponsive_ranks(wait: float) -> list[int] | None:
    """After a collective of this rank timed out: every rank that times out says so in the process group's
    store; the ranks that have not said so within ``wait`` seconds are returned (those that stopped
    answering). None when the store cannot be reached."""
    try:
        store = dist.distributed_c10d._get_default_store()
        rank, world = dist.get_rank(), dist.get_world_size()
        store.set(f"x2vlm/timed_out/{rank}", "1")
        deadline = time.monotonic() + wait
        while True:
            missing = [r for r in range(world) if not store.check([f"x2vlm/timed_out/{r}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - a broken store only costs the rank names
        return None


def collective_timeout(error: BaseException, step: int | None = None) -> CollectiveTimeout:
    """The :class:`CollectiveTimeout` to raise for ``error`` (see :func:`is_collective_timeout`); names the
    ranks that stopped answering (waits up to ``min(timeout, 30)`` s for the others to time out too)."""
    wait = min(_timeout_s or 30.0, 30.0)
    return CollectiveTimeout(dist.get_rank(), _timeout_s, unresponsive_ranks(wait), step)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
