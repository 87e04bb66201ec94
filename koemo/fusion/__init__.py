"""Downstream fusion networks: registry ``FUSIONS`` (name -> class) and :func:`build_fusion`.

See :mod:`koemo.fusion.models` for the models and :mod:`koemo.fusion.base` for masking and the
Grad-CAM hook point (``embed`` / ``head`` and :func:`grad_x_activation`).
"""

from koemo.fusion.base import FusionModel, grad_x_activation, masked_mean
from koemo.fusion.models import FUSIONS, build_fusion

__all__ = ["FUSIONS", "FusionModel", "build_fusion", "grad_x_activation", "masked_mean"]
