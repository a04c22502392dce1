"""The fusion architectures by name (``model.architecture``): the one place that knows them all."""
from __future__ import annotations

from typing import Any

from models.fiber import FiberFusion
from models.fusion import X2VLMFusion
from models.fusion_interface import Fusion

#: ``model.architecture`` → the :class:`~models.fusion_interface.Fusion` implementation
FUSIONS: dict[str, type[Fusion]] = {
    "x2vlm": X2VLMFusion,  # fusion layers after the encoders (models/fusion.py)
    "fiber": FiberFusion,  # gated cross-attention inside the top layers of both backbones (models/fiber.py)
}


def build_fusion(model_cfg: dict, text_config: Any) -> Fusion:
    """The fusion ``model_cfg["architecture"]`` names, built from the model config and the text encoder's config."""
    name = model_cfg["architecture"]
    if name not in FUSIONS:
        raise ValueError(f"model.architecture must be one of {', '.join(FUSIONS)}, got '{name}'")
    return FUSIONS[name].from_config(model_cfg, text_config)


__all__ = ["FUSIONS", "build_fusion"]
