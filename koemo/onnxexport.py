"""Helpers every ONNX export in koemo shares (the fusion head, :mod:`koemo.serving.export`; the
Whisper encoder, :mod:`koemo.encoders.whisper_onnx`): a quiet exporter and a file without the
exporter's per-node debugging records."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path


def quiet_exporter():
    """Silence the exporter's progress prints, warnings and log lines (errors still raise)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", None):  # None: the root
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, level)
    return stack


def strip_debug_info(path: Path) -> None:
    """Drop what the exporter records per node for debugging (the PyTorch stack trace, with this
    machine's file paths, and the FX node): more than half of a small head's file."""
    import onnx

    model = onnx.load(str(path))

    def strip(graph) -> None:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    strip(sub)

    strip(model.graph)
    for fn in model.functions:
        for node in fn.node:
            del node.metadata_props[:]
    onnx.save(model, str(path))
