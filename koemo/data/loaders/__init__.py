"""Dataset loaders: each turns a dataset in its published layout into manifest rows.

``LOADERS.get(name)(root, skips)`` returns a list of :class:`~koemo.data.manifest.Utterance`;
bad files are reported through the :class:`~koemo.errors.SkipLog` and the rest still load.
"""

from koemo.registry import Registry

LOADERS: Registry = Registry("dataset loader")

from koemo.data.loaders import aihub, emotiontts, generic  # noqa: E402,F401  (registration)
