"""A speech recognizer that `l2s train-asr` trained, as an offline ASR backend (`transcribe`, `name`:
the `l2s.evaluate.asr.ASRBackend` protocol) beside pocketsphinx.

    asr = Recognizer.load("out/runs/asr")                # a run directory or one checkpoint
    asr.transcribe(wav_S)                                # THE log-mel → CTC → the run's grammar

Its own training corpus's vocabulary and voices are what it knows: it scores speech of that corpus
(WER beside the recordings' own WER from the same recognizer), not arbitrary English.

Letters in shape names: S samples, M mel bands, F mel frames, T encoder frames, V vocabulary.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import librosa
import numpy as np
import torch

from l2s.audio import log_mel
from l2s.config import AUDIO
from l2s.infer.checkpoint import ASR_FILE, read_model, resolve
from l2s.models.asr import AsrConfig, SpeechRecognizer
from l2s.models.grammar import Grammar, read_text


@dataclass
class Recognizer:
    network: SpeechRecognizer
    grammar: Grammar | None
    checkpoint: str
    step: int

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu") -> Recognizer:
        uri = resolve(checkpoint, ASR_FILE)
        saved = read_model(uri, ASR_FILE)
        network = SpeechRecognizer(AsrConfig.from_dict(saved["model_config"]))
        network.load_state_dict(saved["model"])
        grammar = Grammar.from_dict(saved["grammar"]) if saved.get("grammar") else None
        return cls(network.to(device).eval(), grammar, uri, int(saved["progress"]["step"]))

    @property
    def name(self) -> str:
        run = posixpath.basename(posixpath.dirname(self.checkpoint.rstrip("/")))
        reading = "greedy" if self.grammar is None else f"{self.grammar.name}-grammar"
        return f"l2s-asr/{run}@{self.step}/{reading}"

    @torch.inference_mode()
    def log_probs(self, mel_MF: np.ndarray) -> np.ndarray:
        """CTC log-probabilities T×V of one log-mel."""
        device = self.network.mel_mean_M.device
        logits_BTV, _ = self.network(
            torch.from_numpy(np.asarray(mel_MF, np.float32))[None].to(device)
        )
        return logits_BTV[0].float().log_softmax(-1).cpu().numpy()

    def transcribe(self, wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> str:
        """Upper-case words heard in `wav_S` ("" for less than one mel frame of it)."""
        wav_S = np.asarray(wav_S, np.float32)
        if sample_rate != AUDIO.sample_rate:
            wav_S = librosa.resample(wav_S, orig_sr=sample_rate, target_sr=AUDIO.sample_rate)
        if len(wav_S) < AUDIO.n_fft:
            return ""
        return read_text(self.log_probs(log_mel(wav_S)), self.grammar)
