"""The one training loop every task script uses: gradient accumulation, non-finite-loss skipping, loss stages,
JSON-lines + TensorBoard logs, step checkpoints and exact resume. How a loss becomes an optimizer step (DDP or
DeepSpeed ZeRO, AMP, clipping) is the engine's (:mod:`utils.engine`, picked by ``train.engine`` from
:data:`ENGINES`); what the loop may ask of the model beyond ``forward`` is :class:`TrainingHooks`."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from utils.atomic import output_error
from utils.config import ConfigError, save_config
from utils.deepspeed_engine import DeepSpeedEngine
from utils.dist import DistInfo, LaggedMax, all_reduce_mean, collective_timeout, is_collective_timeout
from utils.engine import DTYPES, DDPEngine, TrainEngine
from utils.errors import ExitWithMessage
from utils.optim import build_optimizer, build_scheduler
from utils.parent_death import PARENT_DIED
from utils.step_window import LogWindow, NonFiniteCount
from utils.train_state import (
    CKPT_DIR,
    checkpoint_name,
    load_train_state,
    resolve_resume,
    run_setup,
    save_train_state,
    set_aside_newer,
    setup_changes,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

BatchFactory = Callable[[int], Iterator[dict[str, Any]]]
"""Given the index of the first micro-batch to produce, returns an iterator of batches from there on."""

#: ``train.engine`` → the :class:`~utils.engine.TrainEngine` implementation, built as
#: ``(model, optimizer, cfg, dist_info)``
ENGINES: dict[str, Callable[[nn.Module, torch.optim.Optimizer, dict, DistInfo], TrainEngine]] = {
    "ddp": DDPEngine, "deepspeed": DeepSpeedEngine}


@runtime_checkable
class TrainingHooks(Protocol):
    """What the trainer may ask of a model beyond ``forward`` (every X²-VLM model has it; any other
    ``nn.Module`` trains without): the loss switches ``train.stages`` sets, and a call after each applied
    optimizer step. A model with these hooks also gets ``sample_seed`` (int) in every training batch: the seed
    of its random draws for that micro-batch (ITM negatives), a function of ``seed``, step and micro-batch only,
    so that runs are reproducible and equal global batches draw alike however they are split over processes."""

    @property
    def loss_switches(self) -> dict[str, Any]: ...

    def set_loss_switches(self, switches: dict[str, Any]) -> None: ...

    def after_optimizer_step(self) -> None: ...


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


def to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype | None = None
              ) -> dict[str, Any]:
    """Tensors of ``batch`` on ``device``; floating ones cast to ``float_dtype`` if given."""
    def move(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if float_dtype is not None and v.is_floating_point():
            return v.to(device, dtype=float_dtype, non_blocking=True)
        return v.to(device, non_blocking=True)
    return {k: move(v) for k, v in batch.items()}


#: batch keys that hold images or videos, one per sample: pretraining pools, task batches, NLVR's image pairs
#: (two per sample) and video QA
IMAGE_KEYS = ("images", "videos", "image", "image0", "image1", "video")


def count_images(batch: dict[str, Any]) -> int:
    """Images (or videos) in a batch (:data:`IMAGE_KEYS`); an NLVR pair counts two."""
    n = 0
    for key in IMAGE_KEYS:
        if isinstance(batch.get(key), torch.Tensor):
            n += batch[key].shape[0]
    return n


class Trainer:
    """Runs ``train.steps`` optimiser steps of ``model`` (whose forward returns a dict with ``loss``)."""

    def __init__(self, cfg: dict, model: nn.Module, dist_info: DistInfo, fresh_params: set[str] | None = None):
        train = cfg["train"]
        if train["engine"] not in ENGINES:
            raise ConfigError(f"train.engine must be one of {', '.join(ENGINES)}, got '{train['engine']}'")
        if train["precision"] not in DTYPES:
            raise ConfigError(f"train.precision must be one of {sorted(DTYPES)}, got '{train['precision']}'")
        self.cfg, self.train_cfg, self.dist = cfg, train, dist_info
        self.output_dir = Path(cfg["output_dir"])
        self.model = model.to(dist_info.device)
        self.optimizer = build_optimizer(self.model, cfg["optimizer"], fresh_params)
        self.scheduler = build_scheduler(self.optimizer, cfg["scheduler"], train["steps"])
        self.engine = ENGINES[train["engine"]](self.model, self.optimizer, cfg, dist_info)
        self.step = 0
        self.samples_seen = 0
        self._nonfinite = NonFiniteCount(dist_info.device)
        self._stop_vote = LaggedMax(dist_info.device)
        self.log_path = self.output_dir / "log.jsonl"
        self._tb: SummaryWriter | None = None
        self._data = None
        self._stages = check_stages(cfg, model)
        self._hooks = model if isinstance(model, TrainingHooks) else None
        self._base_losses = self._hooks.loss_switches if self._hooks is not None else {}
        self._stage = -1
        self._saved: tuple[int, Path | None] = (-1, None)  # the step of the last checkpoint and its path (rank 0)

    def track_data(self, source: Any) -> None:
        """Keep ``source.state_dict()`` (the data position) in step checkpoints and give it back to
        ``source.load_state_dict`` on resume (e.g. :class:`dataset.pretrain.MixedLoader`)."""
        self._data = source

    def _data_counters(self) -> dict[str, int]:
        """The tracked data source's ``counters()`` (host ints its batches carried, e.g. ``truncated_texts``),
        summed over ranks (one small all-reduce per log record); {} when the source has none."""
        counters = getattr(self._data, "counters", None)
        if counters is None:
            return {}
        counts = dict(counters())
        if counts and self.dist.distributed and torch.distributed.is_initialized():
            total = torch.tensor(list(counts.values()), dtype=torch.int64, device=self.dist.device)
            torch.distributed.all_reduce(total)
            counts = dict(zip(counts, total.tolist(), strict=True))
        return counts

    # ------------------------------------------------------------------ state
    def checkpoint_state(self, checkpoint: Path) -> dict[str, Any]:
        """Everything a step checkpoint at ``checkpoint`` holds: the loop's counters, scheduler, run set-up and
        data position, and the engine's entries (:meth:`~utils.engine.TrainEngine.checkpoint_state`; every
        rank takes part)."""
        state = {"scheduler": self.scheduler.state_dict(),
                 "samples_seen": self.samples_seen, "skipped_nonfinite": self.skipped_nonfinite,
                 "micro_batches": self.step * self.train_cfg["grad_accum"], "engine": self.train_cfg["engine"],
                 "setup": run_setup(self.cfg, self.dist.world_size)}
        if self._data is not None:
            state["data"] = self._data.state_dict()
        return state | self.engine.checkpoint_state(checkpoint)

    def resume(self, resume: str | None, trusted: bool | None = None) -> bool:
        """Restore everything from a step checkpoint (``latest`` or a path; a restarted failed run resumes
        ``latest`` by itself: :func:`restart_resume`); False if there is none. Files are
        read with ``weights_only=True`` unless ``trusted`` (default: ``--trusted-checkpoint``). Step checkpoints
        of ``output_dir`` newer than the one resumed (an abandoned run's) are moved aside (rank 0:
        :func:`~utils.train_state.set_aside_newer`), so that a later ``--resume latest`` follows this run.
        When a resume was asked for, rank 0 writes ``output_dir/config.yaml`` here, once the checkpoint was found
        to be of this run's set-up (the scripts leave it to this call then): a refused resume leaves the
        config of the run that wrote the checkpoints in place."""
        resume = restart_resume(resume)
        path = resolve_resume(resume, self.output_dir)
        if path is None:
            self._save_config(resume)
            return False
        state = load_train_state(path, map_location=self.dist.device, trusted=trusted)
        self._check_same_run(path, state)
        self.engine.load(path, state, trusted)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.samples_seen = state["samples_seen"]
        self._nonfinite = NonFiniteCount(self.dist.device, state["skipped_nonfinite"])
        if self._data is not None:
            if "data" not in state:
                raise ValueError(f"{path} has no data position; it cannot resume a tracked data stream exactly")
            try:
                self._data.load_state_dict(state["data"])
            except ValueError as e:  # other sources or source sizes (dataset.sampling.EpochStream)
                raise ConfigError(f"--resume {path}: {e}; resume with the data it was written with, or start "
                                  "a new run in another output_dir") from e
        self._save_config(resume)
        self._log({"event": "resumed", "checkpoint": str(path), "step": self.step})
        if self.dist.is_main:
            moved = set_aside_newer(self.output_dir, path, self.step)
            if moved is not None:
                self._log({"event": "abandoned_checkpoints_moved", "to": str(moved), "step": self.step})
        return True

    def _save_config(self, resume: str | None) -> None:
        if resume is not None and self.dist.is_main:
            save_config(self.cfg, self.output_dir)

    def _check_same_run(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse (one line) a step checkpoint of another run set-up: another engine, config values of
        :data:`~utils.train_state.RESUME_INVARIANT`, number of processes, or model parameters."""
        engine = state.get("engine", "ddp")
        if engine != self.train_cfg["engine"]:
            raise ConfigError(f"{path} was written with train.engine '{engine}'; resume it with that engine")
        changes = setup_changes(state["setup"], run_setup(self.cfg, self.dist.world_size)) \
            if "setup" in state else []
        if not changes:
            changes = self.engine.state_changes(state)
        if changes:
            shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
            raise ConfigError(f"--resume {path}: it was written by another run set-up ({shown}); resume with the "
                              "values and number of processes it was written with, or start a new run in another "
                              "output_dir")

    def save(self) -> Path | None:
        """Write a step checkpoint (rank 0; every rank takes part under DeepSpeed). Returns its path on rank 0."""
        state = self.checkpoint_state(self.output_dir / CKPT_DIR / checkpoint_name(self.step))
        if not self.dist.is_main:
            return None
        return save_train_state(self.output_dir, self.step, state, self.train_cfg["keep_last"])

    # ------------------------------------------------------------------ logging
    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the JSON-lines log (rank 0); records with a ``loss`` also go to TensorBoard."""
        self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: say which file, in one line (utils.cli)
            raise output_error(e, self.log_path) from e
        if "loss" in record:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    # ------------------------------------------------------------------ loop
    def _enter_stage(self) -> None:
        """Set the model's loss switches to those of the ``train.stages`` entry the current step is in."""
        if not self._stages:
            return
        end, index = 0, len(self._stages) - 1
        for i, stage in enumerate(self._stages):
            end += stage["steps"]
            if self.step < end:
                index = i
                break
        if index != self._stage:
            self._stage = index
            switches = {**self._base_losses, **self._stages[index].get("loss", {})}
            if self._hooks is None:  # check_stages: stages need a model with TrainingHooks
                raise TypeError("train.stages need a model with loss switches (TrainingHooks)")
            self._hooks.set_loss_switches(switches)
            self._log({"event": "stage", "stage": index, "step": self.step, "loss": switches})

    @property
    def skipped_nonfinite(self) -> int:
        """Optimizer steps dropped for a non-finite loss (read from the device: a host sync)."""
        return self._nonfinite.total

    def _finish_step(self, finite: torch.Tensor) -> None:
        """Apply the optimizer step where ``finite`` (a device bool; the engine drops the step's gradients
        otherwise), count a dropped one, then the scheduler and the model's hook. The LR schedule follows the
        step counter: a dropped step advances it too, so nothing here waits for the device."""
        self.engine.step(finite)
        self._nonfinite.add(finite)
        self.scheduler.step()
        if self._hooks is not None:
            self._hooks.after_optimizer_step()

    def _check_nonfinite(self) -> int:
        """Read the skipped-step count (once per log window); raise after ``train.max_nonfinite`` in a row."""
        total, longest = self._nonfinite.read()
        if longest >= self.train_cfg["max_nonfinite"]:
            raise NonFiniteLossError(f"{longest} non-finite losses in a row by step {self.step}")
        return total

    def fit(self, batches: BatchFactory, extra_log: Callable[[], dict[str, Any]] | None = None,
            stop_after: int | None = None) -> dict[str, float]:
        """Train until ``train.steps`` (or until step ``stop_after``, checkpointing there, for a run cut
        into parts); returns the mean losses of the last log window.

        SIGTERM / SIGINT / SIGHUP (:class:`StopSignals`; SIGTERM or SIGINT twice: stop at once) end the current
        optimiser step, write a step checkpoint and raise :class:`TrainingStopped`; the ranks of a job agree on
        the step (one tiny all-reduce per step, read one step later: a signal stops the job after the next step,
        or after the last one). A collective that waits longer than ``train.dist_timeout`` raises
        :class:`utils.dist.CollectiveTimeout` naming the ranks that stopped answering."""
        total = self.train_cfg["steps"] if stop_after is None else min(stop_after, self.train_cfg["steps"])
        it = batches(self.step * self.train_cfg["grad_accum"])
        window = LogWindow()
        bar = self._progress_bar()
        self.model.train()
        try:
            with StopSignals() as stop:
                while self.step < total:
                    try:
                        window.add_images(self._train_step(it, window, bar))
                        if self.step % self.train_cfg["log_every"] == 0 or self.step == total:
                            self._log(self._log_record(window.close(all_reduce_mean), extra_log))
                            if bar is not None and "loss" in window.last:
                                bar.set_postfix(loss=f"{window.last['loss']:.3f}")
                        if self.step % self.train_cfg["ckpt_every"] == 0 or self.step == total:
                            self._saved = (self.step, self.save())
                        self._stop_if_signalled(stop, last=self.step == total)
                    except RuntimeError as e:
                        if self.dist.distributed and is_collective_timeout(e):
                            raise collective_timeout(e, self.step + 1) from e
                        raise
        finally:
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.flush()
        return {k: v for k, v in window.last.items() if not math.isnan(v)}

    def _progress_bar(self) -> Any:
        if not self.dist.is_main:
            return None
        from tqdm import tqdm
        return tqdm(total=self.train_cfg["steps"], initial=self.step, desc="train", dynamic_ncols=True)

    def _log_record(self, window: tuple[dict[str, float], float], extra_log: Callable[[], dict[str, Any]] | None
                    ) -> dict[str, Any]:
        """The log record of a closed window (mean losses, images per second over all ranks)."""
        losses, images_per_s = window
        record = {"step": self.step, **losses, "lr": self.scheduler.get_last_lr()[0],
                  "images_per_s": images_per_s * self.dist.world_size,
                  "samples_seen": self.samples_seen, "skipped_nonfinite": self._check_nonfinite(),
                  **self._data_counters()}
        if extra_log is not None:
            record.update(extra_log())
        return record

    def _stop_if_signalled(self, stop: StopSignals, last: bool) -> None:
        """When any rank got a stop signal: make sure this step is checkpointed, log, raise TrainingStopped.
        The ranks agree; on several, a signal counts at the end of the next step (:class:`LaggedMax`: no wait for
        the device per step), or of this one when it is the ``last``."""
        signum = self._stop_vote.now(stop.signum) if last else self._stop_vote(stop.signum)
        if not signum:
            return
        if self._saved[0] != self.step:
            self._saved = (self.step, self.save())
        checkpoint = self._saved[1]
        self._log({"event": "stopped", "signal": signal.Signals(signum).name, "step": self.step,
                   "checkpoint": str(checkpoint)})
        raise TrainingStopped(signum, self.step, checkpoint, report=self.dist.is_main, here=stop.signum == signum)

    def _train_step(self, it: Iterator[dict[str, Any]], window: LogWindow, bar: Any) -> int:
        """One optimiser step over ``train.grad_accum`` micro-batches of ``it``; the losses go to ``window``.
        Returns the images this rank trained on. Nothing here reads a device value back (no host sync): the
        non-finite check, the losses and the counters stay on the device until the log window closes."""
        self._enter_stage()
        accum = self.train_cfg["grad_accum"]
        losses: defaultdict[str, Any] = defaultdict(float)  # 0.0, then the tensor sum of the micro-batches
        images = 0
        for micro in range(accum):
            batch = to_device(next(it), self.dist.device, self.engine.input_dtype)
            if self._hooks is not None:  # the seed of the model's draws (TrainingHooks)
                seed = self.cfg["seed"] * 1_000_003 + self.step * accum + micro
                batch["sample_seed"] = torch.full((), seed, dtype=torch.int64, device=self.dist.device)
            out = self.engine.forward_backward(batch, last_micro=micro == accum - 1)
            for k, v in out.items():
                losses[k] += v.detach().float() / accum
            n = count_images(batch)
            images += n
            self.samples_seen += n * self.dist.world_size
        finite = torch.isfinite(all_reduce_mean(losses["loss"]))  # the ranks agree (a collective, no host sync)
        self._finish_step(finite)
        self.step += 1
        window.add_losses(dict(losses), finite)
        if bar is not None:
            bar.update(1)
        return images


