"""Step checkpoints that resume exactly: model, optimizer, scheduler, scaler, counters, RNG states and
data position. Written to a temporary file and renamed, so a crash never leaves a broken checkpoint;
only the last N are kept. Every checkpoint file is read by :func:`load_checkpoint_file`: ``torch.load`` with
``weights_only=True`` (tensors, plain containers and exactly the classes a caller allows), unless trusted
(``--trusted-checkpoint``)."""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from utils.atomic import atomic_write
from utils.trust import is_trusted

CKPT_DIR = "checkpoints"
_PATTERN = re.compile(r"^step_(\d+)\.pt$")
TRUST_HINT = "if you trust this file: --trusted-checkpoint (trusted=True in Python)"


def _unsafe_globals(path: str | os.PathLike, allowed: list[type]) -> list[str]:
    """The classes / functions a zip-format checkpoint names that ``weights_only`` would refuse ([] if unknown)."""
    ok = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - ok)
    except Exception:  # not a zip checkpoint (legacy format or garbage)
        return []


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", trusted: bool | None = None,
                         allowed: tuple[type, ...] | list[type] = ()) -> Any:
    """``torch.load`` of a checkpoint file without running code: ``weights_only=True`` with exactly the classes
    ``allowed`` added (scoped to this call), unless ``trusted`` (default:
    :func:`utils.trust.is_trusted`). A file naming any
    other class or function raises a one-line :class:`~models.checkpoint.CheckpointError` that names the file,
    the refused globals and the override; an unreadable file one that names the file."""
    from models.checkpoint import CheckpointError
    if is_trusted(trusted):
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path, list(allowed))
        if unsafe:
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain containers ({', '.join(unsafe)}), so it was "
                f"not unpickled (weights_only=True: a pickle can run code); {TRUST_HINT}") from e
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt, or not a PyTorch file): {e}") from e
    except Exception as e:  # truncated or corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def rng_state() -> dict[str, Any]:
    # the global generator is MT19937, whose legacy state (the default) is this tuple, not the dict
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


#: the config a resumed run must share with the run that wrote its checkpoint: with another value it would go on
#: silently differently (other batches, another optimiser or schedule, another model)
RESUME_INVARIANT = ("seed", "model", "loss", "data", "optimizer", "scheduler", "train.engine", "train.precision",
                    "train.grad_accum", "train.clip_grad", "train.stages")
#: keys under those a resumed run may change: where files are (paths move between machines; the data sources'
#: sizes are checked with the data position instead), loader speed, skip tolerances and evaluation-only data
_RESUME_FREE_NAMES = ("root", "roots", "checkpoint", "name_or_path", "tokenizer", "answer_list", "ans2label",
                      "allow_partial_load", "num_workers", "max_bad_fraction", "bad_window", "batch_size_test")


def _resume_free(key: str) -> bool:
    name = key.rsplit(".", 1)[-1]
    return name in _RESUME_FREE_NAMES or "file" in name


def run_setup(cfg: dict, world_size: int) -> dict[str, Any]:
    """What a step checkpoint records of its run so that a resume can check it continues the same run: the
    :data:`RESUME_INVARIANT` values of ``cfg`` (flattened to dotted keys) and the number of processes."""
    flat: dict[str, Any] = {"world_size": world_size}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif not _resume_free(key):
            flat[key] = value

    for section in RESUME_INVARIANT:
        value: Any = cfg
        for part in section.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        walk(value, section)
    return flat


def setup_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every value of :func:`run_setup` that differs."""
    def show(setup: dict[str, Any], key: str) -> str:
        return repr(setup[key]) if key in setup else "(not set)"

    keys = sorted(set(saved) | set(current))
    return [f"{key}: {show(saved, key)} -> {show(current, key)}" for key in keys
            if key not in saved or key not in current or saved[key] != current[key]]


def state_changes(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> list[str]:
    """How the model weights of a step checkpoint differ from the model's own: missing and extra keys, and
    tensors of another shape (``[]`` when the checkpoint fits)."""
    changes = [f"{k}: missing from the checkpoint" for k in sorted(set(current) - set(saved))]
    changes += [f"{k}: not in this model" for k in sorted(set(saved) - set(current))]
    changes += [f"{k}: shape {tuple(saved[k].shape)} -> {tuple(current[k].shape)}"
                for k in sorted(set(saved) & set(current)) if saved[k].shape != current[k].shape]
    return changes


def checkpoint_paths(output_dir: str | os.PathLike) -> list[Path]:
    """Step checkpoints in ``output_dir/checkpoints``, oldest first."""
    folder = Path(output_dir) / CKPT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """``latest`` → newest step checkpoint in ``output_dir`` (None if there is none); a path → itself."""
    if not resume:
        return None
    if resume == "latest":
        paths = checkpoint_paths(output_dir)
        return paths[-1] if paths else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint not found: {path}")
    return path


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def save_train_state(output_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int = 3) -> Path:
    """Write ``state`` as ``checkpoints/step_{step}.pt`` atomically and prune to the newest ``keep_last``."""
    target = Path(output_dir) / CKPT_DIR / checkpoint_name(step)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step, "rng": rng_state()}, f)

    atomic_write(target, write)  # a full disk, a stop mid-write: no partial file; the previous one is intact
    if keep_last > 0:
        for old in checkpoint_paths(output_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
            shards = old.with_suffix(".ds")  # DeepSpeed ZeRO shards of that step, if any
            if shards.is_dir():
                shutil.rmtree(shards)
    return target


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON via a temporary file and a rename (:func:`utils.atomic.atomic_write`)."""
    import json
    text = json.dumps(data, indent=1) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                     trusted: bool | None = None) -> dict[str, Any]:
    """Read a step checkpoint (tensors and plain containers only, unless ``trusted``: :func:`load_checkpoint_file`)
    and restore the RNG states."""
    state = load_checkpoint_file(path, map_location, trusted)
    set_rng_state(state["rng"])
    return state


def step_of(path: str | os.PathLike) -> int | None:
    """The step number in a ``step_*.pt`` file name (None for other names)."""
    m = _PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def set_aside_newer(output_dir: str | os.PathLike, resumed: str | os.PathLike, step: int) -> Path | None:
    """Resuming ``resumed`` (at ``step``) abandons the timeline of every step checkpoint in ``output_dir`` newer
    than it (and of another file at the same step): move those (``.pt`` with their ``.ds`` shards) into
    ``checkpoints/abandoned_<UTC time>/`` so that ``--resume latest`` never mixes the two timelines. Returns
    that folder (None when nothing moved)."""
    resumed = Path(resumed).resolve()
    # checkpoint_paths gives step_*.pt files only: step_of is never None there
    stale = [p for p in checkpoint_paths(output_dir)
             if cast(int, step_of(p)) > step or (step_of(p) == step and p.resolve() != resumed)]
    if not stale:
        return None
    dest = Path(output_dir) / CKPT_DIR / time.strftime("abandoned_%Y%m%dT%H%M%SZ", time.gmtime())
    dest = dest.with_name(f"{dest.name}_{os.getpid()}") if dest.exists() else dest
    dest.mkdir(parents=True)
    for p in stale:
        for part in (p, p.with_suffix(".ds")):
            if part.exists():
                os.replace(part, dest / part.name)
    print(f"resume: step {step} ({resumed.name}) is older than {len(stale)} checkpoint(s) of an abandoned run "
          f"({', '.join(p.name for p in stale)}): moved them to {dest}, so that --resume latest follows this run")
    return dest
