"""Downstream fusion networks: registry ``FUSIONS`` (name -> class), :func:`build_fusion` and
:func:`build_from_config` (a recipe's ``model`` section).

See :mod:`koemo.fusion.models` for the models and :mod:`koemo.fusion.base` for masking and the
Grad-CAM hook point (``embed`` / ``head`` and :func:`grad_x_activation`). A new fusion is one
module that registers its class with ``@FUSIONS.register("name")`` plus its import below.
"""

from koemo.fusion.base import FusionModel, grad_x_activation, masked_mean
from koemo.fusion.registry import FUSIONS, build_from_config, build_fusion
from koemo.fusion import models  # noqa: E402,F401  (registration)

__all__ = ["FUSIONS", "FusionModel", "build_from_config", "build_fusion", "grad_x_activation", "masked_mean"]
