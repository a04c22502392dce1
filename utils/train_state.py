"""Step checkpoints that resume exactly: model, optimizer, scheduler, scaler, counters, RNG states and
data position. Written to a temporary file and renamed, so a crash never leaves a broken checkpoint;
only the last N are kept. Loaded with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_DIR = "checkpoints"
_PATTERN = re.compile(r"^step_(\d+)\.pt$")


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
    with open(tmp, "wb") as f:
        torch.save({**state, "step": step, "rng": rng_state()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
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
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_train_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a step checkpoint (tensors and plain containers only) and restore the RNG states."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    set_rng_state(state["rng"])
    return state
