"""Counter-based uniform noise: a pure function of (seed, stream, row, column), made of integer tensor ops.

``torch.Generator`` draws need a generator object per seed, which ``torch.compile`` cannot create inside a
graph (a graph break per step) and CUDA graphs cannot re-seed. Hashing the coordinates instead gives the
same noise for the same seed on any device, inside or outside a compiled graph, and lets each process
compute only its own rows of a matrix defined over the global batch. The hash is Chris Wellons'
``lowbias32`` integer mixer applied to 32-bit words held in int64 tensors (products wrap modulo 2**64;
masking keeps the low 32 bits, which wrapping leaves exact).
"""
from __future__ import annotations

import torch

_LOW32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: separates the words that are mixed in one after another


def mix32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` of each element of an int64 tensor of values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _LOW32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _LOW32
    return x ^ (x >> 16)


def _absorb(state: torch.Tensor, word: torch.Tensor | int) -> torch.Tensor:
    return mix32(((state + _GOLDEN) & _LOW32) ^ (torch.as_tensor(word, device=state.device) & _LOW32))


def counter_uniform(seed: torch.Tensor | int, streams: int, rows: torch.Tensor, cols: int) -> torch.Tensor:
    """Uniform (0, 1) float32 noise ``(streams, len(rows), cols)``: element (s, i, j) depends only on ``seed``
    (an int or 0-d integer tensor, any 64-bit value), the stream ``s`` (independent draws of one seed),
    ``rows[i]`` (an int64 row id, e.g. a global batch row) and ``j``. 24 random bits per value, centred in its
    bin. About 60 elementwise integer ops, whatever the size (one kernel once compiled)."""
    device = rows.device
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    state = _absorb(mix32(seed & _LOW32), (seed >> 32) & _LOW32)
    state = _absorb(state, torch.arange(streams, device=device))[:, None, None]
    state = _absorb(state, rows.to(torch.int64)[None, :, None])
    bits = _absorb(state, torch.arange(cols, device=device)[None, None, :])
    return ((bits >> 8).to(torch.float32) + 0.5) * 2.0**-24
