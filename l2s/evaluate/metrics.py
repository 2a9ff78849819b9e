"""Per-utterance scores of generated speech against its reference recording (DESIGN.md, "Scores").

Every signal function takes the reference and the generated waveform (1-D float, S samples) at
`sample_rate` (16 kHz by contract; other rates are resampled), trims both to the shorter length and
returns a float. Generated speech is predicted frame for frame from the video, so sample k of both
signals belongs to the same instant: no time warping is applied anywhere.

A score that is undefined for a pair (a silent reference, a clip too short for PESQ) raises
`MetricUnavailable` with the reason. `score_utterance` turns each such failure into NaN and writes
the reason into its `nan_reasons` column ("pesq_wb: generated signal is silent; wer: no
recognizer"), as it does for a score whose inputs were not given, so one bad clip never stops a
split and no NaN is unexplained; `nan_reasons_of` reads that column back per metric.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence

import jiwer
import librosa
import numpy as np
import pesq as pesq_lib
import pystoi
import scipy.fft

from l2s.audio import AudioError, log_mel
from l2s.config import AUDIO

# 10 / ln 10 · sqrt(2 · Σ Δc²): the MCD constant of Kubichek (1993), used by every TTS paper.
_MCD_SCALE = 10.0 / math.log(10.0)
MCD_ORDER = 24  # c1..c24, the usual 16 kHz order (c0 = overall level, excluded)


class MetricUnavailable(ValueError):
    """A score is undefined for this pair of signals; the message says why."""


def _as_signal(wav_S: np.ndarray, what: str) -> np.ndarray:
    wav_S = np.asarray(wav_S, dtype=np.float64)
    if wav_S.ndim != 1:
        raise ValueError(f"{what} signal must be 1-D (S samples), got shape {wav_S.shape}")
    if not np.all(np.isfinite(wav_S)):
        raise MetricUnavailable(f"{what} signal has non-finite samples")
    return wav_S


def _paired(reference_S: np.ndarray, generated_S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64, trimmed to the shorter one (they start at the same instant)."""
    reference_S = _as_signal(reference_S, "reference")
    generated_S = _as_signal(generated_S, "generated")
    n = min(len(reference_S), len(generated_S))
    if n == 0:
        raise MetricUnavailable("empty signal")
    return reference_S[:n], generated_S[:n]


