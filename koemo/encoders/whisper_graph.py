"""The Whisper encoder's forward for a window of any length, shared by the PyTorch path
(:mod:`koemo.encoders.whisper`) and the ONNX export (:mod:`koemo.encoders.whisper_onnx`).

Why its own: transformers' ``WhisperEncoder.forward`` refuses anything but 3000 mel frames, and
``encoders.speech_window: clip`` feeds the clip's frames only; the export must trace the same
graph the PyTorch path runs. Equal to transformers' forward, bit for bit, on a whole window
(tests/encoders/test_whisper_onnx.py).
"""

from __future__ import annotations


def encoder_outputs(encoder, mel, stacked: bool):
    """``mel [windows, n_mels, 2T] -> [windows, T, dim]`` (or ``[windows, T, 7, dim]`` stacked:
    the front end, each block, the last one after the final norm) for any ``T`` up to 1500.
    The transformers ``WhisperEncoder`` forward, minus its check that ``T`` is 1500 (equal to
    it on a 30 s window: tests/encoders/test_whisper_onnx.py)."""
    import torch

    x = torch.nn.functional.gelu(encoder.conv1(mel))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    hidden = [x]
    for layer in encoder.layers:
        x = layer(x, None)
        hidden.append(x)
    hidden[-1] = encoder.layer_norm(x)  # the identity when only the first k blocks were built
    return torch.stack(hidden, dim=2) if stacked else hidden[-1]


__all__ = ["encoder_outputs"]
