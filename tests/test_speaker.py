"""Speaker embeddings on real speech: unit-norm 256-d vectors that tell speakers apart."""

from __future__ import annotations

import pickle

import librosa
import numpy as np
import pytest
from conftest import FIXTURES

from l2s.audio import load_audio
from l2s.evaluate.metrics import speaker_similarity
from l2s.speaker import EMBEDDING_DIM, SpeakerEncoder, SpeakerError

REAL = FIXTURES


def real(name: str) -> np.ndarray:
    path = REAL / name
    if not path.exists():
        pytest.skip(f"real fixture not found at {path} (shared/ is not beside the repo)")
    return load_audio(path)


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    encoder = SpeakerEncoder()
    encoder.setup()
    return encoder


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return real("python-pesq__speech.wav")


def test_embedding_is_unit_norm_256_float32(encoder: SpeakerEncoder, speech: np.ndarray) -> None:
    embedding_D = encoder.embed(speech)
    assert embedding_D.shape == (EMBEDDING_DIM,) == (256,) and embedding_D.dtype == np.float32
    assert np.all(np.isfinite(embedding_D))
    assert np.linalg.norm(embedding_D) == pytest.approx(1.0, abs=1e-5)
    assert encoder.name.startswith("resemblyzer-0.1.4/ge2e-256")
    assert encoder.metadata() == {"name": encoder.name, "dim": 256, "sample_rate": 16000}


def test_same_speaker_is_closer_than_other_speakers(
    encoder: SpeakerEncoder, speech: np.ndarray
) -> None:
    half = len(speech) // 2
    first_D, second_D = encoder.embed(speech[:half]), encoder.embed(speech[half:])
    same = speaker_similarity(first_D, second_D)
    others = {}
    for clip in ("video-retalking__face_1.mp4", "video-retalking__face_2.mp4"):
        other_S = real(clip)  # the speech track of a real talking-face video, another person
        others[clip] = speaker_similarity(first_D, encoder.embed(other_S[: 3 * 16000]))
    print(f"same speaker (two halves): {same:.3f}; other speakers: {others}")
    # Measured: 0.80 for the two halves, 0.35-0.54 against the five video speakers.
    assert same > max(others.values()) + 0.1


def test_other_sample_rates_are_resampled(encoder: SpeakerEncoder, speech: np.ndarray) -> None:
    at_44k = librosa.resample(speech, orig_sr=16000, target_sr=44100)
    assert speaker_similarity(encoder.embed(speech), encoder.embed(at_44k, 44100)) > 0.98


def test_silence_is_refused_not_embedded(encoder: SpeakerEncoder) -> None:
    with pytest.raises(SpeakerError, match="silent"):
        encoder.embed(np.zeros(16000, np.float32))
    quiet_noise = np.random.default_rng(0).normal(0, 1e-4, 16000).astype(np.float32)
    with pytest.raises(SpeakerError, match="no speech"):
        encoder.embed(quiet_noise)


def test_encoder_pickles_without_its_network(encoder: SpeakerEncoder, speech: np.ndarray) -> None:
    clone = pickle.loads(pickle.dumps(encoder))  # what a Ray actor receives
    assert len(pickle.dumps(encoder)) < 1000
    np.testing.assert_allclose(clone.embed(speech), encoder.embed(speech), atol=1e-6)
