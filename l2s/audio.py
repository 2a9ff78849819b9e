"""Audio: load and resample to 16 kHz mono, THE mel function, and mel → waveform (Griffin-Lim).

Every stage (preprocessing, losses, vocoders, scoring) calls `log_mel` with an `AudioConfig`;
there is no second copy. Shapes: S samples, B batch, M mel bands, T mel frames.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import BinaryIO

import av
import librosa
import numpy as np
import soundfile as sf
import torch

from l2s import storage
from l2s.config import AUDIO, AudioConfig


class AudioError(ValueError):
    """A file has no usable audio; the message names the file and the problem."""


def load_audio(
    source: str | Path | BinaryIO,
    sample_rate: int = AUDIO.sample_rate,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream of any container (wav, mp4, mkv, …) to mono float32 at
    `sample_rate`: from sample round(start · sample_rate) on, round(duration · sample_rate)
    samples when a `duration` is given (fewer where the audio ends sooner), else to the end.

    Always decoded from the first sample (no seek), so a segment's samples are exactly the whole
    clip's at the same positions; decoding stops once the segment is complete.
    """
    name = getattr(source, "name", source)
    first = round(start * sample_rate)
    end = None if duration is None else first + round(duration * sample_rate)
    try:
        container = av.open(source if not isinstance(source, Path) else str(source))
    except (av.error.FFmpegError, OSError) as e:
        raise AudioError(f"{name}: cannot open ({e})") from e
    with container:
        if not container.streams.audio:
            raise AudioError(f"{name}: no audio stream")
        stream = container.streams.audio[0]
        padding_limit = _padding_limit(stream, sample_rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        decoded = 0
        try:
            for frame in container.decode(audio=0):
                for f in resampler.resample(frame):
                    chunks.append(f.to_ndarray().reshape(-1))
                    decoded += len(chunks[-1])
                if end is not None and decoded >= end:
                    break
            else:
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.error.FFmpegError as e:
            raise AudioError(f"{name}: audio decode failed ({e})") from e
    if not chunks:
        raise AudioError(f"{name}: audio stream is empty")
    wav_S = np.concatenate(chunks).astype(np.float32)
    if padding_limit is not None and 0 < len(wav_S) - padding_limit[0] <= padding_limit[1]:
        wav_S = wav_S[: padding_limit[0]]
    if first and first >= len(wav_S):
        seconds = len(wav_S) / sample_rate
        raise AudioError(
            f"{name}: starts at {start:.2f} s, after the audio's end ({seconds:.2f} s)"
        )
    return wav_S[first:end]


def _padding_limit(stream: av.audio.stream.AudioStream, sample_rate: int) -> tuple[int, int] | None:
    """(samples the container states, most samples of codec padding) at `sample_rate`, if known.

    AAC and other frame-based codecs pad the last frame (1024 samples for AAC, 64 ms at 16 kHz,
    1.6 video frames); FFmpeg decodes the padding although MP4 states the true duration. Only an
    excess smaller than one codec frame is cut, so a duration that is merely estimated (MP3
    without a header) never cuts real audio.
    """
    if not stream.duration or stream.time_base is None or not stream.rate:
        return None
    stated = round(float(stream.duration * stream.time_base) * sample_rate)
    frame_size = stream.codec_context.frame_size or 0
    return stated, int(np.ceil(frame_size * sample_rate / stream.rate)) + 1


def wav_bytes(wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> bytes:
    """A whole 16-bit PCM WAV file in memory (what `write_wav` writes and the server sends)."""
    buffer = io.BytesIO()
    sf.write(
        buffer, np.asarray(wav_S, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


def write_wav(path: str | Path, wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> None:
    """16-bit PCM WAV (local path or s3://), written whole or not at all; folders are made."""
    storage.write_bytes(str(path), wav_bytes(wav_S, sample_rate))


@functools.cache
def _mel_basis(cfg: AudioConfig) -> torch.Tensor:
    # librosa's default filterbank: Slaney mel scale, Slaney area normalisation.
    basis = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return torch.from_numpy(basis).float()


@functools.cache
def _window(win_length: int) -> torch.Tensor:
    return torch.hann_window(win_length)


def _magnitude(wav_BS: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    # HiFi-GAN's framing: pad (n_fft - hop) / 2 on each side, no centring, so a signal of
    # k * hop samples gives exactly k frames — 4 mel frames per 25 fps video frame.
    pad = (cfg.n_fft - cfg.hop_length) // 2
    mode = "reflect" if wav_BS.shape[-1] > pad else "constant"
    padded = torch.nn.functional.pad(wav_BS.unsqueeze(1), (pad, pad), mode=mode).squeeze(1)
    spec = torch.stft(
        padded,
        cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=_window(cfg.win_length).to(wav_BS.device),
        center=False,
        return_complex=True,
    )
    return spec.abs()


def log_mel(wav: np.ndarray | torch.Tensor, cfg: AudioConfig = AUDIO) -> np.ndarray | torch.Tensor:
    """THE mel function: wav_S or wav_BS → natural-log mel_MT or mel_BMT (same array type back).

    Magnitude STFT (Hann), Slaney mel filterbank, log(max(mel, floor)). Differentiable in torch.
    """
    is_numpy = isinstance(wav, np.ndarray)
    wav_BS = torch.from_numpy(np.asarray(wav, dtype=np.float32)) if is_numpy else wav
    single = wav_BS.dim() == 1
    if single:
        wav_BS = wav_BS.unsqueeze(0)
    if wav_BS.shape[-1] < cfg.hop_length:
        raise AudioError(f"signal of {wav_BS.shape[-1]} samples is shorter than one hop")
    mag_BFT = _magnitude(wav_BS.float(), cfg)
    mel_BMT = torch.log(
        torch.clamp(_mel_basis(cfg).to(mag_BFT.device) @ mag_BFT, min=cfg.log_floor)
    )
    if single:
        mel_BMT = mel_BMT[0]
    return mel_BMT.numpy() if is_numpy else mel_BMT


@functools.cache
def _mel_pinv(cfg: AudioConfig) -> torch.Tensor:
    return torch.linalg.pinv(_mel_basis(cfg))


def griffin_lim(
    mel: np.ndarray | torch.Tensor,
    cfg: AudioConfig = AUDIO,
    n_iter: int = 48,
    momentum: float = 0.99,
) -> np.ndarray:
    """Log-mel (mel_MT or mel_BMT) → waveform(s) of T * hop samples by fast Griffin-Lim.

    The mel is mapped back to a linear magnitude by the filterbank's pseudo-inverse (clipped at 0);
    phase is then estimated with the momentum ("fast") Griffin-Lim of Perraudin et al. 2013.
    """
    mel_BMT = (mel if torch.is_tensor(mel) else torch.from_numpy(np.array(mel, np.float32))).float()
    mel_BMT = mel_BMT.cpu()
    single = mel_BMT.dim() == 2
    if single:
        mel_BMT = mel_BMT.unsqueeze(0)
    mag_BFT = torch.clamp(_mel_pinv(cfg) @ torch.exp(mel_BMT), min=0.0)
    n_samples = mel_BMT.shape[-1] * cfg.hop_length
    stft = functools.partial(
        torch.stft,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=_window(cfg.win_length),
        center=True,
        return_complex=True,
    )
    istft = functools.partial(
        torch.istft,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=_window(cfg.win_length),
        center=True,
        length=n_samples,
    )
    generator = torch.Generator().manual_seed(0)
    angles = torch.exp(2j * torch.pi * torch.rand(mag_BFT.shape, generator=generator))
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = stft(istft(mag_BFT * angles))[..., : mag_BFT.shape[-1]]
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-8)
        previous = rebuilt
    wav_BS = istft(mag_BFT * angles)
    # torch centres frame k on sample k * hop; our analysis frame k is centred on k * hop + (hop / 2)
    # (see _magnitude), so the estimate is delayed by half a hop to line up with the original.
    shift = cfg.hop_length // 2
    wav_BS = torch.nn.functional.pad(wav_BS, (shift, 0))[..., :n_samples]
    out = wav_BS.numpy().astype(np.float32)
    return out[0] if single else out
