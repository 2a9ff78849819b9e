"""Generation, scoring and `l2s speak` (issue 5) on real media: the synthetic corpus's features
and the real fixture clips, with a checkpoint written the way training writes one.

The checkpoint is untrained (its content is not judged here; test_train judges learning): what
is tested is the path — speaker rule, lengths, the baselines' scores, chunking, errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from l2s.config import AUDIO, VIDEO
from l2s.evaluate.report import write_report
from l2s.evaluate.split import SCORES_FILE, score_results, summarize
from l2s.generate import GENERATED, read_generated, split_speakers
from l2s.pipeline import shards
from l2s.pipeline.generate import generate_split
from l2s.speak import SpeakError, speak
from l2s.video import read_frames, write_video

SAMPLES_PER_FRAME = AUDIO.sample_rate // VIDEO.fps


def test_no_clip_is_conditioned_on_its_own_audio(synth_features: str, checkpoint: str) -> None:
    from l2s.generate import Generator

    table = Generator.load(checkpoint).speakers
    for split in ("test", "test_unseen_speakers"):
        rows = shards.read_features(synth_features, split=split)
        chosen = split_speakers([vars(r) for r in rows], table)
        for row in rows:
            embedding_D, source = chosen[row.id]
            others = [r for r in rows if r.speaker == row.speaker and r.id != row.id]
            if split == "test_unseen_speakers" and not others:
                assert embedding_D is None and source == "none"  # the model's "no speaker" input
                continue
            assert not np.allclose(embedding_D, np.asarray(row.speaker_embedding, np.float32))
            if split == "test":
                assert source == "train mean"
                np.testing.assert_array_equal(embedding_D, table.embedding(row.speaker))
            else:  # unseen: the mean of the speaker's other utterances, never this one's
                assert source == f"other utterances ({len(others)})"
                expected_D = np.mean([r.speaker_embedding for r in others], axis=0)
                np.testing.assert_allclose(embedding_D, expected_D, rtol=1e-5)


def test_a_padded_batch_gives_each_clip_its_own_mel(synth_features: str, checkpoint: str) -> None:
    from l2s.generate import Generator

    gen = Generator.load(checkpoint)
    rows = shards.read_features(synth_features, split="test")
    assert len({r.n_frames for r in rows}) > 1, "clips of different lengths, so padding happens"
    voices = [np.asarray(r.speaker_embedding, np.float32) for r in rows[:-1]] + [None]
    batched = gen.mels([r.roi_THW() for r in rows], voices)
    for row, voice_D, mel_MF in zip(rows, voices, batched, strict=True):
        single_MF = gen.mel(row.roi_THW(), voice_D)
        assert mel_MF.shape == single_MF.shape == (AUDIO.n_mels, 4 * row.n_frames)
        np.testing.assert_allclose(mel_MF, single_MF, atol=1e-4)


def test_generate_and_score_a_split_with_both_baselines(
    synth_features: str, checkpoint: str, ray_local, tmp_path: Path
) -> None:
    out = tmp_path / "test"
    summary = generate_split(synth_features, "test", checkpoint, str(out), batch_size=3)
    records = read_generated(str(out))
    features = {r.id: r for r in shards.read_features(synth_features, split="test")}
    assert sorted(r["id"] for r in records) == sorted(features) and summary.clips == len(features)
    assert summary.speech_seconds == sum(r.n_frames for r in features.values()) / VIDEO.fps
    # Resumable: a lost shard is regenerated, nothing else is.
    lost = sorted((out / GENERATED).glob("part-*.parquet"))[0]
    lost_ids = pq.read_table(lost, columns=["id"])["id"].to_pylist()
    lost.unlink()
    again = generate_split(synth_features, "test", checkpoint, str(out), batch_size=3)
    assert again.clips == len(lost_ids) and again.skipped == len(features) - len(lost_ids)
    assert sorted(r["id"] for r in read_generated(str(out))) == sorted(features)
    for record in records:
        wav_S, rate = sf.read(record["wav"])
        assert rate == AUDIO.sample_rate
        assert len(wav_S) == features[record["id"]].n_frames * SAMPLES_PER_FRAME

    rows = score_results(str(out))
    assert len(rows) == 4 * len(records)
    assert {(r["id"], r["system"]) for r in rows} == {
        (i, s) for i in features for s in ("recording", "l2s", "gt_mel", "mean_mel")
    }
    assert pq.read_table(out / SCORES_FILE).num_rows == len(rows)
    summary = summarize(rows).means
    ceiling, floor = summary[("test", "gt_mel")], summary[("test", "mean_mel")]
    # The vocoder's ceiling against the recording, and a constant predictor well below it.
    assert ceiling["stoi"][0] > 0.9 and ceiling["estoi"][0] > 0.8
    assert floor["stoi"][0] < 0.6 and floor["estoi"][0] < 0.2
    # The recording's voice survives the vocoder; the constant predictor has none of it.
    assert ceiling["speaker_similarity"][0] > 0.8
    assert floor.get("speaker_similarity", (0.0,))[0] < ceiling["speaker_similarity"][0] - 0.1
    report = write_report([str(out)], rows, tmp_path / "report.html")
    text = report.read_text()
    assert text.count("<audio") == 4 * len(records) and "data:image/png;base64," in text
    assert (out / "reference" / f"{records[0]['id']}.wav").exists()


def test_speak_gives_a_wav_of_each_real_clips_length(
    real_clips: list[Path], checkpoint: str, tmp_path: Path
) -> None:
    for clip in real_clips:
        spoken = speak(str(clip), checkpoint, str(tmp_path / f"{clip.stem}.wav"))
        n_frames = len(read_frames(clip))
        wav_S, _ = sf.read(spoken.wav)
        assert len(wav_S) == n_frames * SAMPLES_PER_FRAME, clip.name
        assert spoken.face_ratio >= 0.95 and np.isfinite(wav_S).all()


def test_speak_chunks_a_long_silent_video(
    real_clips: list[Path], checkpoint: str, tmp_path: Path
) -> None:
    # Over 10 s and without an audio track: face tracking and the model both run in windows.
    frames_THWC = read_frames(real_clips[0])
    long_THWC = np.concatenate([frames_THWC, frames_THWC[::-1], frames_THWC])[: 11 * VIDEO.fps + 3]
    silent = tmp_path / "silent.mp4"
    write_video(silent, long_THWC, fps=VIDEO.fps)
    with av.open(str(silent)) as container:
        assert not container.streams.audio
    spoken = speak(str(silent), checkpoint, str(tmp_path / "long.wav"), speaker=None)
    wav_S, _ = sf.read(spoken.wav)
    assert len(wav_S) == len(long_THWC) * SAMPLES_PER_FRAME
    assert spoken.face_ratio >= 0.95


def test_speak_refuses_what_it_cannot_speak(
    checkpoint: str, tmp_path: Path, real_speech: Path
) -> None:
    rng = np.random.default_rng(0)
    noise = tmp_path / "noface.mp4"
    write_video(noise, rng.integers(0, 255, (30, 120, 160, 3), dtype=np.uint8), fps=VIDEO.fps)
    with pytest.raises(SpeakError, match=re.escape(f"{noise}: no face found in any frame")):
        speak(str(noise), checkpoint, str(tmp_path / "x.wav"))
    assert not (tmp_path / "x.wav").exists()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(SpeakError, match=re.escape(str(tmp_path / "broken.mp4"))):
        speak(str(broken), checkpoint, str(tmp_path / "y.wav"))
    with pytest.raises(SpeakError, match="not one the model was trained on"):
        speak(str(noise), checkpoint, str(tmp_path / "z.wav"), speaker="nobody")
    with pytest.raises(SpeakError, match="not both"):
        speak(
            str(noise),
            checkpoint,
            str(tmp_path / "z.wav"),
            reference_audio=str(real_speech),
            speaker="s",
        )
