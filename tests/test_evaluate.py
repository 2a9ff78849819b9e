"""Scores and ASR: l2s's wrappers against the libraries called directly, on real speech."""

from __future__ import annotations

import io
import itertools
import math
import pickle
from functools import partial
from pathlib import Path

import librosa
import numpy as np
import pesq
import pystoi
import pytest
import soundfile as sf
from conftest import FIXTURES
from rich.console import Console

from l2s.config import AUDIO
from l2s.evaluate import metrics
from l2s.evaluate.asr import (
    GRID_WORDS,
    ASRBackend,
    PocketSphinxASR,
    asr_for_corpus,
    is_grid_sentence,
    mode_for_transcripts,
)
from l2s.evaluate.metrics import MetricUnavailable, nan_reasons_of
from l2s.evaluate.split import print_summary, reference_audio, summarize, summary_cells
from l2s.features import FeatureConfig, decode_clip
from l2s.schema import ManifestRow

REAL = FIXTURES
SPEECH = REAL / "python-pesq__speech.wav"
# Harvard sentence list 1, no. 1: what the fixture says (checked by ear and by the ASR below).
SPEECH_TEXT = "The birch canoe slid on the smooth planks."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    if not SPEECH.exists():
        pytest.skip(f"real speech fixture not found at {SPEECH} (shared/ is not beside the repo)")
    wav_S, sample_rate = sf.read(SPEECH, dtype="float64")
    assert sample_rate == AUDIO.sample_rate and wav_S.ndim == 1
    return wav_S


