"""Vocoders: the one place that turns a log-mel (THE mel of `l2s.audio`) into a waveform.

    vocode = load_vocoder(None)                    # Griffin-Lim (no training)
    vocode = load_vocoder("out/runs/hifigan")      # a HiFi-GAN run (its latest checkpoint) or one
    wav_S = vocode(mel_MF)                         # float32, exactly F · 160 samples

Generation, scoring and `l2s speak` take a `--vocoder` spec and call `load_vocoder` (cached: one
model per process). A vocoder's `name` is itself a spec, so generated records name theirs and
scoring sends the ground-truth mel through the same one. A HiFi-GAN checkpoint loads without Ray
(weight norm folded away for inference).

Letters in shape names: B batch, M mel bands, F mel frames, S samples.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from l2s.audio import griffin_lim
from l2s.config import AUDIO

GRIFFIN_LIM = "griffin-lim"
HIFIGAN_PREFIX = "hifigan:"


class Vocoder(Protocol):
    name: str

    def __call__(self, mel_MF: np.ndarray) -> np.ndarray: ...

    def batch(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several mels (any lengths) → their waveforms, each exactly its own F · 160 samples."""
        ...


class GriffinLim:
    """Fast Griffin-Lim through the mel filterbank's pseudo-inverse (`l2s.audio.griffin_lim`)."""

    name = GRIFFIN_LIM

    def __call__(self, mel_MF: np.ndarray) -> np.ndarray:
        return griffin_lim(mel_MF)

    def batch(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One at a time: a padded batch gains nothing for Griffin-Lim on a CPU (measured on 16
        test clips at one torch thread: 2.1 CPU-s padded in one batch against 1.55 one by one,
        the FFTs being too small for batching to amortize anything)."""
        return [griffin_lim(mel_MF) for mel_MF in mels]


class HiFiGAN:
    """A trained HiFi-GAN generator (eval mode, weight norm removed)."""

    def __init__(self, checkpoint: str, device: str | torch.device = "cpu") -> None:
        from l2s.infer.checkpoint import VOCODER_FILE, read_model, resolve
        from l2s.models.hifigan import Generator, HiFiGANConfig

        self.checkpoint = resolve(checkpoint, VOCODER_FILE)
        saved = read_model(self.checkpoint, VOCODER_FILE)
        self.config = HiFiGANConfig.from_dict(saved["model_config"])
        self.step = int(saved["progress"]["step"])
        generator = Generator(self.config)
        generator.load_state_dict(saved["generator"])
        self.generator = generator.remove_weight_norm().to(device).eval()
        self.device = torch.device(device)
        self.name = f"{HIFIGAN_PREFIX}{self.checkpoint}"

    def __call__(self, mel_MF: np.ndarray) -> np.ndarray:
        return self.batch([mel_MF])[0]

    @torch.inference_mode()
    def batch(self, mels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over the mels padded with silence (the mel floor) to the longest;
        each waveform is cut to its own length. Only a clip's last few hundred samples can hear
        the padding, through the convolutions' receptive field. (The padded stack is a copy:
        mels read from Parquet are read-only buffers, which torch warns about.)"""
        if not mels:
            return []
        longest = max(m.shape[1] for m in mels)
        floor = float(np.log(AUDIO.log_floor))
        mel_BMF = np.stack(
            [np.pad(m, ((0, 0), (0, longest - m.shape[1])), constant_values=floor) for m in mels]
        ).astype(np.float32)
        wav_BS = self.generator(torch.from_numpy(mel_BMF).to(self.device)).float().cpu().numpy()
        return [wav_BS[i, : m.shape[1] * AUDIO.hop_length] for i, m in enumerate(mels)]


@functools.cache  # one model per process, however many clips ask for it
def load_vocoder(spec: str | None, device: str = "cpu") -> Vocoder:
    """None or "griffin-lim" → Griffin-Lim; anything else names a HiFi-GAN checkpoint or run
    directory (local or s3://), optionally as "hifigan:<uri>" (a vocoder's own `name`)."""
    if spec is None or spec == GRIFFIN_LIM:
        return GriffinLim()
    return HiFiGAN(spec.removeprefix(HIFIGAN_PREFIX), device)
