"""l2s.face on real talking-face clips: tracking, mouth ROIs, both backends, contact sheets.

Letters in shape names: T frames, H×W pixels, C colour channels, K landmarks (68).
Each real clip is cut to its first 3 s to keep the whole file well under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
from itertools import islice
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image

from l2s.face import (
    MEAN_FACE_K2,
    FaceConfig,
    FaceError,
    contact_sheet,
    crop_mouth,
    detect_landmarks,
    load_detector,
    mouth_transforms,
    roi_landmarks,
)
from l2s.face.detect import count_faces, savgol
from l2s.face.fan import FAN_FILE, S3FD_FILE, FanDetector, decode_heatmaps, stage_random_weights
from l2s.face.roi import moving_average
from l2s.face.template import MIRROR_K, apply_affine, params_to_matrix, similarity_fit
from l2s.video import iter_frames

CLIPS = sorted(FIXTURES.glob("video-retalking__face_*.mp4")) if FIXTURES.is_dir() else []
SECONDS = 3
ROI = 96
MOUTH = slice(48, 68)
needs_fixtures = pytest.mark.skipif(
    not CLIPS, reason=f"real fixture clips not found in {FIXTURES} (shared/ beside the clone)"
)


def first_frames(path: Path, n_frames: int = SECONDS * 25) -> np.ndarray:
    return np.stack(list(islice(iter_frames(path), n_frames)))


@pytest.fixture(scope="module", params=CLIPS, ids=[p.stem for p in CLIPS])
def clip(request) -> tuple[str, np.ndarray, object]:
    frames_THWC = first_frames(request.param)
    return request.param.stem, frames_THWC, detect_landmarks(frames_THWC)


@pytest.fixture(scope="module")
def two_clips() -> list[tuple[np.ndarray, object]]:
    if len(CLIPS) < 3:
        pytest.skip(f"need the real fixture clips in {FIXTURES}")
    out = []
    for path in (CLIPS[1], CLIPS[2]):
        frames_THWC = first_frames(path, n_frames=10)
        out.append((frames_THWC, detect_landmarks(frames_THWC)))
    return out


# --- tracking on real clips ----------------------------------------------------------------


@needs_fixtures
def test_dlib_tracks_the_face_on_every_real_clip(clip) -> None:
    name, frames_THWC, track = clip
    n_frames, height, width = frames_THWC.shape[:3]
    assert track.backend == "dlib"
    assert track.landmarks_TK2.shape == (n_frames, 68, 2)
    assert track.landmarks_TK2.dtype == np.float32
    assert track.detected_T.shape == (n_frames,) and track.detected_T.dtype == bool
    assert track.face_ratio >= 0.95, f"{name}: face found on {track.face_ratio:.1%} of frames"
    assert track.n_faces == 1
    x, y = track.landmarks_TK2[..., 0], track.landmarks_TK2[..., 1]
    assert (x >= 0).all() and (x < width).all() and (y >= 0).all() and (y < height).all()


@needs_fixtures
def test_sparse_detection_matches_per_frame_detection(clip) -> None:
    """Detecting every 5th frame and interpolating the box costs nothing in accuracy: the mouth
    centre stays within ~1 px of detecting (and not smoothing) on every frame."""
    name, frames_THWC, track = clip
    n = 30  # six detection periods: enough to compare, a third of the CPU time
    dense = detect_landmarks(frames_THWC[:n], FaceConfig(detect_every=1, smooth_window=1))
    gap_T = np.linalg.norm(
        track.landmarks_TK2[:n, MOUTH].mean(axis=1) - dense.landmarks_TK2[:, MOUTH].mean(axis=1),
        axis=1,
    )
    assert gap_T.mean() < 1.5, f"{name}: mouth centres differ by {gap_T.mean():.2f} px on average"
    assert gap_T.max() < 4.0


@needs_fixtures
def test_row_padded_frames_give_the_same_landmarks(two_clips) -> None:
    """PyAV can return row-padded (non-contiguous) frames; dlib must not see them as such."""
    frames_THWC, track = two_clips[0]
    padded_THWC = np.pad(frames_THWC, ((0, 0), (0, 0), (0, 12), (0, 0)))[:, :, :-12]
    assert not padded_THWC[0].flags["C_CONTIGUOUS"]
    again = detect_landmarks(padded_THWC)
    np.testing.assert_allclose(again.landmarks_TK2, track.landmarks_TK2, atol=1e-3)


# --- mouth ROIs ----------------------------------------------------------------------------


@needs_fixtures
def test_mouth_roi_is_centred_at_a_fixed_scale(clip) -> None:
    name, frames_THWC, track = clip
    transform_T23 = mouth_transforms(track.landmarks_TK2)
    roi_THW = crop_mouth(frames_THWC, track.landmarks_TK2, transform_T23=transform_T23)
    assert roi_THW.shape == (len(frames_THWC), ROI, ROI) and roi_THW.dtype == np.uint8
    assert roi_THW.std() > 10, f"{name}: ROI is nearly uniform"
    in_roi_TK2 = roi_landmarks(track.landmarks_TK2, transform_T23)
    offset_T = np.linalg.norm(in_roi_TK2[:, MOUTH].mean(axis=1) - (ROI - 1) / 2, axis=1)
    assert offset_T.mean() < 1.5 and offset_T.max() < 6, f"{name}: mouth off-centre by {offset_T}"
    mouth_width_T = np.linalg.norm(in_roi_TK2[:, 54] - in_roi_TK2[:, 48], axis=1)
    assert 35 < mouth_width_T.mean() < 60, f"{name}: mouth {mouth_width_T.mean():.1f} px wide"
    assert mouth_width_T.std() < 6
    # The default call (transforms computed inside) crops the same pixels.
    np.testing.assert_array_equal(crop_mouth(frames_THWC, track.landmarks_TK2), roi_THW)


def test_roi_of_a_synthetic_face_lands_on_the_template() -> None:
    """A face that *is* the mean face, rotated, scaled and shifted in a frame, maps back onto the
    template: its mouth centre at the ROI centre and its eyes level."""
    angle, scale, shift = np.deg2rad(12.0), 180.0, np.array([300.0, 220.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks_TK2 = np.repeat((MEAN_FACE_K2 @ rotation.T * scale + shift)[None], 4, axis=0)
    in_roi_TK2 = roi_landmarks(landmarks_TK2, mouth_transforms(landmarks_TK2))
    np.testing.assert_allclose(in_roi_TK2[:, MOUTH].mean(axis=1), (ROI - 1) / 2, atol=1e-3)
    eyes_y = in_roi_TK2[:, [36, 45], 1]
    np.testing.assert_allclose(eyes_y[:, 0], eyes_y[:, 1], atol=1e-3)
    frames_THWC = np.full((4, 480, 640, 3), 128, dtype=np.uint8)
    assert crop_mouth(frames_THWC, landmarks_TK2).shape == (4, ROI, ROI)


def test_crop_mouth_rejects_mismatched_inputs() -> None:
    frames_THWC = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="T×68×2"):
        crop_mouth(frames_THWC, np.zeros((3, 5, 2)))
    with pytest.raises(ValueError, match="RGB uint8"):
        crop_mouth(frames_THWC.astype(np.float32), np.zeros((3, 68, 2)))


# --- failures and several faces ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face_anywhere_raises_face_error(kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "blank":
        frames_THWC = np.zeros((12, 360, 480, 3), dtype=np.uint8)
    else:
        frames_THWC = rng.integers(0, 256, size=(12, 360, 480, 3), dtype=np.uint8)
    with pytest.raises(FaceError, match="no face found in any frame"):
        detect_landmarks(frames_THWC)


def test_frames_must_be_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_landmarks(np.zeros((2, 32, 32), dtype=np.uint8))


def _face_tile(frames_THWC: np.ndarray, box_4: np.ndarray, margin: float) -> np.ndarray:
    """A 300×300 tile around the face (the face filling 1/margin of it), for every frame."""
    centre = (box_4[:2] + box_4[2:]) / 2
    half = (box_4[2] - box_4[0]) * margin / 2
    x0, y0 = (centre - half).round().astype(int)
    x1, y1 = (centre + half).round().astype(int)
    return np.stack([cv2.resize(f[y0:y1, x0:x1], (300, 300)) for f in frames_THWC])


@needs_fixtures
def test_two_faces_side_by_side_are_counted_and_the_largest_is_kept(two_clips) -> None:
    (frames_a, track_a), (frames_b, track_b) = two_clips
    big = _face_tile(frames_a, track_a.boxes_T4[0], margin=1.3)
    small = _face_tile(frames_b, track_b.boxes_T4[0], margin=1.8)
    n = min(len(big), len(small))
    for layout, big_left in (("big left", True), ("big right", False)):
        tiles = [big[:n], small[:n]] if big_left else [small[:n], big[:n]]
        both_THWC = np.ascontiguousarray(np.concatenate(tiles, axis=2))
        track = detect_landmarks(both_THWC)
        assert track.n_faces == 2, layout
        mouth_x = track.landmarks_TK2[:, MOUTH, 0].mean()
        assert (mouth_x < 300) == big_left, f"{layout}: kept the face at x={mouth_x:.0f}"
        alone = detect_landmarks(np.ascontiguousarray(big[:n]))
        shift = 0 if big_left else 300
        # The detector sees the pair at half the scale it sees the face alone, so its box, and
        # with it the landmark fit, shifts a little; on a 250-px face a few px is the same fit.
        gap = np.abs(track.landmarks_TK2[..., 0] - shift - alone.landmarks_TK2[..., 0]).mean()
        assert gap < 3.0, f"{layout}: landmarks moved by {gap:.2f} px with a second face beside"


def test_count_faces_ignores_small_boxes_and_one_off_hits() -> None:
    face = np.array([[100, 100, 300, 300]], dtype=np.float32)
    small = np.array([[0, 0, 60, 60]], dtype=np.float32)
    second = np.array([[400, 100, 560, 260]], dtype=np.float32)
    frames = [face, np.concatenate([face, small]), np.zeros((0, 4), np.float32), face]
    assert count_faces(frames, 0.5) == 1
    assert count_faces([*frames, np.concatenate([face, second])], 0.5) == 1
    two = np.concatenate([face, second])
    assert count_faces([two, face, two], 0.5) == 2
    assert count_faces([np.zeros((0, 4), np.float32)], 0.5) == 0


# --- smoothing and geometry ----------------------------------------------------------------


def test_savgol_keeps_quadratics_and_removes_jitter() -> None:
    t = np.arange(40, dtype=np.float64)
    quadratic_T2 = np.stack([0.5 * t**2 - 3 * t, 2 * t + 1], axis=1)
    np.testing.assert_allclose(savgol(quadratic_T2, 5)[2:-2], quadratic_T2[2:-2], atol=1e-9)
    line_T1 = (3 * t + 2)[:, None]
    np.testing.assert_allclose(savgol(line_T1, 5), line_T1, atol=1e-9)
    jitter_T1 = np.random.default_rng(0).normal(size=(400, 1))
    assert savgol(jitter_T1, 5).std() < 0.8 * jitter_T1.std()
    assert savgol(line_T1[:2], 5).shape == (2, 1)


def test_moving_average_shrinks_its_window_at_the_ends() -> None:
    values_T1 = np.array([[0.0], [3.0], [6.0], [30.0]])
    np.testing.assert_allclose(moving_average(values_T1, 3)[:, 0], [0.0, 3.0, 13.0, 30.0])


def test_similarity_fit_recovers_a_known_transform() -> None:
    src_NK2 = np.random.default_rng(1).normal(size=(3, 13, 2)) * 50
    truth_N4 = np.array([[1.2, 0.3, 5.0, -7.0], [0.5, -0.1, 100.0, 20.0], [1.0, 0.0, 0.0, 0.0]])
    dst_NK2 = apply_affine(params_to_matrix(truth_N4), src_NK2)
    for i in range(3):
        np.testing.assert_allclose(similarity_fit(src_NK2[i : i + 1], dst_NK2[i])[0], truth_N4[i])


def test_mean_face_is_symmetric_and_canonical() -> None:
    assert MEAN_FACE_K2.shape == (68, 2)
    np.testing.assert_allclose(MEAN_FACE_K2[MIRROR_K] * [-1, 1], MEAN_FACE_K2, atol=1e-3)
    eyes = MEAN_FACE_K2[36:42].mean(axis=0), MEAN_FACE_K2[42:48].mean(axis=0)
    np.testing.assert_allclose(eyes, [[-0.5, 0.0], [0.5, 0.0]], atol=1e-3)
    assert MEAN_FACE_K2[8, 1] > MEAN_FACE_K2[57, 1] > MEAN_FACE_K2[33, 1] > 0  # chin, lip, nose


# --- contact sheet -------------------------------------------------------------------------


def test_contact_sheet_writes_one_labelled_row_per_clip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rois = [rng.integers(0, 256, (30, ROI, ROI), dtype=np.uint8) for _ in range(3)]
    labels = ["clip-a", "clip-b", "a-very-long-clip-id-from-some-corpus/speaker/00017"]
    path = contact_sheet(rois, labels, tmp_path / "sheet" / "rois.png", n_frames=6)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.mode == "L"
        width, height = sheet.size
    assert width > 6 * ROI and height > 3 * ROI
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(rois, labels[:2], tmp_path / "bad.png")


def test_contact_sheet_with_column_captions(tmp_path: Path) -> None:
    tiles = [np.full((3, ROI, ROI), value, dtype=np.uint8) for value in (0, 128)]
    path = contact_sheet(
        tiles, ["closed", "open"], tmp_path / "v.png", 3, captions=["s1", "s2", "s3"]
    )
    with Image.open(path) as sheet:
        pixels = np.asarray(sheet)
    assert (pixels == 0).any() and (pixels == 128).any()
    with pytest.raises(ValueError, match="captions"):
        contact_sheet(tiles, ["closed", "open"], tmp_path / "w.png", 3, captions=["s1"])


# --- face_alignment backend ----------------------------------------------------------------


def test_face_alignment_without_staged_weights_names_the_files_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = FaceConfig(backend="face_alignment", weights_dir=str(tmp_path / "weights"))
    with pytest.raises(FaceError) as error:
        load_detector(config)
    message = str(error.value)
    assert str(tmp_path / "weights" / S3FD_FILE) in message
    assert str(tmp_path / "weights" / FAN_FILE) in message
    assert "never downloads" in message
    # Without weights_dir, the directory is torch's hub checkpoint cache under $TORCH_HOME.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FaceError, match=str(tmp_path / "torch" / "hub" / "checkpoints")):
        load_detector(FaceConfig(backend="face_alignment"))


def test_decode_heatmaps_finds_sub_cell_peaks() -> None:
    heatmaps_BKHW = np.zeros((1, 2, 64, 64), dtype=np.float32)
    heatmaps_BKHW[0, 0, 10, 20] = 1.0  # lone peak: no nudge
    heatmaps_BKHW[0, 1, 30, 40] = 1.0
    heatmaps_BKHW[0, 1, 30, 41] = 0.5  # right neighbour higher: a quarter cell to the right
    heatmaps_BKHW[0, 1, 29, 40] = 0.5  # upper neighbour higher: a quarter cell up
    np.testing.assert_allclose(decode_heatmaps(heatmaps_BKHW)[0], [[20, 10], [40.25, 29.75]])


@pytest.fixture(scope="module")
def staged_random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """S3FD and 2D-FAN-4 weights of the right architecture, random, in a fresh staging dir laid
    out as a $TORCH_HOME, so that face-alignment's own loader finds the same files."""
    if importlib.util.find_spec("face_alignment") is None:
        pytest.skip("face-alignment is not installed")
    return stage_random_weights(tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints")


def test_weight_file_names_match_the_installed_face_alignment() -> None:
    from face_alignment.api import models_urls as fan_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as s3fd_urls

    assert Path(urlparse(s3fd_urls["s3fd"]).path).name == S3FD_FILE
    assert Path(urlparse(fan_urls["2DFAN-4"]).path).name == FAN_FILE


@needs_fixtures
def test_face_alignment_backend_runs_end_to_end_on_staged_weights(
    staged_random_weights: Path,
) -> None:
    config = FaceConfig(
        backend="face_alignment",
        weights_dir=str(staged_random_weights),
        device="cpu",
        s3fd_long_side=160,  # CPU time: the untrained detector's boxes do not need detail
    )
    detector = load_detector(config)
    assert detector.name == "face_alignment"
    frames_THWC = first_frames(CLIPS[-1], n_frames=2)
    track = detect_landmarks(frames_THWC, config)
    assert track.backend == "face_alignment"
    assert track.landmarks_TK2.shape == (2, 68, 2) and track.landmarks_TK2.dtype == np.float32
    assert np.isfinite(track.landmarks_TK2).all()
    assert track.detected_T.all() and track.n_faces >= 1
    assert np.isfinite(track.boxes_T4).all()


@needs_fixtures
def test_face_alignment_backend_agrees_with_the_package_pipeline(
    staged_random_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same weights, same frame, same box: l2s's batched crop + heatmap decoding gives the
    landmarks face-alignment's own FaceAlignment gives (which rounds them to whole pixels), and
    the same S3FD boxes. The files are staged first, so its loader finds them and fetches nothing."""
    import face_alignment

    monkeypatch.setenv("TORCH_HOME", str(staged_random_weights.parents[1]))
    reference = face_alignment.FaceAlignment(
        face_alignment.LandmarksType.TWO_D,
        device="cpu",
        compile=False,
        face_detector_kwargs={"path_to_detector": str(staged_random_weights / S3FD_FILE)},
    )
    frame_HWC = first_frames(CLIPS[-1], n_frames=1)[0]
    ours = FanDetector(weights_dir=staged_random_weights, device="cpu", long_side=160)
    box_4 = np.array([155.0, 209.0, 399.0, 453.0], dtype=np.float32)
    expected_K2 = reference.get_landmarks_from_image(
        frame_HWC, detected_faces=[np.append(box_4, 1.0).astype(np.float64)]
    )[0]
    gap_K = np.linalg.norm(ours.fit_landmarks([frame_HWC], box_4[None])[0] - expected_K2, axis=1)
    # An untrained network's heatmaps have near-ties, so a few peaks land elsewhere.
    assert np.median(gap_K) < 1.0 and (gap_K < 3).mean() > 0.85, gap_K
    small_HWC = cv2.resize(frame_HWC, (160, 160), interpolation=cv2.INTER_AREA)
    expected_N4 = np.array(reference.face_detector.detect_from_image(small_HWC.copy()))[:, :4]
    found_N4 = ours.find_faces([small_HWC])[0]
    order = np.lexsort(found_N4.T[::-1]), np.lexsort(expected_N4.T[::-1])
    np.testing.assert_allclose(found_N4[order[0]], expected_N4[order[1]], atol=0.5)


def test_face_alignment_rejects_a_checkpoint_of_the_wrong_network(
    staged_random_weights: Path, tmp_path: Path
) -> None:
    (tmp_path / S3FD_FILE).write_bytes((staged_random_weights / S3FD_FILE).read_bytes())
    (tmp_path / FAN_FILE).write_bytes((staged_random_weights / S3FD_FILE).read_bytes())
    with pytest.raises(FaceError, match=f"{FAN_FILE}: not a usable FAN checkpoint"):
        load_detector(FaceConfig(backend="face_alignment", weights_dir=str(tmp_path), device="cpu"))
