"""Lip re-rendering (issue 15): the generator's inputs, pasting a ROI back into its frame, a
training run on the toy dataset that learns (and fine-tunes from its checkpoint), and
`l2s lipsync` on a real clip: an h264 yuv420p mp4 at the source's size and rate, with the speech
as its only audio track, the same length as the video.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from l2s.cli import app
from l2s.face import crop_mouth, detect_landmarks, mouth_transforms
from l2s.infer.checkpoint import LIPSYNC_FILE, SYNC_FILE
from l2s.lipsync.model import LipSyncModel, pick_reference
from l2s.lipsync.paste import feather_mask, paste, scale_transform
from l2s.models.lipgen import MASK_TOP, LipGenConfig, LipGenerator, mask_mouth, mel_windows_at
from l2s.models.syncnet import SyncConfig, SyncNet, normalize_clip_mel
from l2s.train.data import Utterance
from l2s.train.lipsync import LipSyncTrainConfig, train_lipsync
from l2s.train.lipsync_data import REFERENCE_GAP, LipBatch, lip_batches, reference_frame
from l2s.train.toy import ToyConfig, toy_rows, write_toy_features
from l2s.video import iter_frames, probe

TINY_GENERATOR = LipGenConfig(width=4, audio_width=4)
TINY_EXPERT = SyncConfig(image_size=24, width=4, embedding=16)
TOY = ToyConfig(speakers=2, utterances=16, min_frames=30, max_frames=40)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    write_toy_features(str(out), TOY)
    return out


@pytest.fixture(scope="module")
def expert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny sync expert: the loss it gives is real, what it knows does not matter."""
    folder = tmp_path_factory.mktemp("expert") / "checkpoint_00000000"
    folder.mkdir()
    torch.manual_seed(0)
    state = SyncNet(TINY_EXPERT).state_dict()
    torch.save({"model": state, "model_config": TINY_EXPERT.to_dict()}, folder / SYNC_FILE)
    return folder.parent


@pytest.fixture(scope="module")
def real_frames() -> tuple[np.ndarray, np.ndarray]:
    """Six frames of a real clip at full size and their landmarks."""
    from conftest import FIXTURES

    clip = FIXTURES / "video-retalking__face_2.mp4"
    if not clip.exists():
        pytest.skip(f"real fixture not found at {clip}")
    frames_THWC = np.stack([f for f, _ in zip(iter_frames(clip), range(6), strict=False)])
    return frames_THWC, detect_landmarks(frames_THWC).landmarks_TK2


def test_the_mask_hides_the_mouth_and_the_output_keeps_what_is_above() -> None:
    frames_BHW = torch.rand(3, 96, 96)
    masked_BHW = mask_mouth(frames_BHW)
    assert (masked_BHW[:, MASK_TOP:] == 0).all()
    assert torch.equal(masked_BHW[:, :MASK_TOP], frames_BHW[:, :MASK_TOP])
    generator = LipGenerator(TINY_GENERATOR).eval()
    drawn_BHW = generator(masked_BHW, frames_BHW, torch.randn(3, 80, 20))
    assert drawn_BHW.shape == (3, 96, 96)
    assert torch.equal(drawn_BHW[:, :MASK_TOP], frames_BHW[:, :MASK_TOP])
    assert not torch.equal(drawn_BHW[:, MASK_TOP:], masked_BHW[:, MASK_TOP:])


def test_each_frame_is_driven_by_the_speech_centred_on_it() -> None:
    mel_MF = np.arange(1, 41, dtype=np.float32)[None].repeat(3, 0)  # 10 frames at 25 fps
    windows_TMW = mel_windows_at(mel_MF, (np.arange(10) + 0.5) / 25)
    assert windows_TMW.shape == (10, 3, 20)
    # Frame 4 covers mel frames 16-19; its window is 0.1 s each side of their middle.
    assert windows_TMW[4, 0].tolist() == list(range(9, 29))
    # Past the ends: the quietest level of the clip.
    assert (
        windows_TMW[0, 0, :8].tolist() == [1.0] * 8 and windows_TMW[9, 0, -8:].tolist() == [1.0] * 8
    )


def test_the_reference_frame_shows_another_moment() -> None:
    rng = np.random.default_rng(0)
    for start in range(0, 26):
        ref = reference_frame(30, start, rng)
        assert ref <= start - REFERENCE_GAP or ref >= start + 4 + REFERENCE_GAP
    assert reference_frame(8, 2, rng) in (0, 7)  # too short for the gap: the farthest end
    roi_THW = np.full((12, 96, 96), 100, np.uint8)
    roi_THW[5, MASK_TOP:] = 0  # one odd frame (a blink of blur) is never the typical one
    roi_THW[7, MASK_TOP:] = 101
    assert pick_reference(roi_THW, MASK_TOP) not in (5,)


