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


def merged_outputs(encoder, mel, frames: int, group: int, stacked: bool):
    """One whole window ``mel [1, n_mels, 3000]`` whose first ``frames`` encoder frames are kept
    apart and whose remaining (padding) frames go through the blocks as one token per ``group``
    of them -> ``[1, 1500, dim]`` (or ``[1, 1500, 7, dim]`` stacked), each group's token
    repeated over its frames.

    Why: in a 30 s window holding a 5 s clip, five sixths of the encoder's work is on padding,
    yet the padding is not inert (every frame attends to every other; dropping it, the ``clip``
    window, costs ~3 points on voices never heard). A token enters as the mean of its frames'
    inputs and its attention logit is raised by log(group), so a query weighs it as it weighs the
    frames it stands for (token merging). The kept frames' states move 1-7% against the whole
    pass (docs/encoders.md); other features, so their own encoder id."""
    import torch

    x = torch.nn.functional.gelu(encoder.conv1(mel))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    frames = min(frames, x.shape[1])
    groups = x[:, frames:].split(group, dim=1) if frames < x.shape[1] else ()  # (split of nothing: one empty)
    sizes = torch.tensor([g.shape[1] for g in groups], dtype=torch.long)
    x = torch.cat([x[:, :frames], *(g.mean(dim=1, keepdim=True) for g in groups)], dim=1)
    bias = torch.zeros(1, 1, 1, x.shape[1], dtype=x.dtype)
    bias[..., frames:] = torch.log(sizes.to(x.dtype))
    hidden = [x]
    for layer in encoder.layers:
        x = layer(x, bias)
        hidden.append(x)
    hidden[-1] = encoder.layer_norm(x)
    out = torch.stack(hidden, dim=2) if stacked else hidden[-1]
    if not len(sizes):
        return out
    return torch.cat([out[:, :frames], out[:, frames:].repeat_interleave(sizes, dim=1)], dim=1)


__all__ = ["encoder_outputs", "merged_outputs"]
