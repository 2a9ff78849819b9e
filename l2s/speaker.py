"""Speaker embeddings: one L2-normalised vector per utterance (DESIGN.md, "speaker embedding").

The encoder is Resemblyzer's GE2E network (Wan et al. 2018; 3-layer LSTM, 256-d output) with the
weights that ship inside the `resemblyzer` wheel, so nothing is downloaded. It reads its own
40-band mel at 25 ms / 10 ms (part of the pretrained model's input contract, computed inside
resemblyzer); l2s's 80-band log-mel is not involved. The encoder's name goes into each feature
dataset's metadata, because embeddings from different encoders are not comparable.

Install (resemblyzer declares `webrtcvad`, whose module fails to import on current setuptools, and
the obsolete `typing` backport; `webrtcvad-wheels` provides the same `webrtcvad` module):
    pip install webrtcvad-wheels==2.0.14.post1
    pip install --no-deps resemblyzer==0.1.4
Shapes: S samples, D embedding size (256).
"""

from __future__ import annotations

import importlib.metadata
import threading
import warnings

import numpy as np

from l2s.config import AUDIO

EMBEDDING_DIM = 256
_INSTALL = "pip install webrtcvad-wheels==2.0.14.post1 && pip install --no-deps resemblyzer==0.1.4"


class SpeakerError(ValueError):
    """No embedding can be made from this audio (silent, no speech found); the message says why."""


class SpeakerEncoder:
    """Resemblyzer's GE2E encoder: `embed(wav_S) -> float32[256]`, unit L2 norm.

    Construction is cheap and the object pickles without its network, so a Ray actor receives it
    and loads the weights (17 MB, a fraction of a second) in `setup()` or on first use, once per process.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model = None
        self._preprocess = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """What the dataset metadata records, e.g. "resemblyzer-0.1.4/ge2e-256"."""
        try:
            version = importlib.metadata.version("resemblyzer")
        except importlib.metadata.PackageNotFoundError:
            version = "missing"
        return f"resemblyzer-{version}/ge2e-{EMBEDDING_DIM}"

    def metadata(self) -> dict[str, str | int]:
        """The encoder's description for a feature dataset's metadata file."""
        return {"name": self.name, "dim": EMBEDDING_DIM, "sample_rate": AUDIO.sample_rate}

    def setup(self) -> None:
        """Load the pretrained network; later calls do nothing."""
        with self._lock:
            if self._model is not None:
                return
            try:
                with warnings.catch_warnings():
                    # resemblyzer imports binary_dilation from scipy.ndimage.morphology, deprecated
                    # since SciPy 1.8 and gone in SciPy 2.0: resemblyzer 0.1.4 needs SciPy < 2.
                    warnings.filterwarnings(
                        "ignore", message=".*scipy.ndimage.morphology", category=DeprecationWarning
                    )
                    from resemblyzer import VoiceEncoder, preprocess_wav
            except ImportError as e:
                raise ImportError(f"the speaker encoder needs resemblyzer: {_INSTALL} ({e})") from e
            self._preprocess = preprocess_wav
            self._model = VoiceEncoder(device=self.device, verbose=False)

    def embed(self, wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> np.ndarray:
        """One utterance → its embedding, float32 of shape (256,), L2 norm 1.

        resemblyzer raises the level of quiet speech to -30 dBFS, trims pauses longer than ~0.2 s
        with WebRTC VAD, and averages the embeddings of 1.6 s windows (the utterance is zero-padded
        when shorter). Raises SpeakerError when the audio is silent or VAD finds no speech, since a
        vector made from silence would look like a real speaker.
        """
        wav_S = np.asarray(wav_S, dtype=np.float32)
        if wav_S.ndim != 1:
            raise ValueError(
                f"speaker encoder expects a mono 1-D waveform, got shape {wav_S.shape}"
            )
        if not np.all(np.isfinite(wav_S)):
            raise SpeakerError("waveform has non-finite samples")
        if not np.any(wav_S):
            raise SpeakerError("waveform is silent")
        self.setup()
        # resemblyzer's VAD casts to int16 without clipping: louder samples would wrap around.
        speech_S = self._preprocess(np.clip(wav_S, -1.0, 1.0), source_sr=sample_rate)
        if len(speech_S) == 0:
            raise SpeakerError("voice activity detection found no speech")
        with self._lock:
            embedding_D = self._model.embed_utterance(speech_S)
        embedding_D = np.asarray(embedding_D, dtype=np.float32)
        return embedding_D / np.linalg.norm(embedding_D)

    def __getstate__(self) -> dict:
        return {"device": self.device}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["device"])
