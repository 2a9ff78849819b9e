"""Log-mel → waveform: the one place that picks a vocoder by name.

    vocode = load_vocoder(None)          # Griffin-Lim (no weights; the default everywhere)
    wav_S = vocode(mel_MF)               # float32, exactly F · hop samples

Generation, scoring (the ground-truth-mel baseline goes through the same vocoder as the model's
mel) and `l2s speak` all take a vocoder spec and resolve it here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2s.audio import griffin_lim
from l2s.config import AUDIO

GRIFFIN_LIM = "griffin-lim"


@dataclass(frozen=True)
class GriffinLim:
    name: str = GRIFFIN_LIM

    def __call__(self, mel_MF: np.ndarray) -> np.ndarray:
        return griffin_lim(mel_MF)

    def batch(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several mels in one padded run: about twice the throughput of one at a time on a CPU
        core. Padding is silence (the mel floor), and each waveform is cut to its own length."""
        if not mels:
            return []
        longest = max(m.shape[1] for m in mels)
        floor = np.log(AUDIO.log_floor)
        mel_BMF = np.stack(
            [np.pad(m, ((0, 0), (0, longest - m.shape[1])), constant_values=floor) for m in mels]
        )
        wav_BS = griffin_lim(mel_BMF)
        return [wav_BS[i, : m.shape[1] * AUDIO.hop_length] for i, m in enumerate(mels)]


@functools.cache  # one model per process, however many clips ask for it
def load_vocoder(spec: str | None) -> GriffinLim:
    """`None` or "griffin-lim" → Griffin-Lim."""
    if spec in (None, GRIFFIN_LIM):
        return GriffinLim()
    raise ValueError(f"unknown vocoder {spec!r} (expected {GRIFFIN_LIM!r})")
