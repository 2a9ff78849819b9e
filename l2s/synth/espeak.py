"""Speech with phoneme and word timings from espeak-ng (the library ships in the espeakng-loader wheel).

`synthesize` runs l2s.synth.espeak_engine in a fresh child process per utterance (why: see
that module) and turns its events into a timeline of phonemes and words.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from l2s.synth.espeak_engine import EVENT_PHONEME, EVENT_WORD

PAUSES = ("_", "_:", "_!")


@dataclass(frozen=True, kw_only=True)
class Voice:
    """An espeak-ng voice: language + variant (m1..m8, f1..f5), rate (words/min), pitch, range (0-100)."""

    name: str = "en-us"
    variant: str = "m1"
    rate: int = 150
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ValueError(f"espeak rate {self.rate} outside 80..450 words per minute")
        if not (0 <= self.pitch <= 100 and 0 <= self.pitch_range <= 100):
            raise ValueError("espeak pitch and range must lie in 0..100")


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """Synthesized speech: wav_S at `sample_rate`, phonemes and words as (label, start s, end s)."""

    wav_S: np.ndarray
    sample_rate: int
    phonemes: list[tuple[str, float, float]]
    words: list[tuple[str, float, float]]


def synthesize(text: str, voice: Voice) -> Utterance:
    """Speak `text` with `voice`: the same inputs always give the same samples."""
    request = {
        "text": text,
        "voice": f"{voice.name}+{voice.variant}",
        "rate": voice.rate,
        "pitch": voice.pitch,
        "range": voice.pitch_range,
    }
    done = subprocess.run(
        [sys.executable, "-m", "l2s.synth.espeak_engine"],
        input=json.dumps(request).encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"espeak-ng failed on {text!r}: {done.stderr.decode(errors='replace')[-500:]}"
        )
    header, _, pcm = done.stdout.partition(b"\n")
    meta = json.loads(header)
    wav_S = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    return _timeline(text, wav_S, meta["sample_rate"], meta["events"])


def _timeline(text: str, wav_S: np.ndarray, sample_rate: int, events: list) -> Utterance:
    """Events carry start positions only: a phoneme ends where the next one starts."""
    end_s = len(wav_S) / sample_rate
    phoneme_starts = [
        (label.strip(), ms / 1000) for kind, ms, label in events if kind == EVENT_PHONEME
    ]
    phonemes = []
    for i, (label, t) in enumerate(phoneme_starts):
        t_next = phoneme_starts[i + 1][1] if i + 1 < len(phoneme_starts) else end_s
        if label:
            phonemes.append((label, t, max(t, t_next)))
    encoded = text.encode()
    word_starts = [(ms / 1000, label) for kind, ms, label in events if kind == EVENT_WORD]
    words = []
    for i, (t, span) in enumerate(word_starts):
        position, length = (int(x) for x in span.split(":"))
        # text_position is 1-based, in bytes of the UTF-8 input.
        word = encoded[position - 1 : position - 1 + length].decode(errors="replace")
        # A word ends at its last phoneme, not at the next word's start (pauses lie between).
        t_next = word_starts[i + 1][0] if i + 1 < len(word_starts) else end_s
        inside = [p for p in phonemes if t <= p[1] < t_next and p[0] not in PAUSES]
        words.append((word, t, inside[-1][2] if inside else t_next))
    return Utterance(wav_S=wav_S, sample_rate=sample_rate, phonemes=phonemes, words=words)