class TrainingStopped(ExitWithMessage):
    """SIGTERM / SIGINT / SIGHUP stopped training after step ``step`` (``here``: this process got the signal, else
    another rank of the job did); ``checkpoint``: the step checkpoint written then (rank 0's path; None on the
    other ranks). The exit status is 128 + the signal's number (143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None, report: bool = True, here: bool = True):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        what = signal.Signals(signum).name + (" (its launcher ended)" if signum == PARENT_DIED else "")
        where = "" if here else " of another rank"
        super().__init__(f"stopped by {what}{where} after step {step}; checkpoint "
                         f"{checkpoint if checkpoint is not None else 'written by rank 0'}; resume with "
                         f"--resume latest", 128 + signum, report)


class StopSignals:
    """While entered (in the main thread), SIGTERM, SIGINT and SIGHUP (the launcher died:
    :mod:`utils.parent_death`) only set :attr:`signum` (the first one received), for the training loop to stop at
    the end of its step; SIGTERM or SIGINT a second time stops the process at once, as it would without this
    (KeyboardInterrupt for SIGINT); SIGHUP again changes nothing. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, PARENT_DIED)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum and signum != PARENT_DIED:  # asked again: stop now
            previous = self._previous.get(signum)
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if not self.signum:
            self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def restart_resume(resume: str | None) -> str | None:
    """``resume``, or ``latest`` when this process restarts a failed run (``TORCHELASTIC_RESTART_COUNT`` > 0:
    torchrun's ``--max-restarts``, or ``run.py --max-restarts`` for one process), so that the restarted run
    continues from its newest step checkpoint (or starts afresh when there is none)."""
    if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0) > 0:
        return "latest"
    return resume


