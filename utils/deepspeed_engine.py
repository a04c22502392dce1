"""DeepSpeed ZeRO (stage 1/2) for the shared trainer (:class:`DeepSpeedEngine`, ``train.engine: deepspeed``): the
DeepSpeed config derived from ours, engine set-up, and step checkpoints that sit beside the DDP ones (same
``step_*.pt`` file, plus the ZeRO shards).

The ``.pt`` file of a DeepSpeed step checkpoint holds the consolidated fp32 model weights, the scheduler,
the counters and RNG states, like a DDP one (so it loads anywhere as a model checkpoint); the optimizer
state lives in the ZeRO shard folder ``step_*.ds`` next to it, read back by DeepSpeed on resume — with
``weights_only=True`` (DeepSpeed's own checkpoint engine unpickles anything): tensors, plain containers and the
few DeepSpeed classes its ZeRO 1/2 shards hold (:func:`shard_globals`), unless ``--trusted-checkpoint``.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.config import ConfigError
from utils.dist import DistInfo
from utils.engine import DTYPES, TrainEngine
from utils.train_state import load_checkpoint_file
from utils.trust import is_trusted

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


def shard_globals() -> list[type]:
    """The classes besides tensors and plain containers in the ZeRO 1/2 shards our trainer writes (DeepSpeed
    0.19; ``*_optim_states.pt``; ``mp_rank_00_model_states.pt`` holds none): the loss scaler (``LossScaler``
    under bf16, ``DynamicLossScaler`` under fp16), the stage enum (``ZeroStageEnum``) and the flat-buffer
    addresses of ``param_slice_mappings`` (``fragment_address``, a dataclass). Only these are allowed."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _SafeShardReader:
    """Stands in for the engine's checkpoint engine while it loads: reads each shard with
    :func:`~utils.train_state.load_checkpoint_file` (``weights_only=True`` + :func:`shard_globals`, unless
    trusted); everything else goes to the engine's own checkpoint engine."""

    def __init__(self, inner: Any, trusted: bool):
        self._inner, self._trusted = inner, trusted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_checkpoint_file(path, map_location, self._trusted, shard_globals())


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` inside runs with ``weights_only=True`` (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, which
    overrides callers passing False, as DeepSpeed's ``zero_to_fp32`` does) and :func:`shard_globals` allowed."""
    def put(values: dict[str, str | None]) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    wanted = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": None}  # torch refuses both
    before = {key: os.environ.get(key) for key in wanted}
    put(wanted)
    try:
        with torch.serialization.safe_globals(shard_globals()):
            yield
    finally:
        put(before)


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
        with _weights_only_loads():  # the shards just written, read back without unpickling objects
            consolidated = get_fp32_state_dict_from_zero_checkpoint(str(tmp), tag="zero")
        weights = {k: v.float().reshape(shapes[k]) if k in shapes else v.float() for k, v in consolidated.items()}
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    dist.barrier()
    return weights


def load_shards(engine, checkpoint: Path, trusted: bool | None = None) -> None:
    """Restore module and optimizer partitions from the shard folder of ``checkpoint``, every shard read with
    ``weights_only=True`` and :func:`shard_globals` (a shard holding anything else raises a one-line
    :class:`~models.checkpoint.CheckpointError` naming it), unless ``trusted`` (default: ``--trusted-checkpoint``)."""
    folder = shard_dir(checkpoint)
    if not folder.is_dir():
        raise FileNotFoundError(f"{checkpoint}: DeepSpeed shard folder {folder} is missing (was this checkpoint "
                                "written with train.engine 'ddp'? resume it with that engine)")
    own = engine.checkpoint_engine
    engine.checkpoint_engine = _SafeShardReader(own, is_trusted(trusted))
    try:
        path, _ = engine.load_checkpoint(str(folder), tag="zero", load_module_strict=True,
                                         load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        engine.checkpoint_engine = own
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {folder}")


class DeepSpeedEngine(TrainEngine):
    """DeepSpeed ZeRO: the model held in bf16 / fp16 (fp32 master weights in the optimizer; inputs cast to the
    model's dtype); DeepSpeed accumulates, clips, skips overflowing steps and writes the optimizer shards."""

    wrapped: Any  # a deepspeed.DeepSpeedEngine (an nn.Module with backward / step / was_step_applied)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: dict, dist_info: DistInfo):
        self.model = model
        self._shapes = {k: v.shape for k, v in model.state_dict().items()}  # before 0-dim parameters are lifted
        self._checkpointed: dict[str, torch.Tensor] | None = None  # rank 0: the weights of the last checkpoint
        self.wrapped, self._ds_optimizer = init_engine(model, optimizer, cfg)
        self.input_dtype = DTYPES[cfg["train"]["precision"]]
        # step checkpoints keep the DDP layout's "scaler" entry (DeepSpeed keeps its own loss scale in its shards)
        self._scaler_state = torch.amp.GradScaler(enabled=False).state_dict()
        if cfg["train"]["compile"]:
            self.wrapped.compile()  # DeepSpeed compiles its wrapped module in place

    def forward_backward(self, batch: dict[str, Any], last_micro: bool) -> dict[str, torch.Tensor]:
        self._checkpointed = None  # the weights change: the last step checkpoint's copy is stale
        out = self.wrapped(batch)
        self.wrapped.backward(out["loss"])  # DeepSpeed divides by the accumulation steps itself
        self.wrapped.step()  # a no-op except at the accumulation boundary
        return out

    def step(self, finite: torch.Tensor) -> None:
        """Nothing left to do: ``backward`` already stepped, and DeepSpeed dropped a non-finite step itself (its
        overflow check)."""

    def checkpoint_state(self, checkpoint: Path) -> dict[str, Any]:
        self._checkpointed = save_shards(self.wrapped, checkpoint, self._shapes)
        return {"scaler": self._scaler_state, "model": self._checkpointed}

    def export_weights(self) -> dict[str, torch.Tensor]:
        """The fp32 master weights of the step checkpoint written after the last step (the trainer writes one when
        training ends); else the module's own (bf16 / fp16) values in fp32. In the model's shapes either way
        (0-dim parameters back from (1,)), as separate tensors (the module's are views of DeepSpeed's buffers)."""
        if self._checkpointed is not None:
            return self._checkpointed
        return {k: v.detach().float().reshape(self._shapes[k]).clone() for k, v in self.model.state_dict().items()}

    def load(self, checkpoint: Path, state: dict[str, Any], trusted: bool | None) -> None:
        load_shards(self.wrapped, checkpoint, trusted=trusted)
