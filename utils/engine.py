"""Training engines: how a micro-batch's loss becomes gradients, an optimizer step and a step checkpoint.

The trainer (:mod:`utils.trainer`) owns the loop — accumulation, non-finite skipping, logs, stages, when to
save — and asks an engine, chosen by name (``train.engine``: :data:`utils.trainer.ENGINES`), for the parts that
differ: :meth:`TrainEngine.forward_backward`, :meth:`TrainEngine.step`, :meth:`TrainEngine.checkpoint_state` and
:meth:`TrainEngine.load`. :class:`DDPEngine` is the plain PyTorch one (one process, or DDP; AMP, clipping);
:class:`utils.deepspeed_engine.DeepSpeedEngine` hands the step to DeepSpeed ZeRO.
"""
from __future__ import annotations

import abc
import contextlib
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.config import ConfigError
from utils.dist import DistInfo
from utils.train_state import state_changes

#: ``train.precision`` → the autocast dtype (``None``: fp32)
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainEngine(abc.ABC):
    """One way to train ``model`` with ``optimizer`` (built by the trainer, with its parameter groups).

    ``wrapped`` is what the forward is called on (a DDP / compiled / DeepSpeed wrapper, or the model);
    ``input_dtype`` the dtype floating batch tensors are cast to (``None``: as they come)."""

    model: nn.Module
    wrapped: nn.Module
    input_dtype: torch.dtype | None = None

    @abc.abstractmethod
    def forward_backward(self, batch: dict[str, Any], last_micro: bool) -> dict[str, torch.Tensor]:
        """The model's outputs for one micro-batch, its loss (over the accumulation steps) back-propagated;
        ``last_micro``: the last micro-batch of the optimizer step (gradients are synchronised then)."""

    @abc.abstractmethod
    def step(self, finite: torch.Tensor) -> None:
        """End the optimizer step: apply it where the global loss was ``finite`` (a 0-d bool tensor on the
        device), else drop its gradients; without reading ``finite`` back where the optimizer can skip on the
        device (fused AdamW)."""

    @abc.abstractmethod
    def checkpoint_state(self, checkpoint: Path) -> dict[str, Any]:
        """This engine's entries of the step checkpoint ``checkpoint`` (every rank calls this: an engine may
        write its own files beside it, collectively)."""

    @abc.abstractmethod
    def load(self, checkpoint: Path, state: dict[str, Any], trusted: bool | None) -> None:
        """Restore the model and optimizer from step checkpoint ``checkpoint`` (its loaded ``state``)."""

    def state_changes(self, state: dict[str, Any]) -> list[str]:
        """What differs between the checkpoint's model and this one (keys, shapes); [] when this engine cannot
        compare before loading (its own load is strict)."""
        return []

    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """The model's current weights as a plain state dict in its own shapes, for ``model.safetensors``; None
        when the model's own tensors are that (an engine that keeps them elsewhere, or in another form, says)."""
        return None


class DDPEngine(TrainEngine):
    """Plain PyTorch: the model itself in one process, :class:`DistributedDataParallel` over several; autocast
    to ``train.precision`` with a gradient scaler under fp16; ``train.clip_grad``; ``train.compile``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: dict, dist_info: DistInfo):
        train = cfg["train"]
        self.model, self.optimizer = model, optimizer
        self.dtype = DTYPES[train["precision"]]
        self.device_type = dist_info.device.type
        self.grad_accum, self.clip_grad = train["grad_accum"], train["clip_grad"]
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=train["precision"] == "fp16")
        self.wrapped = model
        if dist_info.distributed:
            ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=train["ddp_find_unused"])
        if train["compile"]:  # a module compiles to a module
            self.wrapped = cast(nn.Module, torch.compile(self.wrapped, mode=train["compile_mode"]))

    def forward_backward(self, batch: dict[str, Any], last_micro: bool) -> dict[str, torch.Tensor]:
        skip_sync = not last_micro and isinstance(self.wrapped, DistributedDataParallel)
        with cast(DistributedDataParallel, self.wrapped).no_sync() if skip_sync else contextlib.nullcontext():
            with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
                out = self.wrapped(batch)
            self.scaler.scale(out["loss"] / self.grad_accum).backward()
        return out

    def step(self, finite: torch.Tensor) -> None:
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler.is_enabled() or not _skips_on_device(self.optimizer):
            if bool(finite):  # a host sync: only fp16 (the scaler's own check) and unfused optimizers get here
                self.scaler.step(self.optimizer)
                self.scaler.update()
        else:  # the fused kernels leave parameters and state alone where found_inf is 1
            self.optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_state(self, checkpoint: Path) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, checkpoint: Path, state: dict[str, Any], trusted: bool | None) -> None:
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # other parameter groups: other fresh parameters (model.checkpoint)
            raise ConfigError(f"--resume {checkpoint}: its optimizer state does not fit this run's parameter groups "
                              f"({e}); was model.checkpoint (--checkpoint) the same as when it was written?") from e
        self.scaler.load_state_dict(state["scaler"])

    def state_changes(self, state: dict[str, Any]) -> list[str]:
        return state_changes(state["model"], self.model.state_dict()) if "model" in state else []


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours a ``found_inf`` tensor (torch's fused Adam / AdamW / SGD kernels)."""
    return bool(optimizer.defaults.get("fused")) and getattr(optimizer, "_step_supports_amp_scaling", False)


__all__ = ["DTYPES", "DDPEngine", "TrainEngine"]
