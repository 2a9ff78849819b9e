"""Offline speech recognition for WER / CER: the ASR backend is named in every report.

`PocketSphinxASR` uses the en-US acoustic model, dictionary and trigram LM that ship inside the
pocketsphinx 5.1 wheel (no download). Two modes:
  - "grid": a JSGF grammar of GRID's sentence pattern (command colour preposition letter digit
    adverb). Constraining the search this way is the standard way to score a small-vocabulary corpus.
  - "open": the shipped trigram LM, for LRS2 / LRS3 / free speech. Good on clear real speech; poor
    on robotic voices (espeak), so use it on real recordings.
Shapes: S samples.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Iterable
from typing import Literal, Protocol, runtime_checkable

import librosa
import numpy as np
import pocketsphinx

from l2s.config import AUDIO

GRID_WORDS = {
    "command": ("bin", "lay", "place", "set"),
    "colour": ("blue", "green", "red", "white"),
    "preposition": ("at", "by", "in", "with"),
    # GRID has no "w": it is the only letter name of more than one syllable.
    "letter": tuple("abcdefghijklmnopqrstuvxyz"),
    "digit": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "adverb": ("again", "now", "please", "soon"),
}
GRID_JSGF = "\n".join(
    [
        "#JSGF V1.0;",
        "grammar grid;",
        "public <sentence> = <command> <colour> <preposition> <letter> <digit> <adverb>;",
        *(f"<{slot}> = {' | '.join(words)};" for slot, words in GRID_WORDS.items()),
        "",
    ]
)
# How each GRID letter is spoken (its name), in the CMU phone set of the shipped dictionary. The
# dictionary's first entry for "a" is the article (AH); the letter needs its alternative (EY).
_LETTER_NAMES = {
    "a": "EY", "b": "B IY", "c": "S IY", "d": "D IY", "e": "IY", "f": "EH F", "g": "JH IY",
    "h": "EY CH", "i": "AY", "j": "JH EY", "k": "K EY", "l": "EH L", "m": "EH M", "n": "EH N",
    "o": "OW", "p": "P IY", "q": "K Y UW", "r": "AA R", "s": "EH S", "t": "T IY", "u": "Y UW",
    "v": "V IY", "x": "EH K S", "y": "W AY", "z": "Z IY",
}  # fmt: skip
_SAMPLE_RATE = 16000  # the shipped acoustic model's rate
Mode = Literal["open", "grid"]


class ASRError(RuntimeError):
    """The ASR model cannot be used as configured (missing words, unknown mode)."""


@runtime_checkable
class ASRBackend(Protocol):
    """Anything that turns speech into an upper-case transcript and names itself for the report."""

    @property
    def name(self) -> str: ...

    def transcribe(self, wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> str: ...


def _pronunciations(decoder: pocketsphinx.Decoder, word: str) -> list[str]:
    """All dictionary pronunciations of `word`: alternatives are stored as word(2), word(3), …"""
    found = []
    for key in [word, *(f"{word}({i})" for i in range(2, 10))]:
        phones = decoder.lookup_word(key)
        if phones is None:
            break
        found.append(phones)
    return found


def check_grid_vocabulary(decoder: pocketsphinx.Decoder) -> None:
    """Raise ASRError unless every GRID word is in the decoder's dictionary and every letter can
    be recognised by its spoken name; a missing word would make the grammar fail to load or a
    letter be unrecognisable, silently inflating WER."""
    missing = [w for words in GRID_WORDS.values() for w in words if not _pronunciations(decoder, w)]
    unnamed = [
        f"{letter} (has {_pronunciations(decoder, letter)}, needs {phones!r})"
        for letter, phones in _LETTER_NAMES.items()
        if phones not in _pronunciations(decoder, letter)
    ]
    if missing or unnamed:
        raise ASRError(f"dictionary lacks GRID words {missing} / letter names {unnamed}")


def to_pcm16(wav_S: np.ndarray, sample_rate: int) -> bytes:
    """Float waveform at any rate → 16 kHz mono int16 bytes, what the acoustic model expects."""
    wav_S = np.asarray(wav_S, dtype=np.float32)
    if wav_S.ndim != 1:
        raise ValueError(f"ASR expects a mono 1-D waveform, got shape {wav_S.shape}")
    if sample_rate != _SAMPLE_RATE:
        wav_S = librosa.resample(wav_S, orig_sr=sample_rate, target_sr=_SAMPLE_RATE)
    return np.round(np.clip(wav_S, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


class PocketSphinxASR:
    """pocketsphinx with its shipped en-US model, in "open" (trigram LM) or "grid" (JSGF) mode.

    Construction is cheap and the object pickles without its decoder, so it can be handed to a Ray
    actor; the decoder (about 0.4 s to load) is built in `setup()` or on first use, once per
    process. `transcribe` is serialised by a lock: one decoder holds one utterance at a time.
    """

    def __init__(self, mode: Mode = "open") -> None:
        if mode not in ("open", "grid"):
            raise ASRError(f"unknown pocketsphinx mode {mode!r} (expected 'open' or 'grid')")
        self.mode = mode
        self._decoder: pocketsphinx.Decoder | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        version = importlib.metadata.version("pocketsphinx")
        return f"pocketsphinx-{version}/en-us/{'grid-jsgf' if self.mode == 'grid' else 'open-lm'}"

    def setup(self) -> None:
        """Load the decoder (and the GRID grammar in grid mode); later calls do nothing."""
        with self._lock:
            if self._decoder is None:
                self._decoder = self._load()

    def _load(self) -> pocketsphinx.Decoder:
        # The default config is the shipped model (en-us HMM, cmudict, trigram LM). The LM stays
        # loaded even in grid mode: `Decoder(lm=None)` and `Decoder(jsgf=...)` both segfault in
        # 5.1.1, so the grammar is added as a named search and activated instead.
        decoder = pocketsphinx.Decoder(loglevel="FATAL")
        if self.mode == "grid":
            check_grid_vocabulary(decoder)
            decoder.add_jsgf_string("grid", GRID_JSGF)
            decoder.activate_search("grid")
        return decoder

    def transcribe(self, wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate) -> str:
        """Upper-case words heard in `wav_S` ("" when nothing was recognised)."""
        pcm = to_pcm16(wav_S, sample_rate)
        self.setup()
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.upper() if hypothesis is not None else ""

    def __getstate__(self) -> dict:
        return {"mode": self.mode}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["mode"])


def asr_for_corpus(corpus: str) -> PocketSphinxASR:
    """The ASR a corpus is scored with: GRID's grammar for GRID, the open LM for everything else."""
    return PocketSphinxASR("grid" if corpus.lower() == "grid" else "open")


def is_grid_sentence(text: str) -> bool:
    """Whether `text` (any case) is a sentence of the GRID grammar, one word from each slot."""
    words = text.lower().split()
    return len(words) == len(GRID_WORDS) and all(
        word in slot for word, slot in zip(words, GRID_WORDS.values(), strict=True)
    )


def mode_for_transcripts(transcripts: Iterable[str | None]) -> Mode | None:
    """The pocketsphinx mode that fits a split's transcripts: "grid" when every clip has one and
    each is a GRID sentence (GRID, and the synthetic corpus's default `--vocab grid`), else "open";
    None when no clip has a transcript (nothing to score WER against)."""
    texts = list(transcripts)
    if not any(texts):
        return None
    return "grid" if all(t and is_grid_sentence(t) for t in texts) else "open"
