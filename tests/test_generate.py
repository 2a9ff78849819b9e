"""Generation, scoring and `l2s speak` (issue 5) on real media: the synthetic corpus's features
and the real fixture clips, with a checkpoint written the way training writes one.

The checkpoint is untrained (its content is not judged here; test_train judges learning): what
is tested is the path — speaker rule, lengths, the baselines' scores, chunking, errors.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from l2s.audio import load_audio
from l2s.cli import app
from l2s.config import AUDIO, VIDEO
from l2s.evaluate.asr import PocketSphinxASR
from l2s.evaluate.report import write_report
from l2s.evaluate.split import SCORES_FILE, score_results, summarize
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.checkpoint import VOCODER_FILE
from l2s.infer.model import SpeechModel
from l2s.infer.speak import mouth_rois, speak
from l2s.infer.vocoder import load_vocoder
from l2s.infer.voice import SplitVoices, split_speakers
from l2s.models.frontend import crop, normalize_video
from l2s.models.hifigan import Generator, tiny
from l2s.pipeline import shards
from l2s.pipeline.generate import GENERATED, generate_split, mel_of, read_generated
from l2s.video import read_frames, write_video

SAMPLES_PER_FRAME = AUDIO.sample_rate // VIDEO.fps


def test_no_clip_is_conditioned_on_its_own_audio(synth_features: str, checkpoint: str) -> None:
    table = SpeechModel.load(checkpoint).speakers
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
    model = SpeechModel.load(checkpoint)
    rows = shards.read_features(synth_features, split="test")
    assert len({r.n_frames for r in rows}) > 1, "clips of different lengths, so padding happens"
    voices = [np.asarray(r.speaker_embedding, np.float32) for r in rows[:-1]] + [None]
    batched = model.mels([r.roi_THW() for r in rows], voices)
    for row, voice_D, mel_MF in zip(rows, voices, batched, strict=True):
        single_MF = model.mel(row.roi_THW(), voice_D)
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

    # Every clip carries what its lips were read to say, read with the corpus's grammar.
    model = SpeechModel.load(checkpoint)
    assert model.grammar is not None and model.grammar.name == "grid"
    rois = {i: f.roi_THW() for i, f in features.items()}
    for record in records:
        (window,) = model.window_outputs([rois[record["id"]]], [None])
        assert record["text"] == model.read(window.log_probs_VT) and record["heard"] == "lips"

    rows = score_results(str(out))
    assert len(rows) == 4 * len(records)
    assert {(r["id"], r["system"]) for r in rows} == {
        (i, s) for i in features for s in ("recording", "l2s", "gt_mel", "mean_mel")
    }
    assert pq.read_table(out / SCORES_FILE).num_rows == len(rows)
    summary = summarize(rows).means
    # Lip reading is scored for l2s alone: pooled over the transcripts' words.
    assert "vsr_wer" in summary[("test", "l2s")] and "vsr_cer" in summary[("test", "l2s")]
    assert not any("vsr_wer" in summary[("test", s)] for s in ("recording", "gt_mel", "mean_mel"))
    assert {r["lip_text"] for r in rows if r["system"] == "l2s"} == {r["text"] for r in records}
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


def untrained_hifigan(run: Path) -> str:
    """A HiFi-GAN run directory holding one step-0 checkpoint, laid out as training writes it."""
    cfg = tiny()
    folder = run / "checkpoint_00000000"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    saved = {"generator": Generator(cfg).state_dict(), "model_config": cfg.to_dict()}
    torch.save({**saved, "progress": {"step": 0}}, folder / VOCODER_FILE)
    return str(run)


def test_generate_command_vocodes_with_the_vocoder_it_is_given(
    synth_features: str, checkpoint: str, ray_local, tmp_path: Path
) -> None:
    hifigan = untrained_hifigan(tmp_path / "hifigan")
    out = tmp_path / "test"
    command = ["generate", synth_features, "--checkpoint", checkpoint, "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--split", "test", "--vocoder", hifigan])
    assert result.exit_code == 0, result.output
    vocoder = load_vocoder(hifigan)
    records = read_generated(str(out))
    assert {r["vocoder"] for r in records} == {vocoder.name}
    assert vocoder.name == f"hifigan:{hifigan}/checkpoint_00000000"
    for record in records:  # the wavs are HiFi-GAN's (a batch pads: its last samples may differ)
        wav_S, _ = sf.read(record["wav"], dtype="float32")
        expected_S = vocoder(mel_of(record, "mel"))
        np.testing.assert_allclose(wav_S[:-2048], expected_S[:-2048], atol=1e-3)


def test_a_split_is_generated_as_speak_speaks_a_clip_longer_than_a_window(
    real_clips: list[Path], synth_features: str, checkpoint: str, ray_local, tmp_path: Path
) -> None:
    """A clip over one model window: batch generation (what `l2s score` scores) gives the speech
    that `l2s speak` gives for the same mouth ROIs in the same voice, and that is not what one
    forward pass over the whole clip gives."""
    frames_THWC = read_frames(real_clips[0])
    long_THWC = np.concatenate([frames_THWC, frames_THWC[::-1], frames_THWC])[: 11 * VIDEO.fps + 3]
    video = tmp_path / "long.mp4"
    write_video(video, long_THWC, fps=VIDEO.fps)
    roi_THW, _ = mouth_rois(str(video), FeatureConfig())
    n_frames = len(roi_THW)
    seen = shards.read_features(synth_features, split="test")[0]  # a training speaker's clip
    long_row = dataclasses.replace(
        seen,
        id="long/0000",
        n_frames=n_frames,
        roi=roi_THW.tobytes(),
        mel=np.full((AUDIO.n_mels, 4 * n_frames), np.log(AUDIO.log_floor), np.float32).tobytes(),
        landmarks=np.zeros((n_frames, 68, 2), np.float32).tobytes(),
    )
    dataset = str(tmp_path / "features")
    shards.write_shard(dataset, [long_row], [])
    shards.write_metadata(dataset, shards.read_metadata(synth_features))

    generate_split(dataset, "test", checkpoint, str(tmp_path / "results"))
    (record,) = read_generated(str(tmp_path / "results"))
    spoken = speak(str(video), checkpoint, str(tmp_path / "spoken.wav"), speaker=seen.speaker)
    generated_S, _ = sf.read(record["wav"], dtype="float32")
    spoken_S, _ = sf.read(spoken.wav, dtype="float32")
    assert record["speaker_source"] == "train mean"
    assert record["text"] == spoken.text  # read once from the windows' cross-faded CTC output
    assert generated_S.shape == spoken_S.shape == (n_frames * SAMPLES_PER_FRAME,)
    np.testing.assert_allclose(generated_S, spoken_S, atol=2e-3)

    model = SpeechModel.load(checkpoint)
    video_BTHW = torch.from_numpy(np.ascontiguousarray(crop(roi_THW, None)))[None]
    speaker_BD = torch.from_numpy(model.speaker(seen.speaker))[None]
    with torch.inference_mode():
        output = model.network(normalize_video(video_BTHW), None, speaker_BD)
    whole_MF = output.mel_post_BMF[0].numpy()
    assert np.abs(mel_of(record, "mel") - whole_MF).max() > 0.1


def test_speak_gives_a_wav_of_each_real_clips_length(
    real_clips: list[Path], checkpoint: str, tmp_path: Path
) -> None:
    for clip in real_clips:
        spoken = speak(str(clip), checkpoint, str(tmp_path / f"{clip.stem}.wav"))
        n_frames = len(read_frames(clip))
        wav_S, _ = sf.read(spoken.wav)
        assert len(wav_S) == n_frames * SAMPLES_PER_FRAME, clip.name
        assert spoken.face_ratio >= 0.95 and np.isfinite(wav_S).all()


def test_speak_writes_what_the_lips_say(
    real_clips: list[Path], checkpoint: str, tmp_path: Path
) -> None:
    out, text = tmp_path / "speech.wav", tmp_path / "said.txt"
    command = ["speak", str(real_clips[0]), "--checkpoint", checkpoint, "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--text", str(text), "--asr", "grid"])
    assert result.exit_code == 0, result.output
    model = SpeechModel.load(checkpoint)
    roi_THW, _ = mouth_rois(str(real_clips[0]), FeatureConfig())
    (said,) = model.speech([roi_THW], [None])
    assert text.read_text() == said.text + "\n"
    assert f"lips read: {said.text!r}" in result.output
    # --asr: what the recognizer hears in the wav that was written, under its own name.
    recognizer = PocketSphinxASR("grid")
    heard = recognizer.transcribe(load_audio(out))
    assert f"heard ({recognizer.name}): {heard!r}" in " ".join(result.output.split())
    refused = CliRunner().invoke(app, [*command, "--asr", "nonsense"])
    assert refused.exit_code == 2, refused.output
    assert "--asr nonsense: neither grid, open" in " ".join(refused.output.split())


def test_the_oracle_hears_the_transcript_and_the_user_never_does(
    synth_features: str, tmp_path: Path
) -> None:
    from l2s.models.lip2speech import tiny as tiny_model
    from l2s.models.text import normalize_text
    from l2s.pipeline.generate import generate_clips
    from l2s.train import initial_checkpoint

    run = initial_checkpoint(
        synth_features,
        str(tmp_path / "run"),
        model=dataclasses.replace(tiny_model(), text_conditioning=True),
    )
    model = SpeechModel.load(run)
    assert model.network.cfg.text_conditioning
    row = shards.read_features(synth_features, split="test")[0]
    clip = {**vars(row)}
    voices = SplitVoices(model.speakers)
    voice_D, _ = voices.of(row.speaker, row.speaker_embedding)
    lips = generate_clips(model, [clip], voices, {}, str(tmp_path / "lips"))[0]
    oracle = generate_clips(model, [clip], voices, {}, str(tmp_path / "oracle"), oracle_text=True)[
        0
    ]
    assert (lips["heard"], oracle["heard"]) == ("lips", "transcript")
    (heard,) = model.speech([row.roi_THW()], [voice_D], texts=[normalize_text(row.transcript)])
    np.testing.assert_array_equal(mel_of(oracle, "mel"), heard.mel_MF)
    (read,) = model.speech([row.roi_THW()], [None])
    np.testing.assert_array_equal(mel_of(lips, "mel"), read.mel_MF)
    assert read.text != normalize_text(row.transcript)  # an untrained model misreads it
    assert np.abs(mel_of(lips, "mel") - mel_of(oracle, "mel")).max() > 1e-4


def test_a_flow_head_samples_with_guidance_and_a_recognizer_steering(
    synth_features: str, tmp_path: Path
) -> None:
    from l2s.infer.sampling import FlowSampling
    from l2s.models.asr import SpeechRecognizer
    from l2s.models.asr import tiny as tiny_asr
    from l2s.models.lip2speech import tiny as tiny_model
    from l2s.train import initial_checkpoint

    sizes = dataclasses.replace(tiny_model(), text_conditioning=True, flow_head=True)
    model = SpeechModel.load(initial_checkpoint(synth_features, str(tmp_path / "run"), model=sizes))
    torch.nn.init.normal_(model.network.flow.out.weight, std=0.05)  # untrained: a velocity at all
    rows = shards.read_features(synth_features, split="test")[:2]
    rois = [r.roi_THW() for r in rows]

    def mels(**sampling: float) -> list[np.ndarray]:
        model.sampling = FlowSampling(steps=4, **sampling)
        return model.mels(rois, [None, None])

    plain = mels()
    assert [m.shape for m in plain] == [(AUDIO.n_mels, 4 * r.n_frames) for r in rows]
    np.testing.assert_array_equal(plain[0], mels()[0])  # seeded: the same speech every time
    with torch.no_grad():
        regression = model.network(normalize_video(torch.from_numpy(crop(rois[0], None))[None]))
    assert np.abs(plain[0] - regression.mel_post_BMF[0].numpy()).max() > 0.1  # a sample, not it
    guided = mels(video_guidance=2.0, text_guidance=3.0)
    assert np.abs(guided[0] - plain[0]).max() > 1e-3
    with pytest.raises(ValueError, match="needs a recognizer"):
        mels(asr_scale=1.0)
    model.guide = SpeechRecognizer(tiny_asr()).eval()
    steered = mels(asr_scale=1.0)
    assert all(np.isfinite(m).all() for m in steered)
    assert np.abs(steered[0] - plain[0]).max() > 1e-3


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