def _resampled(wav_S: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    if sample_rate == target_rate:
        return wav_S
    return librosa.resample(wav_S, orig_sr=sample_rate, target_sr=target_rate)


def _require_sound(wav_S: np.ndarray, what: str) -> None:
    if not np.any(wav_S):
        raise MetricUnavailable(f"{what} signal is silent")


def _stoi(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int, extended: bool
) -> float:
    reference_S, generated_S = _paired(reference_S, generated_S)
    # pystoi drops frames more than 40 dB below the reference's loudest, so a silent reference
    # leaves nothing to score (it would return a meaningless 0).
    _require_sound(reference_S, "reference")
    with warnings.catch_warnings():
        # pystoi warns and returns 1e-5 when fewer than 30 frames (~384 ms of speech) remain;
        # that number would silently drag a split's mean down, so it becomes a reason instead.
        warnings.filterwarnings("error", message="Not enough STFT frames", category=RuntimeWarning)
        try:
            value = pystoi.stoi(reference_S, generated_S, sample_rate, extended=extended)
        except RuntimeWarning as e:
            raise MetricUnavailable(
                "under ~384 ms of speech left after pystoi's silence removal"
            ) from e
    return float(value)


def stoi(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int = AUDIO.sample_rate
) -> float:
    """Short-time objective intelligibility (Taal et al. 2011) with pystoi, in [0, 1]."""
    return _stoi(reference_S, generated_S, sample_rate, extended=False)


def estoi(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int = AUDIO.sample_rate
) -> float:
    """Extended STOI (Jensen & Taal 2016) with pystoi; can dip slightly below 0."""
    return _stoi(reference_S, generated_S, sample_rate, extended=True)


def _pesq(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int, rate: int, mode: str
) -> float:
    reference_S, generated_S = _paired(reference_S, generated_S)
    # Exact silence makes the C code divide by zero (a ValueError about NaN), so say it plainly.
    _require_sound(reference_S, "reference")
    _require_sound(generated_S, "generated")
    reference_S = _resampled(reference_S, sample_rate, rate)
    generated_S = _resampled(generated_S, sample_rate, rate)
    try:
        return float(pesq_lib.pesq(rate, reference_S, generated_S, mode))
    except pesq_lib.PesqError as e:
        # NoUtterancesError, BufferTooShortError (< 0.25 s): the library's message is the reason.
        message = e.args[0] if e.args else type(e).__name__
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        raise MetricUnavailable(str(message)) from e
    except ValueError as e:
        raise MetricUnavailable(f"PESQ failed on this pair ({e})") from e


def pesq_wb(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int = AUDIO.sample_rate
) -> float:
    """Wide-band PESQ (ITU-T P.862.2) at 16 kHz, MOS-LQO in about [1.04, 4.64]."""
    return _pesq(reference_S, generated_S, sample_rate, 16000, "wb")


def pesq_nb(
    reference_S: np.ndarray, generated_S: np.ndarray, sample_rate: int = AUDIO.sample_rate
) -> float:
    """Narrow-band PESQ (ITU-T P.862) on both signals resampled to 8 kHz, MOS-LQO in about [1, 4.5]."""
    return _pesq(reference_S, generated_S, sample_rate, 8000, "nb")


def mel_cepstrum(
    wav_S: np.ndarray, sample_rate: int = AUDIO.sample_rate, order: int = MCD_ORDER
) -> np.ndarray:
    """Mel-cepstrum c0..c`order` per frame (shape (order + 1) × T) from THE log-mel.

    `log_mel` gives the natural log of the mel-band magnitudes, x_m for M bands. The cepstrum is
    the cosine series x_m = c0 + 2 Σ_d c_d cos(π d (m + ½) / M), i.e. c = DCT-II(x) / 2M, the same
    convention as a real cepstrum of the log amplitude on a mel-warped axis; that is what makes the
    10 / ln 10 · sqrt(2 Σ Δc²) formula read as decibels.
    """
    mel_MT = log_mel(
        _resampled(np.asarray(wav_S, dtype=np.float32), sample_rate, AUDIO.sample_rate)
    )
    n_mels = mel_MT.shape[0]
    if not 1 <= order < n_mels:
        raise ValueError(f"cepstral order {order} must lie in 1..{n_mels - 1}")
    return scipy.fft.dct(mel_MT.astype(np.float64), type=2, axis=0)[: order + 1] / (2 * n_mels)


def mel_cepstral_distortion(
    reference_S: np.ndarray,
    generated_S: np.ndarray,
    sample_rate: int = AUDIO.sample_rate,
    order: int = MCD_ORDER,
) -> float:
    """Mel-cepstral distortion in dB: mean over frames of 10/ln10 · sqrt(2 Σ_{d=1..order} Δc_d²).

    c0 (overall level) is excluded, so a pure gain change scores ~0. Frames are aligned by
    construction (no DTW): both signals are trimmed to equal length and frame t of one is compared
    with frame t of the other, over all frames, silent ones included. Built on l2s's 80-band log-mel,
    so values are comparable across l2s runs, not with SPTK / WORLD mcep-based MCD in papers.
    """
    reference_S, generated_S = _paired(reference_S, generated_S)
    try:
        reference_CT = mel_cepstrum(reference_S, sample_rate, order)
        generated_CT = mel_cepstrum(generated_S, sample_rate, order)
    except AudioError as e:  # shorter than one mel hop
        raise MetricUnavailable(str(e)) from e
    diff_CT = reference_CT[1:] - generated_CT[1:]
    return float(np.mean(_MCD_SCALE * np.sqrt(2.0 * np.sum(diff_CT**2, axis=0))))


def speaker_similarity(emb_a: np.ndarray, emb_b: np.ndarray) -> float:
    """Cosine similarity of two speaker embeddings (D each), in [-1, 1]."""
    a = np.asarray(emb_a, dtype=np.float64).reshape(-1)
    b = np.asarray(emb_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"embeddings differ in size: {a.shape[0]} vs {b.shape[0]}")
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if not np.isfinite(norms) or norms == 0:
        raise MetricUnavailable("a speaker embedding is zero or non-finite")
    return float(np.dot(a, b) / norms)


def normalize_transcript(text: str) -> str:
    """Upper-case words as LRS3 writes them: apostrophes dropped (DON'T → DONT), other
    punctuation and symbols become word breaks, runs of whitespace collapse to one space."""
    text = unicodedata.normalize("NFKC", text).upper().replace("'", "").replace("\u2019", "")
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def _text_pairs(
    reference: str | Sequence[str], hypothesis: str | Sequence[str]
) -> tuple[list[str], list[str]]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_transcript(r) for r in refs]
    if not any(refs):
        raise MetricUnavailable("empty reference transcript")
    return refs, [normalize_transcript(h) for h in hyps]


