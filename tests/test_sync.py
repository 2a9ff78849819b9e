"""The sync expert (issue 15): offset search, the contrastive loss, its training windows, a real
training run on the toy dataset that learns to find shifted audio, resuming, and `l2s sync`.

The toy dataset's mels follow the mouth opening in its ROIs (`l2s.train.toy`), so audio shifted in
time against the lips is something an expert can learn to see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from l2s.cli import app
from l2s.models.syncnet import SyncConfig, SyncNet, normalize_clip_mel, sync_loss
from l2s.sync import SyncError
from l2s.sync.expert import (
    SyncExpert,
    audio_windows,
    offset_distances,
    score_embeddings,
    shift_mel,
    video_windows,
)
from l2s.train.data import Utterance
from l2s.train.sync import SyncTrainConfig, train_sync
from l2s.train.sync_data import min_frames, span, sync_batches
from l2s.train.toy import ToyConfig, write_toy_features

TINY = SyncConfig(image_size=24, width=4, embedding=16)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    write_toy_features(str(out), ToyConfig(speakers=2, utterances=24, min_frames=40, max_frames=60))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("lag", [-7, -1, 0, 3, 12])
def test_the_best_offset_is_how_late_the_audio_comes(lag: int) -> None:
    rng = np.random.default_rng(0)
    content_XE = _unit(rng.standard_normal((80, 8)))
    video_TE = content_XE[20:60]
    # Audio window p holds what the lips show at window p - lag: the sound comes `lag` late.
    audio_PE = content_XE[20 - lag : 60 - lag]
    score = score_embeddings(video_TE, audio_PE, max_offset=15)
    assert score.offset == lag
    assert score.distance == pytest.approx(0.0, abs=1e-6)
    assert score.confidence > 1.0
    assert score.windows == 40 - abs(lag)


def test_offsets_without_enough_overlap_are_not_compared() -> None:
    distances_D = offset_distances(np.zeros((6, 4)), np.zeros((6, 4)), max_offset=3)
    # Offsets ±2, ±3 leave fewer than 5 windows in common.
    assert np.isnan(distances_D[[0, 1, 5, 6]]).all() and not np.isnan(distances_D[2:5]).any()
    with pytest.raises(SyncError, match="overlap too little"):
        score_embeddings(np.zeros((3, 4)), np.zeros((3, 4)), max_offset=2)


def test_shifting_audio_delays_it_and_keeps_its_length() -> None:
    mel_MF = np.arange(2 * 40, dtype=np.float32).reshape(2, 40)
    late_MF = shift_mel(mel_MF, 2)
    assert late_MF.shape == mel_MF.shape
    np.testing.assert_array_equal(late_MF[:, 8:], mel_MF[:, :-8])
    np.testing.assert_array_equal(late_MF[:, :8], np.repeat(mel_MF.min(1, keepdims=True), 8, 1))
    np.testing.assert_array_equal(shift_mel(mel_MF, -3)[:, :-12], mel_MF[:, 12:])
    with pytest.raises(SyncError, match="longer than the clip"):
        shift_mel(mel_MF, 10)


def test_windows_cover_five_frames_and_twenty_mel_frames() -> None:
    roi_THW = np.arange(12)[:, None, None].repeat(96, 1).repeat(96, 2).astype(np.uint8)
    windows_PKHW = video_windows(roi_THW)
    assert windows_PKHW.shape == (8, 5, 96, 96)
    assert windows_PKHW[3, :, 0, 0].tolist() == [3, 4, 5, 6, 7]
    mel_MF = np.arange(48, dtype=np.float32)[None].repeat(80, 0)
    mels_PMW = audio_windows(mel_MF)
    assert mels_PMW.shape == (8, 80, 20) and mels_PMW[3, 0, 0] == 12 and mels_PMW[3, 0, -1] == 31
    with pytest.raises(SyncError, match="at least 5 frames"):
        video_windows(roi_THW[:4])


def test_normalised_mel_ignores_level_and_channel() -> None:
    rng = np.random.default_rng(1)
    mel_MF = rng.standard_normal((80, 100)).astype(np.float32)
    louder_MF = 1.5 * mel_MF + np.linspace(-3, 2, 80, dtype=np.float32)[:, None]
    np.testing.assert_allclose(normalize_clip_mel(mel_MF), normalize_clip_mel(louder_MF), atol=1e-4)


def test_the_loss_prefers_the_aligned_audio_among_shifts_and_other_clips() -> None:
    rng = np.random.default_rng(2)
    C, N, S, E = 3, 4, 2, 16
    audio_CPE = torch.from_numpy(_unit(rng.standard_normal((C, N + 2 * S, E)))).float()
    aligned_CNE = audio_CPE[:, S : S + N]
    scale = torch.tensor(10.0)
    loss, parts = sync_loss(aligned_CNE, audio_CPE, scale)
    assert parts["offset_acc"] == 1.0 and parts["acc"] == 1.0
    late_CNE = audio_CPE[:, S + 1 : S + 1 + N]  # every window matches the audio one frame on
    late_loss, late_parts = sync_loss(late_CNE, audio_CPE, scale)
    assert late_parts["offset_acc"] == 0.0 and late_loss > loss
    with pytest.raises(ValueError, match="N \\+ 2·S"):
        sync_loss(aligned_CNE, audio_CPE[:, :-1], scale)


def test_a_spans_own_audio_sits_max_shift_windows_in() -> None:
    T = 30
    roi_THW = np.arange(T)[:, None, None].repeat(96, 1).repeat(96, 2).astype(np.uint8)
    mel_MF = np.arange(4 * T, dtype=np.float32)[None].repeat(80, 0)
    roi_NKHW, mel_PMW = span(roi_THW, mel_MF, start=9, windows=3, max_shift=4)
    assert roi_NKHW.shape == (3, 5, 96, 96) and mel_PMW.shape == (3 + 8, 80, 20)
    for n in range(3):
        first_frame = roi_NKHW[n, 0, 0, 0]
        assert mel_PMW[n + 4, 0, 0] == 4 * first_frame  # window n's own audio: frame for frame
    clips = [
        Utterance(f"c{i}", "s", roi_THW[: min_frames(4, 3) + i], mel_MF[:, : 4 * (15 + i)], "")
        for i in range(6)
    ]
    batches = list(sync_batches(clips, 4, 3, 4, 2, np.random.default_rng(0)))
    assert [b.video_CNKHW.shape for b in batches] == [(4, 3, 5, 96, 96)] * 3
    assert all(b.mel_CPMW.shape == (4, 11, 80, 20) for b in batches)
    too_short = Utterance("x", "s", roi_THW[:14], mel_MF[:, :56], "")
    assert not list(sync_batches([too_short] * 8, 4, 3, 4, 2, np.random.default_rng(0)))


def test_the_expert_learns_to_find_shifted_audio_and_resumes(toy: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "sync")
    cfg = SyncTrainConfig(
        dataset=str(toy),
        out=out,
        model=TINY,
        steps=150,
        batch_size=8,
        windows=4,
        max_shift=4,
        spans_per_clip=4,
        lr=3e-3,
        warmup_steps=10,
        val_every=150,
        ckpt_every=75,
        n_val=6,
        val_shift=8,
    )
    summary = train_sync(cfg, local=True)
    assert summary.step == 150 and summary.checkpoint.endswith("checkpoint_00000150")
    first, last = summary.history[0], summary.history[-1]
    assert last["train/loss"] < first["train/loss"]
    assert last["val/offset_within_1"] >= 0.8, last
    # The same run with a larger budget resumes from step 150.
    more = train_sync(SyncTrainConfig(**{**cfg.__dict__, "steps": 152}), local=True)
    assert more.step == 152 and more.history[-1]["resumed_from"] == 150
    expert = SyncExpert.load(out)
    assert expert.checkpoint.endswith("checkpoint_00000152")
    assert isinstance(expert.network, SyncNet) and not expert.network.training


def test_a_sync_run_refuses_settings_it_cannot_train_with(toy: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SyncTrainConfig(dataset=str(toy), out=str(tmp_path), max_shift=0)
    with pytest.raises(ValueError, match="unknown preset"):
        SyncTrainConfig(dataset=str(toy), out=str(tmp_path), preset="huge")


def test_sync_cli_reports_offset_and_confidence_of_a_real_clip(tmp_path: Path) -> None:
    from conftest import FIXTURES

    clip = FIXTURES / "video-retalking__face_3.mp4"
    if not clip.exists():
        pytest.skip(f"real fixture not found at {clip}")
    expert = tmp_path / "expert"
    _untrained_expert(expert)
    runner = CliRunner()
    done = runner.invoke(app, ["sync", str(clip), "--checkpoint", str(expert), "--max-offset", "3"])
    assert done.exit_code == 0, done.output
    printed = " ".join(done.output.split())  # rich wraps long lines
    assert "offset" in printed and "confidence" in printed and "face on 100%" in printed
    missing = runner.invoke(app, ["sync", str(tmp_path / "nope.mp4"), "--checkpoint", str(expert)])
    assert missing.exit_code == 1 and "nope.mp4" in missing.output


def _untrained_expert(folder: Path) -> None:
    """A checkpoint folder holding an untrained tiny expert (what the CLI needs to run)."""
    from l2s.infer.checkpoint import SYNC_FILE

    checkpoint = folder / "checkpoint_00000000"
    checkpoint.mkdir(parents=True)
    net = SyncNet(TINY)
    torch.save({"model": net.state_dict(), "model_config": TINY.to_dict()}, checkpoint / SYNC_FILE)