def test_a_share_of_windows_shows_the_reference_above_the_mask() -> None:
    """visible_from_reference: whole windows (every frame) borrow the reference's upper rows."""
    C, K = 400, 5
    batch = LipBatch(
        torch.rand(C, K, 96, 96), torch.rand(C, 96, 96), torch.rand(C, K, 80, 20), torch.rand(1)
    )
    assert torch.equal(batch.visible_CKHW(0.0), batch.target_CKHW)
    assert torch.equal(batch.visible_CKHW(1.0), batch.reference_CHW[:, None].expand(-1, K, -1, -1))
    visible_CKHW = batch.visible_CKHW(0.5)
    borrowed_CK = (visible_CKHW == batch.reference_CHW[:, None]).flatten(2).all(2)
    own_CK = (visible_CKHW == batch.target_CKHW).flatten(2).all(2)
    assert (borrowed_CK ^ own_CK).all()  # each frame wholly one or the other
    assert (borrowed_CK.all(1) | own_CK.all(1)).all()  # each window too
    assert 0.4 < borrowed_CK[:, 0].float().mean() < 0.6


def test_training_windows_hold_frames_references_and_audio(toy: Path) -> None:
    rng = np.random.default_rng(0)
    T = 20
    roi_THW = np.arange(T)[:, None, None].repeat(96, 1).repeat(96, 2).astype(np.uint8)
    mel_MF = np.tile(np.arange(4 * T, dtype=np.float32), (80, 1))
    clips = [Utterance(f"c{i}", "s", roi_THW, mel_MF, "") for i in range(8)]
    batches = list(lip_batches(clips, 4, 3, 2, rng))
    normalized_MF = normalize_clip_mel(mel_MF)
    assert len(batches) == 4
    batch = batches[0]
    assert batch.target_CKHW.shape == (4, 5, 96, 96) and batch.reference_CHW.shape == (4, 96, 96)
    assert batch.mel_CKMW.shape == (4, 5, 80, 20) and batch.sync_mel_CPMW.shape == (4, 7, 80, 20)
    for c in range(4):
        start = round(float(batch.target_CKHW[c, 0, 0, 0]) * 255)
        reference = round(float(batch.reference_CHW[c, 0, 0]) * 255)
        assert abs(reference - start - 2) >= 2 + REFERENCE_GAP
        # The sync expert's own audio (the middle of 7) starts at the window's first frame, and
        # each frame's driving audio is centred on it.
        assert batch.sync_mel_CPMW[c, 3, 0, 0] == pytest.approx(normalized_MF[0, 4 * start])
        assert batch.mel_CKMW[c, 1, 0, 0] == pytest.approx(normalized_MF[0, 4 * start + 4 - 8])


def test_a_roi_pasted_back_leaves_the_frame_as_it_was(real_frames) -> None:
    frames_THWC, landmarks_TK2 = real_frames
    transform_T23 = mouth_transforms(landmarks_TK2)
    roi_THW = crop_mouth(frames_THWC, landmarks_TK2, transform_T23=transform_T23)
    mask_HW = feather_mask(MASK_TOP)
    assert mask_HW[0].max() == 0 and mask_HW[:, 0].max() < 0.01 and mask_HW[70, 48] > 0.99
    same_HWC = paste(frames_THWC[2], roi_THW[2], transform_T23[2], mask_HW)
    # The ROI was cut from a half-size level (the face is large), so detail differs a little.
    changed = np.abs(same_HWC.astype(int) - frames_THWC[2]).max(axis=2)
    assert np.percentile(changed[changed > 0], 99) <= 20 and changed[changed > 0].mean() < 3
    white_HWC = paste(frames_THWC[2], np.full((96, 96), 255, np.uint8), transform_T23[2], mask_HW)
    x, y = landmarks_TK2[2, 48:68].mean(axis=0).round().astype(int)
    luma = white_HWC[y, x].astype(float) @ [0.299, 0.587, 0.114]
    assert luma > 230, luma
    eye_y = int(landmarks_TK2[2, 36:48, 1].mean())
    assert np.array_equal(white_HWC[:eye_y], frames_THWC[2, :eye_y])


def test_a_transform_found_on_a_downscaled_frame_serves_the_full_frame(real_frames) -> None:
    import cv2

    frames_THWC, landmarks_TK2 = real_frames
    scale = 0.5
    small_THWC = np.stack(
        [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in frames_THWC]
    )
    small_T23 = mouth_transforms(landmarks_TK2 * scale + (scale - 1) / 2)
    full_T23 = np.stack([scale_transform(m, scale) for m in small_T23])
    np.testing.assert_allclose(full_T23, mouth_transforms(landmarks_TK2), atol=1e-9)
    roi_small = crop_mouth(small_THWC, None, transform_T23=small_T23).astype(int)
    roi_full = crop_mouth(frames_THWC, None, transform_T23=full_T23).astype(int)
    assert np.abs(roi_small - roi_full).mean() < 4