def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Word error rate after `normalize_transcript`; lists are pooled (Σ errors / Σ reference words)."""
    return float(jiwer.wer(*_text_pairs(reference, hypothesis)))


def cer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Character error rate (spaces count as characters) after `normalize_transcript`; lists pooled."""
    return float(jiwer.cer(*_text_pairs(reference, hypothesis)))


SIGNAL_METRICS = {
    "stoi": stoi,
    "estoi": estoi,
    "pesq_wb": pesq_wb,
    "pesq_nb": pesq_nb,
    "mcd": mel_cepstral_distortion,
}
# Every row from `score_utterance` has exactly these keys, so rows stack into one Arrow table.
SCORE_COLUMNS = (
    "duration_s",
    *SIGNAL_METRICS,
    "speaker_similarity",
    "wer",
    "cer",
    "ref_words",
    "ref_chars",
    "nan_reasons",
)


# One speaker embedding (D), or why none could be made for that signal.
Embedding = np.ndarray | MetricUnavailable


def _similarity(reference: Embedding | None, generated: Embedding | None) -> float:
    if reference is None or generated is None:
        raise MetricUnavailable("no speaker encoder")
    for embedding in (reference, generated):
        if isinstance(embedding, MetricUnavailable):
            raise embedding
    return speaker_similarity(reference, generated)


def _text_error(
    rate: Callable[[str, str], float], transcript: str | None, hypothesis: str | None
) -> float:
    if transcript is None:
        raise MetricUnavailable("no transcript")
    if hypothesis is None:
        raise MetricUnavailable("no recognizer")
    return rate(transcript, hypothesis)


def score_utterance(
    reference_S: np.ndarray,
    generated_S: np.ndarray,
    sample_rate: int = AUDIO.sample_rate,
    *,
    reference_embedding: Embedding | None = None,
    generated_embedding: Embedding | None = None,
    transcript: str | None = None,
    hypothesis: str | None = None,
) -> dict[str, float | int | str]:
    """All scores of one utterance as one flat row with the keys of `SCORE_COLUMNS`.

    Signal scores are always computed. `speaker_similarity` needs both embeddings (an embedding
    given as `MetricUnavailable` is its reason), `wer` / `cer` need the transcript and the ASR
    hypothesis. Every NaN has its reason in `nan_reasons` ("pesq_wb: generated signal is silent;
    wer: no recognizer; …"; empty when nothing is NaN). `ref_words` / `ref_chars` let a report
    pool WER / CER over a split (Σ wer·ref_words / Σ ref_words) instead of averaging ratios.
    """
    row: dict[str, float | int | str] = {name: math.nan for name in SCORE_COLUMNS}
    row["ref_words"] = row["ref_chars"] = 0
    reasons = []

    def attempt(name: str, compute: Callable[[], float]) -> None:
        try:
            row[name] = compute()
        except MetricUnavailable as e:
            reasons.append(f"{name}: {e}")

    row["duration_s"] = min(len(reference_S), len(generated_S)) / sample_rate
    for name, metric in SIGNAL_METRICS.items():
        attempt(name, lambda metric=metric: metric(reference_S, generated_S, sample_rate))
    attempt("speaker_similarity", lambda: _similarity(reference_embedding, generated_embedding))
    if transcript is not None and hypothesis is not None:
        normalized = normalize_transcript(transcript)
        row["ref_words"], row["ref_chars"] = len(normalized.split()), len(normalized)
    attempt("wer", lambda: _text_error(wer, transcript, hypothesis))
    attempt("cer", lambda: _text_error(cer, transcript, hypothesis))
    row["nan_reasons"] = "; ".join(reasons)
    return row


_REASON_START = re.compile(rf"; (?=(?:{'|'.join(SCORE_COLUMNS)}): )")


def nan_reasons_of(nan_reasons: str) -> dict[str, str]:
    """A `nan_reasons` cell read back: metric → why it is NaN."""
    if not nan_reasons:
        return {}
    return dict(part.split(": ", 1) for part in _REASON_START.split(nan_reasons))
