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
from typing import Any

import numpy as np
import torch

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
    :func:`models.checkpoint.is_trusted`). A file naming any
    other class or function raises a one-line :class:`~models.checkpoint.CheckpointError` that names the file,
    the refused globals and the override; an unreadable file one that names the file."""
    from models.checkpoint import CheckpointError, is_trusted
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
    np_state = np.random.get_state()
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
    folder = Path(output_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / checkpoint_name(step)
    tmp = folder / f".{target.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "step": step, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:  # a full disk, a stop mid-write: no partial file stays; the previous checkpoint is intact
        tmp.unlink(missing_ok=True)
        raise
    if keep_last > 0:
        for old in checkpoint_paths(output_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
            shards = old.with_suffix(".ds")  # DeepSpeed ZeRO shards of that step, if any
            if shards.is_dir():
                shutil.rmtree(shards)
    return target


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON via a temporary file and a rename."""
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    stale = [p for p in checkpoint_paths(output_dir)
             if step_of(p) > step or (step_of(p) == step and p.resolve() != resumed)]
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