def toy_run(toy: Path, expert: Path, out: Path, **changes) -> LipSyncTrainConfig:
    """A short run of the tiny generator on the toy dataset: one validation and one checkpoint
    at its last step unless `changes` say otherwise."""
    steps = changes.pop("steps")
    values = dict(
        model=TINY_GENERATOR, steps=steps, batch_size=4, sync_weight=0.01, lr=3e-3,
        warmup_steps=5, val_every=steps, ckpt_every=steps,
    )  # fmt: skip
    return LipSyncTrainConfig(
        dataset=str(toy), out=str(out), sync_expert=str(expert), **{**values, **changes}
    )


def test_the_generator_learns_and_fine_tunes_from_its_checkpoint(
    toy: Path, expert: Path, tmp_path: Path
) -> None:
    base = toy_run(
        toy, expert, tmp_path / "lipsync", steps=40, val_every=20, ckpt_every=20, n_val=2
    )
    summary = train_lipsync(base, local=True)
    first, last = summary.history[0], summary.history[-1]
    assert summary.step == 40 and last["val/l1"] < first["val/l1"]
    assert {"val/sync_conf", "val/sync_conf_real", "val/sync_conf_cross"} <= set(last)
    model = LipSyncModel.load(base.out)
    assert model.checkpoint.endswith("checkpoint_00000040")
    # Fine-tuning starts where the first run ended, not from scratch (a learning rate too small
    # to move the weights shows it).
    tuned = dataclasses.replace(
        base, out=str(tmp_path / "tuned"), init=base.out, model=None, lr=1e-12, steps=2,
        warmup_steps=0,
    )  # fmt: skip
    assert train_lipsync(tuned, local=True).step == 2
    tuned_model = LipSyncModel.load(tuned.out)
    for name, weight in model.generator.named_parameters():
        torch.testing.assert_close(dict(tuned_model.generator.named_parameters())[name], weight)


def test_the_discriminator_learns_to_tell_drawn_mouths_and_resumes_with_the_run(
    toy: Path, expert: Path, tmp_path: Path
) -> None:
    from l2s.models.lipgen import MouthDiscriminator
    from l2s.train.checkpoint import TRAIN_STATE_FILE

    cfg = toy_run(toy, expert, tmp_path / "gan", steps=60, gan_weight=0.1, n_val=1)
    first = train_lipsync(cfg, local=True)
    assert first.metrics["train/gan"] > 0 and first.metrics["train/loss_d"] > 0
    state = torch.load(Path(first.checkpoint) / TRAIN_STATE_FILE, weights_only=True)
    discriminator = MouthDiscriminator(TINY_GENERATOR)
    discriminator.load_state_dict(state["discriminator"])
    # It scores real mouths as more real than the generator's, on clips re-drawn whole.
    model = LipSyncModel.load(cfg.out)
    real, drawn = [], []
    for row in toy_rows(TOY)[:4]:
        real.append(row.roi_THW())
        drawn.append(model.redraw(row.roi_THW(), row.mel_MF()))
    with torch.no_grad():
        scores = [
            float(discriminator(torch.from_numpy(np.concatenate(x) / 255.0).float()).mean())
            for x in (real, drawn)
        ]
    assert scores[0] > scores[1] + 0.1, scores
    resumed = train_lipsync(dataclasses.replace(cfg, steps=64), local=True)
    assert resumed.step == 64 and resumed.metrics["resumed_from"] == 60


def test_lipsync_writes_a_browser_video_with_the_new_speech(
    tmp_path: Path, real_speech: Path
) -> None:
    from conftest import FIXTURES

    clip = FIXTURES / "video-retalking__face_3.mp4"
    if not clip.exists():
        pytest.skip(f"real fixture not found at {clip}")
    run = tmp_path / "run" / "checkpoint_00000000"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    generator = LipGenerator(TINY_GENERATOR)
    torch.save(
        {"model": generator.state_dict(), "model_config": TINY_GENERATOR.to_dict()},
        run / LIPSYNC_FILE,
    )
    out = tmp_path / "out.mp4"
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "lipsync",
            str(clip),
            str(real_speech),
            "--checkpoint",
            str(run.parent),
            "--out",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    source, written = probe(clip), probe(out)
    assert (written.width, written.height) == (source.width, source.height)
    assert written.codec == "h264" and written.fps == pytest.approx(source.fps, rel=0.01)
    with av.open(str(out)) as container:
        video, audio = container.streams.video, container.streams.audio
        assert len(video) == 1 and len(audio) == 1
        assert video[0].codec_context.pix_fmt == "yuv420p"
        seconds = [float(s.duration * s.time_base) for s in (video[0], audio[0])]
    assert abs(seconds[0] - seconds[1]) <= 0.05, seconds
    bad = runner.invoke(
        app, ["lipsync", str(real_speech), str(real_speech), "--checkpoint", str(run.parent)]
    )
    assert bad.exit_code == 1 and "python-pesq__speech.wav" in " ".join(bad.output.split())
