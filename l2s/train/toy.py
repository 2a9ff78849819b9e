"""A small feature dataset whose mel really follows the lips, made without any preprocessing: for
tests, benchmarks and smoke-testing a cluster before real features exist.

Each clip has a mouth-opening curve a(t) in [0, 1]. Its ROI frames show a dark ellipse whose height
follows a(t) on a noisy grey background; its log-mel is a(t)² times the speaker's spectral envelope
(two formant-like bumps at speaker-specific bands). The mel is therefore learnable from the video,
and its timbre from the speaker embedding (a per-speaker unit vector plus a little noise).

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, D embedding size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l2s import __version__
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.pipeline import shards
from l2s.schema import SCHEMA_VERSION, ErrorRow, FeatureRow

WORDS = ("BIN", "BLUE", "AT", "F", "TWO", "NOW", "LAY", "RED", "BY", "G", "NINE", "AGAIN", "PLACE")


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    speakers: int = 3
    utterances: int = 12  # per speaker; 3/4 train, the rest split between val and test
    min_frames: int = 30
    max_frames: int = 60
    embedding_dim: int = 256
    shard_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.speakers < 1 or self.utterances < 4:
            raise ValueError("need at least 1 speaker and 4 utterances per speaker")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )


def _opening_T(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth mouth-opening curve: a few syllable-rate sinusoids, rectified, in [0, 1]."""
    t_T = np.arange(n_frames) / VIDEO.fps
    curve_T = np.zeros(n_frames)
    for _ in range(3):
        rate = rng.uniform(2.0, 6.0)  # syllables per second
        curve_T += np.sin(2 * np.pi * rate * t_T + rng.uniform(0, 2 * np.pi))
    return np.clip(curve_T / 3.0 + 0.3, 0.0, 1.0)


def _roi_THW(opening_T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = VIDEO.roi_size
    y_HW, x_HW = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    frames = []
    for a in opening_T:
        inside_HW = (x_HW / 22.0) ** 2 + (y_HW / (3.0 + 17.0 * a)) ** 2 <= 1.0
        frame_HW = np.where(inside_HW, 40.0, 130.0) + rng.normal(0.0, 6.0, (size, size))
        frames.append(np.clip(frame_HW, 0, 255).astype(np.uint8))
    return np.stack(frames)


def _mel_MF(opening_T: np.ndarray, envelope_M: np.ndarray) -> np.ndarray:
    opening_F = np.repeat(opening_T, MELS_PER_FRAME)
    energy_MF = 5.0 * envelope_M[:, None] * opening_F[None, :] ** 2
    return np.log(np.maximum(energy_MF, AUDIO.log_floor) + 1e-4).astype(np.float32)


def toy_rows(cfg: ToyConfig = ToyConfig()) -> list[FeatureRow]:
    """The dataset's rows, deterministic for `cfg.seed`."""
    rng = np.random.default_rng(cfg.seed)
    bands_M = np.arange(AUDIO.n_mels)
    rows = []
    for s in range(cfg.speakers):
        speaker = f"toy{s:02d}"
        base_D = rng.normal(size=cfg.embedding_dim)
        low, high = rng.uniform(8, 25), rng.uniform(35, 60)
        envelope_M = (
            np.exp(-((bands_M - low) ** 2) / 32.0)
            + 0.6 * np.exp(-((bands_M - high) ** 2) / 72.0)
            + 0.05
        )
        n_train = (3 * cfg.utterances) // 4
        n_val = (cfg.utterances - n_train + 1) // 2
        for u in range(cfg.utterances):
            split = "train" if u < n_train else "val" if u < n_train + n_val else "test"
            n_frames = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
            opening_T = _opening_T(n_frames, rng)
            embedding_D = base_D + 0.3 * rng.normal(size=cfg.embedding_dim)
            embedding_D /= np.linalg.norm(embedding_D)
            # Every third clip has no transcript, as in corpora without text.
            words = rng.choice(WORDS, size=int(rng.integers(2, 5)))
            rows.append(
                FeatureRow(
                    id=f"{speaker}/{u:04d}",
                    speaker=speaker,
                    split=split,
                    corpus="toy",
                    transcript=None if u % 3 == 2 else " ".join(words),
                    n_frames=n_frames,
                    roi=_roi_THW(opening_T, rng).tobytes(),
                    mel=_mel_MF(opening_T, envelope_M).tobytes(),
                    landmarks=np.zeros((n_frames, 68, 2), dtype=np.float32).tobytes(),
                    speaker_embedding=embedding_D.astype(np.float32).tolist(),
                    face_ratio=1.0,
                    n_faces=1,
                )
            )
    return rows


def write_toy_features(out: str, cfg: ToyConfig = ToyConfig()) -> list[FeatureRow]:
    """Write the toy dataset in preprocess's layout (features/, errors/, metadata.json) to `out`,
    with one error row, as a real dataset would have."""
    rows = toy_rows(cfg)
    errors = [
        ErrorRow(id="toy-broken/0000", video="toy-broken.mp4", stage="face", reason="no face")
    ]
    for i in range(0, len(rows), cfg.shard_size):
        shards.write_shard(out, rows[i : i + cfg.shard_size], errors if i == 0 else [])
    shards.write_metadata(
        out,
        {
            "l2s_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "source_manifest": None,
            "audio": AUDIO.to_dict(),
            "video": VIDEO.to_dict(),
            "toy": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "speaker_encoder": {"name": "toy/random-unit", "dim": cfg.embedding_dim},
            "counts": {"features": len(rows), "errors": len(errors)},
        },
    )
    return rows
