"""Phonemes → mouth shape over time: a viseme map plus coarticulation.

Each espeak-ng phoneme maps to a viseme: a target for four mouth parameters
(open: lip aperture, width: spread vs narrow, round: protrusion, tuck: lower lip under the upper
teeth for f/v). Targets are blended over time with Cohen & Massaro's (1993) dominance functions:
each segment pulls the mouth towards its target with a strength that decays away from the
segment's centre, more slowly before it (anticipation: lips round for /u/ during the preceding
consonant) than after. Bilabials dominate lip aperture, so /p b m/ always close the lips; and
/p b m/ share one viseme, as do /f v/, /t d n s z/…: the same ambiguity as in real speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARAMETERS = ("open", "width", "round", "tuck")


@dataclass(frozen=True)
class Viseme:
    name: str
    open: float
    width: float
    round: float
    tuck: float = 0.0
    # How strongly this viseme controls each parameter (consonants like /h k/ barely do).
    strength: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


VISEMES = {
    v.name: v
    for v in (
        Viseme("rest", 0.0, 0.5, 0.0, strength=(0.6, 0.6, 0.6, 1.0)),
        Viseme("bilabial", 0.0, 0.5, 0.1, strength=(25.0, 0.6, 0.5, 1.0)),
        Viseme("labiodental", 0.12, 0.55, 0.0, tuck=1.0, strength=(4.0, 0.7, 0.7, 6.0)),
        Viseme("dental", 0.25, 0.6, 0.0, strength=(1.5, 0.6, 0.5, 1.0)),
        Viseme("alveolar", 0.18, 0.6, 0.0, strength=(1.0, 0.4, 0.3, 1.0)),
        Viseme("postalveolar", 0.22, 0.3, 0.7, strength=(1.2, 1.5, 2.0, 1.0)),
        Viseme("velar", 0.3, 0.5, 0.0, strength=(0.5, 0.2, 0.2, 1.0)),
        Viseme("r", 0.2, 0.35, 0.55, strength=(1.0, 1.0, 1.5, 1.0)),
        Viseme("w", 0.08, 0.1, 1.0, strength=(2.0, 2.0, 3.0, 1.0)),
        Viseme("j", 0.15, 0.85, 0.0, strength=(1.0, 1.0, 1.0, 1.0)),
        Viseme("open", 1.0, 0.6, 0.0, strength=(1.5, 1.0, 1.0, 1.0)),
        Viseme("mid_front", 0.6, 0.8, 0.0, strength=(1.2, 1.2, 1.0, 1.0)),
        Viseme("close_front", 0.25, 1.0, 0.0, strength=(1.2, 1.5, 1.0, 1.0)),
        Viseme("central", 0.45, 0.55, 0.0, strength=(1.0, 0.8, 0.8, 1.0)),
        Viseme("mid_back", 0.6, 0.3, 0.7, strength=(1.2, 1.5, 2.0, 1.0)),
        Viseme("close_back", 0.2, 0.15, 0.95, strength=(1.2, 2.0, 3.0, 1.0)),
    )
}

# espeak-ng's English phoneme mnemonics (stress marks stripped) → visemes; diphthongs are two
# visemes in sequence.
PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("p", "b", "m", "m-"), ("bilabial",)),
    **dict.fromkeys(("f", "v"), ("labiodental",)),
    **dict.fromkeys(("T", "D"), ("dental",)),
    **dict.fromkeys(("t", "d", "n", "n-", "s", "z", "l", "l/", "t#", "d#", "?"), ("alveolar",)),
    **dict.fromkeys(("S", "Z", "tS", "dZ"), ("postalveolar",)),
    **dict.fromkeys(("k", "g", "N", "h", "x"), ("velar",)),
    **dict.fromkeys(("r", "r-", "3", "3:", "@r"), ("r",)),
    "w": ("w",),
    "j": ("j",),
    **dict.fromkeys(("a", "a#", "A:", "A@", "aa", "A"), ("open",)),
    **dict.fromkeys(("E", "e", "e@", "&"), ("mid_front",)),
    **dict.fromkeys(("i", "i:", "I", "I#", "I2", "i@", "i@3"), ("close_front",)),
    **dict.fromkeys(("@", "@-", "V", "@2", "@5", "@L"), ("central",)),
    **dict.fromkeys(("O:", "O", "0", "O@", "o@"), ("mid_back",)),
    **dict.fromkeys(("u:", "U", "U@", "u"), ("close_back",)),
    "aI": ("open", "close_front"),
    "aU": ("open", "close_back"),
    "eI": ("mid_front", "close_front"),
    "oU": ("mid_back", "close_back"),
    "OI": ("mid_back", "close_front"),
    "aI@": ("open", "close_front", "central"),
    "aU@": ("open", "close_back", "central"),
    **dict.fromkeys(("_", "_:", "_!", "_^_"), ("rest",)),
}


def viseme_names(phoneme: str) -> tuple[str, ...]:
    """Visemes of an espeak-ng phoneme mnemonic; unknown phonemes fall back by their first letter."""
    base = phoneme.replace("'", "").replace(",", "").strip()
    if base in PHONEME_VISEMES:
        return PHONEME_VISEMES[base]
    for length in range(len(base) - 1, 0, -1):
        if base[:length] in PHONEME_VISEMES:
            return PHONEME_VISEMES[base[:length]]
    return ("central",)


def segments(phonemes: list[tuple[str, float, float]]) -> list[tuple[Viseme, float, float]]:
    """Split phonemes into viseme segments (diphthongs into their parts)."""
    out = []
    for label, start, end in phonemes:
        names = viseme_names(label)
        step = (end - start) / len(names)
        out.extend(
            (VISEMES[n], start + i * step, start + (i + 1) * step) for i, n in enumerate(names)
        )
    return out


def mouth_track(
    phonemes: list[tuple[str, float, float]],
    times_T: np.ndarray,
    anticipation: float = 0.07,
    carryover: float = 0.045,
) -> np.ndarray:
    """Mouth parameters at `times_T` (s) as params_TP (P = open, width, round, tuck).

    Dominance of segment i at time t: strength_i · exp(-|t - c_i| / τ), with τ = `anticipation`
    seconds before the centre c_i and `carryover` after; the mouth is the dominance-weighted mean
    of the targets, with a weak rest target so long pauses relax the lips.
    """
    segs = [(VISEMES["rest"], times_T.min() - 1.0, times_T.min() - 0.5), *segments(phonemes)]
    segs.append((VISEMES["rest"], times_T.max() + 0.5, times_T.max() + 1.0))
    targets_SP = np.array([[v.open, v.width, v.round, v.tuck] for v, _, _ in segs])
    strength_SP = np.array([v.strength for v, _, _ in segs])
    centres_S = np.array([(a + b) / 2 for _, a, b in segs])
    half_S = np.array([(b - a) / 2 for _, a, b in segs])
    # Distance from the segment's edges (0 inside it): a long vowel holds its target throughout.
    offset_ST = times_T[None, :] - centres_S[:, None]
    outside_ST = np.maximum(np.abs(offset_ST) - half_S[:, None], 0.0)
    tau_ST = np.where(offset_ST < 0, anticipation, carryover)
    dominance_ST = np.exp(-outside_ST / tau_ST)
    weights_STP = dominance_ST[:, :, None] * strength_SP[:, None, :] + 1e-9
    return (weights_STP * targets_SP[:, None, :]).sum(0) / weights_STP.sum(0)
