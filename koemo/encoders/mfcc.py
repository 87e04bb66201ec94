"""MFCC: the paper's audio baseline. 40 coefficients + deltas + delta-deltas = 120 dims, 100 frames/s.

25 ms Hann windows (n_fft 400) every 10 ms (hop 160) at 16 kHz, 40 mel bands, librosa's DCT-II,
centred frames (``1 + samples // 160`` frames, so any audio gives at least one). Deltas over 9
frames with edge frames repeated, so short clips work. No normalisation: the values are the raw
cepstra (c0 carries loudness, a cue for anger); the fusion model normalises its inputs.
"""

from __future__ import annotations

import numpy as np

from koemo.encoders.base import SPEECH_ENCODERS, SpeechEncoder


@SPEECH_ENCODERS.register("mfcc")
class MFCC(SpeechEncoder):
    name = "mfcc"
    dim = 120
    frame_rate = 100.0
    finetunable = False
    min_samples = 400  # one 25 ms window

    def __init__(self, n_mfcc: int = 40, deltas: bool = True, layer: int | None = None):
        self.n_mfcc = n_mfcc
        self.deltas = deltas
        self.dim = n_mfcc * (3 if deltas else 1)

    @property
    def id(self) -> str:
        import librosa

        return (f"mfcc|n_mfcc={self.n_mfcc}|deltas={int(self.deltas)}|n_fft=400|hop=160|n_mels=40"
                f"|librosa={librosa.__version__}")

    def _encode(self, audio: np.ndarray) -> np.ndarray:
        import librosa

        m = librosa.feature.mfcc(y=audio, sr=16000, n_mfcc=self.n_mfcc, n_fft=400, hop_length=160,
                                 win_length=400, n_mels=40, center=True)
        if self.deltas:
            width = 9
            d1 = librosa.feature.delta(m, width=width, order=1, mode="nearest")
            d2 = librosa.feature.delta(m, width=width, order=2, mode="nearest")
            m = np.concatenate([m, d1, d2])
        return m.T.astype(np.float32)
