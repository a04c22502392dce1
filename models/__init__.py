"""X²-VLM models. ``from models import load_model`` gives the inference API (:mod:`models.api`)."""
from __future__ import annotations

from typing import Any

_API = ("load_model", "X2VLMInference")


def __getattr__(name: str) -> Any:  # imported on first use: ``import models.x2vlm`` stays light
    if name in _API:
        from models import api
        return getattr(api, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = list(_API)