def check_stages(cfg: dict, model: nn.Module) -> list[dict[str, Any]]:
    """``train.stages`` validated: mappings of ``steps`` (> 0) and ``loss`` (switches of the ``loss`` section),
    steps adding up to ``train.steps``, and a model with loss switches (:class:`TrainingHooks`)."""
    stages = cfg["train"].get("stages") or []
    if not stages:
        return []
    if not isinstance(stages, list) or not isinstance(model, TrainingHooks):
        raise ConfigError("train.stages must be a list of {steps, loss} and the model must have loss switches "
                          "(the pretraining model: TrainingHooks)")
    known = set(cfg.get("loss", {}))
    for i, stage in enumerate(stages):
        where = f"train.stages[{i}]"
        if not isinstance(stage, dict) or set(stage) - {"steps", "loss"}:
            raise ConfigError(f"{where} must be a mapping with keys steps and loss, got {stage!r}")
        if not isinstance(stage.get("steps"), int) or stage["steps"] <= 0:
            raise ConfigError(f"{where}.steps must be a positive integer, got {stage.get('steps')!r}")
        unknown = set(stage.get("loss") or {}) - known
        if not isinstance(stage.get("loss", {}), dict) or unknown:
            raise ConfigError(f"{where}.loss: unknown loss switch(es) {sorted(unknown)}; known: {sorted(known)}")
    total = sum(stage["steps"] for stage in stages)
    if total != cfg["train"]["steps"]:
        raise ConfigError(f"train.stages: the stages' steps add up to {total}, train.steps is {cfg['train']['steps']}")
    return stages
