"""Vocoders (issue 5): HiFi-GAN's length contract for every preset, the segments it trains on, and
a real Ray Train run on the synthetic corpus that lowers the mel loss, checkpoints, resumes, and
loads as a vocoder of the right length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from l2s.audio import log_mel
from l2s.config import AUDIO
from l2s.features import FeatureConfig, decode_clip
from l2s.infer.vocoder import GriffinLim, load_vocoder
from l2s.models.hifigan import (
    PRESETS,
    Discriminators,
    Generator,
    HiFiGANConfig,
    silence_gate,
    tiny,
)
from l2s.pipeline import shards
from l2s.schema import ManifestRow
from l2s.train.logs import read_metrics
from l2s.train.tasks.vocoder import score_clips
from l2s.train.vocoder import VocoderTrainConfig, learning_rate, train_vocoder
from l2s.train.vocoder_data import clip_audio, index_vocoder_dataset, read_val_clips, segments


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_gives_exactly_one_hop_of_samples_per_mel_frame(preset: str) -> None:
    cfg = PRESETS[preset]()
    generator = Generator(cfg)
    with torch.no_grad():
        for frames in (1, 5, 33):
            wav_BS = generator(torch.randn(2, AUDIO.n_mels, frames))
            assert wav_BS.shape == (2, frames * AUDIO.hop_length)
            assert wav_BS.abs().max() <= 1.0
        scores, features = Discriminators(cfg)(wav_BS)
    assert len(scores) == len(features) == len(cfg.periods) + cfg.scales
    assert HiFiGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_refuses_a_generator_that_breaks_the_hop() -> None:
    with pytest.raises(ValueError, match="hop length"):
        HiFiGANConfig(upsample_rates=(8, 8, 2, 2), upsample_kernel_sizes=(16, 16, 4, 4))


def test_weight_norm_folds_away_without_changing_the_output() -> None:
    generator = Generator(tiny())
    mel_BMF = torch.randn(1, AUDIO.n_mels, 12)
    with torch.no_grad():
        before = generator(mel_BMF)
        after = generator.remove_weight_norm()(mel_BMF)
    assert not any("parametrizations" in k for k in generator.state_dict())
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)


def test_the_silence_gate_closes_only_where_the_mel_is_at_its_floor() -> None:
    t = np.arange(30 * AUDIO.hop_length) / AUDIO.sample_rate
    wav_S = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    wav_S[: 12 * AUDIO.hop_length] = 0.0  # digital silence, then a tone
    mel_BMF = torch.from_numpy(log_mel(wav_S))[None]
    gate_S = silence_gate(mel_BMF)[0]
    assert gate_S.shape == (30 * AUDIO.hop_length,)
    assert (
        gate_S[: 9 * AUDIO.hop_length].max() == 0.0
        and gate_S[-10 * AUDIO.hop_length :].min() == 1.0
    )
    # Where the gate is not fully open the recording is (near) silent: nothing is cut away.
    assert np.abs(wav_S[gate_S.numpy() < 1]).max() < 0.05
    with torch.no_grad():
        out_BS = Generator(tiny())(mel_BMF)
    assert torch.all(out_BS[0, : 9 * AUDIO.hop_length] == 0) and out_BS[0, -1000:].abs().sum() > 0


def test_segments_line_the_stored_mel_up_with_its_samples() -> None:
    rng = np.random.default_rng(0)
    n_mel = 123
    t = np.arange(n_mel * AUDIO.hop_length) / AUDIO.sample_rate
    wav_S = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t))).astype(np.float32)
    mel_MF = log_mel(wav_S)
    pieces = segments(mel_MF, wav_S, 20, rng)
    assert len(pieces) == n_mel // 20
    for seg_mel_MF, seg_wav_S in pieces:
        assert seg_mel_MF.shape == (AUDIO.n_mels, 20)
        assert seg_wav_S.shape == (20 * AUDIO.hop_length,)
        # Frames away from the segment's edges see the same samples as in the whole clip.
        np.testing.assert_allclose(log_mel(seg_wav_S)[:, 2:-2], seg_mel_MF[:, 2:-2], atol=1e-3)
    # A clip shorter than one segment becomes one padded segment.
    ((short_mel, short_wav),) = segments(mel_MF[:, :7], wav_S[: 7 * 160], 20, rng)
    assert short_mel.shape == (AUDIO.n_mels, 20) and short_wav.shape == (3200,)
    assert np.all(short_wav[7 * 160 :] == 0)


def test_a_clips_recording_is_the_segment_its_mel_was_computed_from(
    real_clips: list[Path],
) -> None:
    """The vocoder trains on the samples preprocessing turned into the stored mel: for a row that
    is a segment of its video, those of the segment."""
    row = ManifestRow(
        id="segment", speaker="s", split="train", video=str(real_clips[1]), corpus="folder",
        start=1.0, duration=2.0,
    )  # fmt: skip
    decoded = decode_clip(row, FeatureConfig())
    assert np.array_equal(clip_audio(row, len(decoded.frames_THWC)), decoded.audio_S)


def test_learning_rate_decays_exponentially_over_the_budget() -> None:
    cfg = VocoderTrainConfig(dataset="d", out="o", steps=100, lr=1e-3, final_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-3)
    assert learning_rate(50, cfg) == pytest.approx(1e-3 * 0.1**0.5)
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    assert learning_rate(10, cfg, time_fraction=1.0) == pytest.approx(1e-4)


@pytest.mark.slow
def test_train_vocoder_learns_checkpoints_resumes_and_vocodes(
    synth_features: str, ray_local, tmp_path, monkeypatch
) -> None:
    # A relative run directory: the workers run elsewhere, their logs must still land here.
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "hifigan")
    cfg = VocoderTrainConfig(
        dataset=synth_features,
        out="hifigan",
        steps=56,
        batch_size=8,
        segment_frames=32,
        lr=1e-3,
        gan_after=48,
        val_every=16,
        ckpt_every=28,
        n_val=2,
        log_every=4,
    )
    summary = train_vocoder(cfg)
    assert summary.step == 56 and summary.checkpoint.endswith("checkpoint_00000056")
    history = read_metrics(run)
    assert [m["step"] for m in history] == [16, 28, 32, 48, 56]
    assert [m["phase"] for m in history] == ["warm-up"] * 4 + ["gan"]
    assert "train/loss_d" in history[-1] and "train/feature_matching" in history[-1]
    # Validation scores the vocoder and Griffin-Lim on the same val clips against the recordings.
    for key in ("val/mel_l1", "val/pesq_wb", "val/stoi", "val/pesq_wb_gl", "val/stoi_gl"):
        assert np.isfinite(history[-1][key])
    # Training lowered the mel error on the val clips well below the untrained generator's.
    torch.manual_seed(cfg.seed)
    untrained = Generator(cfg.model_config).eval()
    clips = read_val_clips(index_vocoder_dataset(synth_features, cfg.n_val))
    with torch.no_grad():
        before = score_clips(
            lambda mel_MF: untrained(torch.from_numpy(mel_MF)[None])[0].numpy(), clips
        )
    assert history[-1]["val/mel_l1"] < 0.8 * before["mel_l1"]

    resumed = train_vocoder(dataclasses.replace(cfg, steps=60))
    assert resumed.step == 60
    last = read_metrics(run)[-1]
    assert last["resumed_from"] == 56 and last["step"] == 60

    vocoder = load_vocoder(run)
    assert vocoder.name.endswith("checkpoint_00000060")
    row = shards.read_features(synth_features, split="test")[0]
    mel_MF = row.mel_MF()
    wav_S = vocoder(mel_MF)
    assert wav_S.dtype == np.float32 and wav_S.shape == (mel_MF.shape[1] * AUDIO.hop_length,)
    assert np.isfinite(wav_S).all() and wav_S.std() > 0
    assert isinstance(load_vocoder(None), GriffinLim)
    assert load_vocoder("griffin-lim")(mel_MF).shape == wav_S.shape

    # A batch is one padded forward pass: the longest clip comes out as it does alone, and the
    # others too, but for the last samples that hear the padding through the receptive field.
    mels = [row.mel_MF() for row in shards.read_features(synth_features, split="test")[:3]]
    mels.append(mels[0][:, :40])
    batched = vocoder.batch(mels)
    longest = max(range(len(mels)), key=lambda i: mels[i].shape[1])
    for i, (mel_MF, wav_S) in enumerate(zip(mels, batched, strict=True)):
        alone_S = vocoder(mel_MF)
        assert wav_S.shape == alone_S.shape == (mel_MF.shape[1] * AUDIO.hop_length,)
        near = slice(None) if i == longest else slice(None, len(wav_S) - 2048)
        np.testing.assert_allclose(wav_S[near], alone_S[near], atol=1e-4)


@pytest.mark.gpu
def test_train_vocoder_on_a_gpu(synth_features: str, ray_local, tmp_path) -> None:
    cfg = VocoderTrainConfig(
        dataset=synth_features,
        out=str(tmp_path / "hifigan-gpu"),
        steps=8,
        batch_size=4,
        segment_frames=16,
        gan_after=4,
        val_every=8,
        n_val=2,
        gpus_per_node=1,
    )
    summary = train_vocoder(cfg)
    assert summary.step == 8 and np.isfinite(summary.metrics["val/pesq_wb"])
    vocoder = load_vocoder(summary.checkpoint, device="cuda")
    mel_MF = shards.read_features(synth_features, split="test")[0].mel_MF()
    assert vocoder(mel_MF).shape == (mel_MF.shape[1] * AUDIO.hop_length,)