def noisy(clean_S: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise_S = np.random.default_rng(seed).standard_normal(len(clean_S))
    noise_S *= np.sqrt(np.mean(clean_S**2) / np.mean(noise_S**2) / 10 ** (snr_db / 10))
    return clean_S + noise_S


def test_stoi_and_estoi_equal_pystoi(speech: np.ndarray) -> None:
    """Equal to the last bits a summation order can change (BLAS threads differ run to run)."""
    same = partial(pytest.approx, rel=1e-12, abs=0)
    degraded_S = noisy(speech, 5.0)
    assert metrics.stoi(speech, degraded_S) == same(pystoi.stoi(speech, degraded_S, 16000))
    assert metrics.estoi(speech, degraded_S) == same(
        pystoi.stoi(speech, degraded_S, 16000, extended=True)
    )
    # A generated clip that runs longer than the reference is trimmed to the reference.
    longer_S = np.concatenate([degraded_S, np.zeros(800)])
    assert metrics.stoi(speech, longer_S) == same(pystoi.stoi(speech, degraded_S, 16000))


def test_pesq_equals_pesq_package_wide_and_narrow_band(speech: np.ndarray) -> None:
    degraded_S = noisy(speech, 15.0)
    assert metrics.pesq_wb(speech, degraded_S) == pytest.approx(
        pesq.pesq(16000, speech, degraded_S, "wb")
    )
    clean_8k = librosa.resample(speech, orig_sr=16000, target_sr=8000)
    degraded_8k = librosa.resample(degraded_S, orig_sr=16000, target_sr=8000)
    assert metrics.pesq_nb(speech, degraded_S) == pytest.approx(
        pesq.pesq(8000, clean_8k, degraded_8k, "nb")
    )
    # The two bands are different scales: both are reported, named.
    assert metrics.pesq_nb(speech, degraded_S) != pytest.approx(metrics.pesq_wb(speech, degraded_S))


def test_identical_signals_score_perfectly(speech: np.ndarray) -> None:
    row = metrics.score_utterance(speech, speech)
    assert row["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert row["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert row["mcd"] == 0.0
    assert row["pesq_wb"] > 4.6 and row["pesq_nb"] > 4.5
    assert not nan_reasons_of(row["nan_reasons"]).keys() & metrics.SIGNAL_METRICS.keys()


def test_mcd_grows_with_noise_and_ignores_level(speech: np.ndarray) -> None:
    mcds = [metrics.mel_cepstral_distortion(speech, noisy(speech, snr)) for snr in (30, 20, 10, 0)]
    print("MCD (dB) at SNR 30/20/10/0 dB:", [round(m, 2) for m in mcds])
    assert all(a < b for a, b in itertools.pairwise(mcds)) and mcds[0] > 0.5
    # c0 carries the overall level and is excluded: halving the amplitude costs (almost) nothing.
    assert metrics.mel_cepstral_distortion(speech, 0.5 * speech) < 0.05


def test_mel_cepstrum_convention_reads_as_decibels(speech: np.ndarray) -> None:
    """With every coefficient kept, Σ_d≥1 2Δc_d² is the mean-removed mean square of the log-mel
    difference over bands (Parseval for c = DCT-II / 2M): the convention the MCD constant assumes."""
    from l2s.audio import log_mel

    degraded_S = noisy(speech, 10.0)
    diff_MT = log_mel(speech.astype(np.float32)) - log_mel(degraded_S.astype(np.float32))
    order = AUDIO.n_mels - 1
    cep_diff_CT = metrics.mel_cepstrum(speech, order=order) - metrics.mel_cepstrum(
        degraded_S, order=order
    )
    centred_MT = diff_MT - diff_MT.mean(axis=0)
    np.testing.assert_allclose(
        2 * np.sum(cep_diff_CT[1:] ** 2, axis=0),
        np.mean(centred_MT**2, axis=0),
        rtol=1e-4,
        atol=1e-6,
    )


def test_silence_and_short_clips_give_nan_with_reasons(speech: np.ndarray) -> None:
    silent_S = np.zeros_like(speech)
    row = metrics.score_utterance(speech, silent_S)
    assert math.isnan(row["pesq_wb"]) and math.isnan(row["pesq_nb"])
    assert "pesq_wb: generated signal is silent" in row["nan_reasons"]
    assert row["stoi"] == pytest.approx(0.0, abs=1e-6)  # silence carries no intelligibility
    with pytest.raises(MetricUnavailable, match="silent"):
        metrics.pesq_wb(silent_S, speech)

    row = metrics.score_utterance(speech[:3200], speech[:3200])  # 0.2 s
    assert math.isnan(row["pesq_wb"]) and math.isnan(row["stoi"])
    assert "1/4 of a second" in row["nan_reasons"] and "384 ms" in row["nan_reasons"]
    assert row["mcd"] == 0.0


def test_score_row_has_fixed_columns(speech: np.ndarray) -> None:
    embedding = np.ones(256, np.float32) / 16
    row = metrics.score_utterance(
        speech,
        noisy(speech, 20.0),
        reference_embedding=embedding,
        generated_embedding=embedding,
        transcript=SPEECH_TEXT,
        hypothesis="the birch canoe slid on the smooth planks",
    )
    assert tuple(row) == metrics.SCORE_COLUMNS
    assert row["speaker_similarity"] == pytest.approx(1.0)
    assert row["wer"] == 0.0 and row["ref_words"] == 8 and row["duration_s"] == pytest.approx(3.1)
    bare = metrics.score_utterance(speech, speech)
    assert tuple(bare) == metrics.SCORE_COLUMNS and math.isnan(bare["wer"])


def test_transcripts_are_normalised_before_wer() -> None:
    assert metrics.normalize_transcript("Don't stop—now,  please!") == "DONT STOP NOW PLEASE"
    assert metrics.wer("bin blue at f two now", "BIN BLUE AT S TWO NOW.") == pytest.approx(1 / 6)
    assert metrics.cer("ab", "AB!") == 0.0
    # Lists pool errors over all reference words, not a mean of ratios.
    assert metrics.wer(["A B C D", "E"], ["A B C D", "X"]) == pytest.approx(1 / 5)
    with pytest.raises(MetricUnavailable, match="empty reference"):
        metrics.wer("  ...", "hello")


def test_speaker_similarity_is_cosine() -> None:
    assert metrics.speaker_similarity(np.array([1.0, 0.0]), np.array([3.0, 3.0])) == pytest.approx(
        1 / math.sqrt(2)
    )
    with pytest.raises(MetricUnavailable):
        metrics.speaker_similarity(np.zeros(4), np.ones(4))


def test_open_vocabulary_asr_transcribes_real_speech(speech: np.ndarray) -> None:
    asr = asr_for_corpus("lrs3")
    assert isinstance(asr, ASRBackend)
    assert asr.name.startswith("pocketsphinx-5.1") and asr.name.endswith("/en-us/open-lm")
    heard = asr.transcribe(speech, AUDIO.sample_rate)
    error = metrics.wer(SPEECH_TEXT, heard)
    print(f"{asr.name} heard {heard!r}: WER {error:.3f}")
    # Measured: an exact transcript (WER 0). The bound leaves room for other builds of the decoder.
    assert len(heard.split()) >= 6 and error <= 0.25
    # The same speech at 44.1 kHz is resampled to the model's 16 kHz first.
    assert asr.transcribe(librosa.resample(speech, orig_sr=16000, target_sr=44100), 44100) == heard


def test_asr_pickles_without_its_decoder(speech: np.ndarray) -> None:
    asr = PocketSphinxASR("grid")
    asr.setup()
    clone = pickle.loads(pickle.dumps(asr))
    assert clone.name == asr.name == f"{asr.name.split('/')[0]}/en-us/grid-jsgf"
    assert clone.transcribe(np.zeros(160), AUDIO.sample_rate) == ""


GRID_SENTENCES = (
    "bin blue at f two now",
    "lay green by a seven again",
    "place red in q one please",
    "set white with z nine soon",
    "bin red at e four now",
    "place blue by s eight again",
)


def test_grid_grammar_recognises_espeak_sentences() -> None:
    from l2s.synth import espeak

    asr = asr_for_corpus("grid")
    vocabulary = {w.upper() for words in GRID_WORDS.values() for w in words}
    references, heard = [], []
    for voice in (espeak.Voice(), espeak.Voice(variant="f2", pitch=70)):
        for sentence in GRID_SENTENCES:
            utterance = espeak.synthesize(sentence, voice)
            references.append(sentence)
            heard.append(asr.transcribe(utterance.wav_S, utterance.sample_rate))
    error = metrics.wer(references, heard)
    print(f"{asr.name} on espeak GRID sentences: WER {error:.3f}")
    for reference, hypothesis in zip(references, heard, strict=True):
        print(f"  {reference.upper():32s} -> {hypothesis}")
    assert all(set(h.split()) <= vocabulary for h in heard)
    # Measured 0.15 on these 12 (0.08-0.33 per voice on 25 random sentences each).
    assert error <= 0.3


def unexplained_nans(row: dict) -> list[str]:
    reasons = nan_reasons_of(row["nan_reasons"])
    return [k for k in metrics.SCORE_COLUMNS[:-1] if math.isnan(row[k]) and k not in reasons]


def test_every_nan_in_a_score_row_says_why(speech: np.ndarray) -> None:
    bare = metrics.score_utterance(speech, speech)
    assert unexplained_nans(bare) == []
    assert nan_reasons_of(bare["nan_reasons"]) == {
        "speaker_similarity": "no speaker encoder",
        "wer": "no transcript",
        "cer": "no transcript",
        "vsr_wer": "no transcript",
        "vsr_cer": "no transcript",
    }
    embedding_D = np.ones(256, np.float32) / 16
    no_voice = MetricUnavailable("no speaker embedding of the mean_mel speech (silent)")
    row = metrics.score_utterance(
        speech,
        np.zeros_like(speech),
        reference_embedding=embedding_D,
        generated_embedding=no_voice,
        transcript=SPEECH_TEXT,
    )
    reasons = nan_reasons_of(row["nan_reasons"])
    assert unexplained_nans(row) == []
    assert reasons["speaker_similarity"] == str(no_voice)
    assert reasons["wer"] == reasons["cer"] == "no recognizer"
    assert reasons["vsr_wer"] == reasons["vsr_cer"] == "not read from lips"
    assert reasons["pesq_wb"] == "generated signal is silent"


def test_lip_reading_is_scored_for_the_system_that_reads_lips(speech: np.ndarray) -> None:
    """The lips' reading has a WER of its own (VSR), pooled like WER, in l2s's row only; the other
    systems read no lips, and no note calls that missing."""
    reads = {"0": "BIN BLUE AT F TWO NOW", "1": "SET RED"}  # 0 of 6 and 2 of 4 words wrong
    truth = {"0": "BIN BLUE AT F TWO NOW", "1": "SET RED BY G"}
    rows = [
        scored(clip, system, speech, speech, transcript=truth[clip], hypothesis=truth[clip],
               lip_text=reads[clip] if system == "l2s" else None)
        for clip in reads
        for system in ("recording", "l2s")
    ]  # fmt: skip
    summary = summarize(rows)
    lipread = summary.means[("test", "l2s")]
    assert lipread["vsr_wer"].value == pytest.approx(2 / 10)  # pooled, not (0 + 0.5) / 2
    assert lipread["wer"].value == 0.0 and "vsr_wer" not in summary.means[("test", "recording")]
    assert not any("vsr" in note for note in summary.notes)
    header, _ = summary_cells(summary)
    assert header[-2:] == ["vsr_wer", "vsr_cer"]


def scored(clip: str, system: str, reference_S, generated_S, **text) -> dict:
    """A summary row as `score_record` makes it, from real signals."""
    row = metrics.score_utterance(reference_S, generated_S, **text)
    return {"id": clip, "split": "test", "system": system, "asr": None, **row}


def test_summary_compares_systems_on_the_same_clips_and_says_so(speech: np.ndarray) -> None:
    """System "b" is silent on clip 2, so PESQ has no value there: both systems' PESQ is averaged
    over clips 0 and 1 (paired), the cells show n=2, and a note says which system lacked it and
    why. STOI exists everywhere and covers all three clips without a count."""
    rows = []
    for i in range(3):
        rows.append(scored(f"c{i}", "a", speech, noisy(speech, 10.0, seed=i)))
        b_S = noisy(speech, 5.0, seed=10 + i) if i < 2 else np.zeros_like(speech)
        rows.append(scored(f"c{i}", "b", speech, b_S))
    summary = summarize(rows)
    for system in ("a", "b"):
        mine = [r for r in rows if r["system"] == system]
        pesq = summary.means[("test", system)]["pesq_wb"]
        assert pesq.n == 2 and pesq.value == pytest.approx(
            np.mean([r["pesq_wb"] for r in mine[:2]])
        )
        stoi = summary.means[("test", system)]["stoi"]
        assert stoi.n == 3 and stoi.value == pytest.approx(np.mean([r["stoi"] for r in mine]))
    assert any(
        note.startswith("test pesq_wb: means over 2 of 3 clips")
        and "no value for b on 1 clip (generated signal is silent: 1)" in note
        for note in summary.notes
    ), summary.notes
    out = io.StringIO()
    print_summary(rows, Console(file=out, width=250))
    printed = out.getvalue()
    print(printed)
    assert printed.count("(n=2)") == 4  # PESQ-WB and PESQ-NB of both systems
    assert "generated signal is silent" in printed and "ASR: none" in printed
    assert "wer" in printed and "cer" in printed  # the columns are there even when empty


def test_wer_and_cer_are_pooled_over_words_not_averaged_per_clip(speech: np.ndarray) -> None:
    references = ["bin blue at f two now please set white", "lay green"]
    heard = ["bin blue at f two now please set red", "place red"]  # 1 error of 9, 2 of 2
    rows = [
        scored(f"c{i}", "l2s", speech, speech, transcript=ref, hypothesis=hyp)
        for i, (ref, hyp) in enumerate(zip(references, heard, strict=True))
    ]
    assert [r["wer"] for r in rows] == pytest.approx([1 / 9, 1.0])  # per clip in the rows
    means = summarize(rows).means[("test", "l2s")]
    assert means["wer"].value == pytest.approx(3 / 11)  # not (1/9 + 1) / 2
    assert means["cer"].value == pytest.approx(metrics.cer(references, heard))
    assert means["wer"].n == 2


def test_the_recogniser_follows_the_transcripts() -> None:
    grid = ["BIN BLUE AT F TWO NOW", "set white with z nine soon"]
    assert is_grid_sentence(grid[0]) and not is_grid_sentence("BIN BLUE AT W TWO NOW")
    assert mode_for_transcripts(grid) == "grid"
    assert mode_for_transcripts([*grid, "THE DOG WALKS AT HOME"]) == "open"
    assert mode_for_transcripts([*grid, None]) == "open"  # a clip without one: no grammar claim
    assert mode_for_transcripts([None, ""]) is None


def test_a_scored_split_has_the_recordings_row_and_names_its_recogniser(
    synth_features: str, checkpoint: str, ray_local, tmp_path: Path
) -> None:
    from l2s.evaluate.report import write_report
    from l2s.evaluate.split import score_results
    from l2s.pipeline.generate import generate_split

    out = str(tmp_path / "test")
    generate_split(synth_features, "test", checkpoint, out)
    rows = score_results(out)  # the synthetic corpus speaks GRID sentences: the grammar is chosen
    assert {r["system"] for r in rows} == {"recording", "l2s", "gt_mel", "mean_mel"}
    assert {r["asr"] for r in rows} == {PocketSphinxASR("grid").name}
    assert all(unexplained_nans(r) == [] for r in rows)
    recording = [r for r in rows if r["system"] == "recording"]
    assert all(r["stoi"] == pytest.approx(1.0, abs=1e-6) for r in recording)
    pooled = sum(r["wer"] * r["ref_words"] for r in recording) / sum(
        r["ref_words"] for r in recording
    )
    means = summarize(rows).means
    assert means[("test", "recording")]["wer"].value == pytest.approx(pooled)
    assert pooled <= 0.5  # espeak's GRID sentences under the grammar (measured ~0.15)
    printed = io.StringIO()
    print_summary(rows, Console(file=printed, width=250))
    text = printed.getvalue()
    print(text)
    assert "recording" in text and f"ASR: {PocketSphinxASR('grid').name}" in text
    report = write_report([out], rows, tmp_path / "report.html").read_text()
    assert "<th>wer</th>" in report and f"ASR: {PocketSphinxASR('grid').name}" in report


def test_the_reference_is_the_segment_the_features_cover(real_clips: list[Path]) -> None:
    """Scores compare with the recording of the clip's own segment of its video, not the
    video's first seconds."""
    row = ManifestRow(
        id="segment", speaker="s", split="test", video=str(real_clips[1]), corpus="folder",
        start=1.0, duration=2.0,
    )  # fmt: skip
    decoded = decode_clip(row, FeatureConfig())
    record = {"id": row.id, "video": row.video, "start": row.start, "n_frames": 50}
    assert np.array_equal(reference_audio(record), decoded.audio_S)
