"""DeepSpeed ZeRO (stage 1/2) for the shared trainer: the DeepSpeed config derived from ours, engine set-up,
and step checkpoints that sit beside the DDP ones (same ``step_*.pt`` file, plus the ZeRO shards).

The ``.pt`` file of a DeepSpeed step checkpoint holds the consolidated fp32 model weights, the scheduler,
the counters and RNG states, like a DDP one (so it loads anywhere as a model checkpoint); the optimizer
state lives in the ZeRO shard folder ``step_*.ds`` next to it, read back by DeepSpeed on resume.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.config import ConfigError

SUPPORTED_STAGES = (1, 2)
_OWNED = {"gradient_accumulation_steps": "train.grad_accum", "gradient_clipping": "train.clip_grad"}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(cfg: dict) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg``: ZeRO stage 2 unless ``train.deepspeed`` says otherwise;
    precision, accumulation and clipping come from ``train.*`` (setting them in ``train.deepspeed`` too is
    an error); anything else in ``train.deepspeed`` (e.g. ``zero_optimization.offload_optimizer``) passes through."""
    train = cfg["train"]
    user = dict(train.get("deepspeed") or {})
    for key, owner in _OWNED.items():
        if key in user:
            raise ConfigError(f"train.deepspeed.{key}: set {owner} instead (the trainer passes it to DeepSpeed)")
    for key in ("bf16", "fp16", "bfloat16"):
        if key in user:
            raise ConfigError(f"train.deepspeed.{key}: set train.precision instead")
    if train["precision"] not in ("bf16", "fp16"):
        raise ConfigError("train.engine 'deepspeed' needs train.precision bf16 or fp16 (DeepSpeed skips steps "
                          f"with non-finite gradients only in those modes), got '{train['precision']}'")
    ds = {
        # our loaders make the batches; DeepSpeed only needs a nominal size for its own bookkeeping
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": train["grad_accum"],
        "gradient_clipping": float(train["clip_grad"]),
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,  # our AdamW with lr_mult / no-decay groups
        "bf16": {"enabled": train["precision"] == "bf16"},
        "fp16": {"enabled": train["precision"] == "fp16", "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    ds = _merge(ds, user)
    stage = ds["zero_optimization"].get("stage")
    if stage not in SUPPORTED_STAGES:
        raise ConfigError(f"train.deepspeed.zero_optimization.stage must be one of {SUPPORTED_STAGES}, got {stage}")
    return ds


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("train.engine is 'deepspeed' but DeepSpeed is not installed: "
                          "DS_BUILD_OPS=0 pip install deepspeed") from err
    return deepspeed


def lift_scalar_parameters(model: nn.Module) -> list[str]:
    """Give 0-dim parameters (the ITC temperature) shape (1,): DeepSpeed's initial broadcast views every
    parameter as bytes, which fails for 0-dim tensors. Values and graphs are unchanged (it broadcasts)."""
    lifted = []
    for name, param in model.named_parameters():
        if param.ndim == 0:
            param.data = param.data.reshape(1)
            lifted.append(name)
    return lifted


def init_engine(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: dict):
    """Wrap ``model`` and ``optimizer`` (ours, with its parameter groups) in a DeepSpeed engine.
    0-dim parameters get shape (1,) (see :func:`lift_scalar_parameters`); :func:`save_shards` writes them
    back with their own shape."""
    deepspeed = import_deepspeed()
    lift_scalar_parameters(model)
    ds_cfg = deepspeed_config(cfg)
    # DeepSpeed casts the parameters to bf16/fp16 but not floating buffers (e.g. timm's zero k_bias), which
    # would promote activations back to fp32: cast the whole module first
    model.to(torch.bfloat16 if ds_cfg["bf16"]["enabled"] else torch.float16)
    import torch.distributed as dist
    if not dist.is_initialized():
        # one process: DeepSpeed still wants a process group (single-member, gloo on CPU)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                      config=ds_cfg)
    return engine, ds_optimizer


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard_dir(checkpoint: Path) -> Path:
    """The ZeRO shard folder belonging to a ``step_*.pt`` checkpoint."""
    return checkpoint.with_suffix(".ds")


def save_shards(engine, checkpoint: Path, shapes: dict[str, torch.Size] | None = None
                ) -> dict[str, torch.Tensor] | None:
    """Every rank writes its ZeRO shards for ``checkpoint`` (into a temporary folder renamed by rank 0
    once all are written); rank 0 gets the consolidated fp32 model weights (reshaped to ``shapes``, the
    model's own parameter shapes, where given), the others None."""
    import torch.distributed as dist
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    target = shard_dir(checkpoint)
    tmp = target.with_name("." + target.name + ".tmp")
    rank0 = dist.get_rank() == 0
    if rank0 and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag="zero", save_latest=False)
    dist.barrier()
    weights = None
    if rank0:
        shapes = shapes or {}
        weights = {k: v.float().reshape(shapes[k]) if k in shapes else v.float()
                   for k, v in get_fp32_state_dict_from_zero_checkpoint(str(tmp), tag="zero").items()}
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    dist.barrier()
    return weights


def load_shards(engine, checkpoint: Path) -> None:
    """Restore module and optimizer partitions from the shard folder of ``checkpoint``."""
    folder = shard_dir(checkpoint)
    if not folder.is_dir():
        raise FileNotFoundError(f"{checkpoint}: DeepSpeed shard folder {folder} is missing (was this checkpoint "
                                "written with train.engine 'ddp'? resume it with that engine)")
    path, _ = engine.load_checkpoint(str(folder), tag="zero", load_module_strict=True,
                                     load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")
