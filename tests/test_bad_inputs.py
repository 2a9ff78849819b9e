"""Bad input never stops the job and is never dropped silently (issue 3).

Every kind of bad media a real corpus holds is built for real in a temporary folder, from the
real fixture clips, PyAV and byte surgery: random bytes, a file cut in half (index at the end, and
index at the front), zero bytes, a missing file, no video stream, no audio stream, no face
anywhere, a silent audio track, and clips that are too long (with and without a stated duration).
Each must fail at the pure functions with its exact stage and a reason that names the problem.
Awkward but usable clips must give features: a face missing for a stretch (interpolated), two
faces (the largest kept), 30, 29.97 and variable frame rates (resampled to 25 fps by timestamp).
Then one `preprocess` over a manifest mixing all of them with good synthetic clips must finish
with every manifest id in exactly one of the feature and error tables.

Letters in shape names: T frames, H×W pixels, C colour channels (RGB), S audio samples, K landmarks.
"""

from __future__ import annotations

import re
import tracemalloc
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import remux_faststart

from l2s.audio import load_audio
from l2s.config import AUDIO, VIDEO
from l2s.corpora import scan, write_manifest
from l2s.face import load_detector
from l2s.features import ClipError, FeatureConfig, clip_features, decode_clip
from l2s.pipeline import shards
from l2s.pipeline.preprocess import PreprocessConfig, preprocess
from l2s.schema import ManifestRow
from l2s.speaker import SpeakerEncoder
from l2s.video import iter_frames, read_frames, write_video

SR = AUDIO.sample_rate
SAMPLES_PER_FRAME = SR // VIDEO.fps
LIMIT_SECONDS = 8.0
CFG = FeatureConfig(max_seconds=LIMIT_SECONDS)
LONG_SECONDS = 12
# Blank frames spliced into a 50-frame real clip: the face is missing on 20 % of frames.
BLANK = slice(20, 30)
STAMP_BITS = 8


@dataclass(frozen=True)
class Refusal:
    stage: str
    reason: str  # a regular expression the reason must match
    names_file: bool  # the decoder's own message, which must carry the clip's URI


BAD = {
    "random_bytes": Refusal("decode", r"cannot open as a video \(.*Invalid data", True),
    "truncated": Refusal("decode", r"cannot open as a video \(.*Invalid data", True),
    "truncated_faststart": Refusal("decode", r"video decode failed at \d+\.\d\d s", True),
    "zero_bytes": Refusal("read", r"is empty \(0 bytes\)", True),
    "missing": Refusal("read", r"cannot read .*No such file", True),
    "audio_only": Refusal("decode", r"no video stream", True),
    "video_only": Refusal("audio", r"no audio stream", False),
    "no_face": Refusal("face", r"no face found in any frame: searched \d+ of 50 frames", False),
    "silent_audio": Refusal("speaker", r"no speaker embedding .*waveform is silent", False),
    "too_long": Refusal(
        "decode", rf"clip is {LONG_SECONDS} s long; the limit is {LIMIT_SECONDS:.0f} s", False
    ),
    "too_long_no_duration": Refusal(
        "decode",
        rf"runs past the limit of {LIMIT_SECONDS:.0f} s while decoding "
        r"\(its container states no duration\)",
        False,
    ),
}
USABLE = ("blank_stretch", "two_faces", "fps30", "fps29.97", "vfr_irregular", "vfr_fixture")


@dataclass(frozen=True)
class Media:
    paths: dict[str, Path]
    pts: dict[str, np.ndarray]  # source frame times (s) of the stamped frame-rate clips


# --- building bad media ----------------------------------------------------------------------


def real_clip(path: Path, seconds: float, fps: float = VIDEO.fps) -> tuple[np.ndarray, np.ndarray]:
    """The first `seconds` of a real clip: frames_THWC resampled to `fps`, and its 16 kHz audio."""
    frames_THWC = np.stack(list(islice(iter_frames(path, fps=fps), round(seconds * fps))))
    return frames_THWC, load_audio(path, SR)[: round(seconds * SR)]


def write_av(
    path: Path,
    frames_THWC: np.ndarray,
    rate: Fraction,
    audio_S: np.ndarray | None = None,
    pts_ms: np.ndarray | None = None,
    fmt: str = "mp4",
    options: dict | None = None,
) -> None:
    """h264 (+ AAC) at any rate, or at the given frame times in ms (variable frame rate)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = frames_THWC.shape[2], frames_THWC.shape[1]
        video.pix_fmt, video.options = "yuv420p", {"preset": "veryfast", "threads": "1"}
        if pts_ms is not None:
            video.codec_context.time_base = video.time_base = Fraction(1, 1000)
        audio = None if audio_S is None else out.add_stream("aac", rate=SR, layout="mono")
        for t, image_HWC in enumerate(frames_THWC):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_HWC), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[t]), Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            encode_audio(out, audio, audio_S)


def encode_audio(out: av.container.OutputContainer, stream, audio_S: np.ndarray) -> None:
    frame = av.AudioFrame.from_ndarray(
        audio_S.astype(np.float32)[None], format="flt", layout="mono"
    )
    frame.sample_rate, frame.pts = SR, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def stamp(frames_THWC: np.ndarray) -> np.ndarray:
    """Write each frame's index as black/white blocks along the top edge (read back by `read_stamp`)."""
    frames_THWC = frames_THWC.copy()
    side = frames_THWC.shape[2] // (2 * STAMP_BITS)
    for t, image_HWC in enumerate(frames_THWC):
        for bit in range(STAMP_BITS):
            image_HWC[:side, bit * side : (bit + 1) * side] = 255 * ((t >> bit) & 1)
    return frames_THWC


def read_stamp(image_HWC: np.ndarray) -> int:
    side = image_HWC.shape[1] / (2 * STAMP_BITS)
    centres = [
        image_HWC[int(side / 2), int((bit + 0.5) * side)].mean() for bit in range(STAMP_BITS)
    ]
    return sum(1 << bit for bit, value in enumerate(centres) if value > 128)


def moving_gradient(n_frames: int, height: int = 240, width: int = 320) -> np.ndarray:
    x_W = np.arange(width)
    return np.stack(
        [
            np.broadcast_to(
                ((x_W + 4 * t) % 256).astype(np.uint8)[None, :, None], (height, width, 3)
            )
            for t in range(n_frames)
        ]
    )


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, real_clips: list[Path]) -> Media:
    """Every bad and awkward clip of this file, built once from the real fixtures."""
    root = tmp_path_factory.mktemp("bad_media")
    by_name = {p.stem.rsplit("_", 1)[-1]: p for p in real_clips}
    speaker_3, speaker_5 = by_name["3"], by_name["5"]
    paths = {name: root / f"{name}.mp4" for name in (*BAD, *USABLE)}
    paths["audio_only"] = root / "audio_only.m4a"
    paths["too_long_no_duration"] = root / "too_long_no_duration.mkv"
    paths["vfr_fixture"] = by_name["1"]
    pts: dict[str, np.ndarray] = {}

    rng = np.random.default_rng(0)
    paths["random_bytes"].write_bytes(rng.bytes(200_000))
    fixture_bytes = speaker_5.read_bytes()
    paths["truncated"].write_bytes(fixture_bytes[: len(fixture_bytes) // 2])
    faststart = root / "faststart.mp4"
    remux_faststart(speaker_5, faststart)
    faststart_bytes = faststart.read_bytes()
    paths["truncated_faststart"].write_bytes(faststart_bytes[: len(faststart_bytes) // 2])
    paths["zero_bytes"].write_bytes(b"")

    frames_THWC, audio_S = real_clip(speaker_3, seconds=2)
    with av.open(str(paths["audio_only"]), "w", format="mp4") as out:
        encode_audio(out, out.add_stream("aac", rate=SR, layout="mono"), audio_S)
    write_video(paths["video_only"], frames_THWC)
    noise_THWC = rng.integers(0, 256, (50, 240, 320, 3), dtype=np.uint8)
    write_video(paths["no_face"], noise_THWC, audio_S=audio_S)
    write_video(paths["silent_audio"], frames_THWC, audio_S=np.zeros_like(audio_S))

    long_THWC = moving_gradient(LONG_SECONDS * VIDEO.fps)
    long_S = np.resize(audio_S, LONG_SECONDS * SR)
    write_video(paths["too_long"], long_THWC, audio_S=long_S)
    # A live-recorded Matroska (as browsers' MediaRecorder writes WebM) states no duration.
    write_av(
        paths["too_long_no_duration"],
        long_THWC,
        Fraction(VIDEO.fps),
        long_S,
        fmt="matroska",
        options={"live": "1"},
    )

    blank_THWC = frames_THWC.copy()
    blank_THWC[BLANK] = 0
    write_video(paths["blank_stretch"], blank_THWC, audio_S=audio_S)
    other_THWC, _ = real_clip(speaker_5, seconds=2)
    height = frames_THWC.shape[1]
    small = height * 3 // 4
    right_THWC = np.zeros((len(frames_THWC), height, small, 3), np.uint8)
    top = (height - small) // 2
    right_THWC[:, top : top + small] = [cv2.resize(f, (small, small)) for f in other_THWC]
    write_video(
        paths["two_faces"], np.concatenate([frames_THWC, right_THWC], axis=2), audio_S=audio_S
    )

    frames30_THWC = stamp(real_clip(speaker_3, seconds=3, fps=30)[0])
    audio5_S = load_audio(speaker_3, SR)
    n = len(frames30_THWC)
    irregular_ms = np.concatenate([[0], np.cumsum(rng.integers(20, 50, size=n - 1))])
    for name, rate, times in (
        ("fps30", Fraction(30), np.arange(n) / 30),
        ("fps29.97", Fraction(30000, 1001), np.arange(n) * 1001 / 30000),
        ("vfr_irregular", None, irregular_ms / 1000),
    ):
        end = 2 * times[-1] - times[-2]  # the last frame lasts as long as the gap before it
        pts_ms = np.round(times * 1000).astype(int) if rate is None else None
        audio_S = audio5_S[: round(float(end) * SR)]
        write_av(paths[name], frames30_THWC, rate or Fraction(30), audio_S, pts_ms=pts_ms)
        pts[name] = times
    return Media(paths=paths, pts=pts)


def manifest_row(name: str, path: Path) -> ManifestRow:
    return ManifestRow(
        id=f"bad/{name}", speaker=name, split="test", video=str(path), corpus="folder"
    )


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    speaker_encoder = SpeakerEncoder()
    speaker_encoder.setup()
    return speaker_encoder


def features_of(media: Media, name: str, encoder: SpeakerEncoder | None = None):
    row = manifest_row(name, media.paths[name])
    return clip_features(decode_clip(row, CFG), CFG, load_detector(CFG.face), encoder)


# --- the pure functions: exact stage, a reason that names the problem ------------------------


@pytest.mark.parametrize("name", list(BAD))
def test_bad_clip_is_refused_with_its_stage_and_reason(
    media: Media, encoder: SpeakerEncoder, name: str
) -> None:
    expected = BAD[name]
    with pytest.raises(ClipError) as refused:
        features_of(media, name, encoder)
    error = refused.value
    assert error.stage == expected.stage, error
    assert re.search(expected.reason, error.reason), error.reason
    # Decoder messages name the clip by its URI, never by the in-memory buffer it was read into.
    assert "BytesIO" not in error.reason and " at 0x" not in error.reason, error.reason
    if expected.names_file:
        assert str(media.paths[name]) in error.reason


def test_long_clip_is_refused_from_probe_before_decoding(media: Media) -> None:
    row = manifest_row("too_long", media.paths["too_long"])
    tracemalloc.start()
    try:
        with pytest.raises(ClipError, match="clip is 12 s long; the limit is 8 s"):
            decode_clip(row, CFG)
        _, refused_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decoded = decode_clip(row, FeatureConfig(max_seconds=60))
        _, decoded_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    frames_bytes = decoded.frames_THWC.nbytes
    assert len(decoded.frames_THWC) == LONG_SECONDS * VIDEO.fps
    # The control shows what the measurement sees when frames are decoded; the refusal read
    # the file's bytes and its header only.
    assert decoded_peak > frames_bytes
    assert refused_peak < 2 * media.paths["too_long"].stat().st_size + 2**20 < frames_bytes / 10


@pytest.mark.parametrize("name", ["fps30", "fps29.97", "vfr_irregular"])
def test_frame_rates_are_resampled_to_25_fps_by_timestamp(media: Media, name: str) -> None:
    path, times = media.paths[name], media.pts[name]
    duration = len(read_frames(path)) / VIDEO.fps
    clip = decode_clip(manifest_row(name, path), CFG)
    n_frames = len(clip.frames_THWC)
    source_seconds = 2 * times[-1] - times[-2]
    assert abs(n_frames - source_seconds * VIDEO.fps) <= 1
    # Video and audio lengths agree within one 25 fps frame before the clip is trimmed to both.
    assert abs(duration * VIDEO.fps - len(load_audio(path)) / SAMPLES_PER_FRAME) <= 1
    assert len(clip.audio_S) == n_frames * SAMPLES_PER_FRAME
    # Output frame k shows the source frame nearest in time to k / 25 s.
    for k, image_HWC in enumerate(clip.frames_THWC):
        shown = read_stamp(image_HWC)
        offsets = np.abs(times - k / VIDEO.fps)
        assert offsets[shown] <= offsets.min() + 1e-9, (k, shown, int(np.argmin(offsets)))


@pytest.mark.parametrize("name", ["fps30", "vfr_irregular"])
def test_a_segment_is_cut_by_timestamp_and_by_sample(media: Media, name: str) -> None:
    """Segment frame k shows the source frame nearest in time to start + k / 25 s (a start
    between two frames included); its audio starts at sample round(start · 16000)."""
    path, times = media.paths[name], media.pts[name]
    start, duration = 0.53, 1.2
    clip = decode_clip(replace(manifest_row(name, path), start=start, duration=duration), CFG)
    assert len(clip.frames_THWC) == 30
    for k, image_HWC in enumerate(clip.frames_THWC):
        shown = read_stamp(image_HWC)
        offsets = np.abs(times - (start + k / VIDEO.fps))
        assert offsets[shown] <= offsets.min() + 1e-9, (k, shown, int(np.argmin(offsets)))
    first = round(start * SR)
    assert np.array_equal(clip.audio_S, load_audio(path)[first : first + round(duration * SR)])


def test_a_segment_is_held_to_the_limit_and_to_the_clip(media: Media) -> None:
    """The length limit is the segment's, so a long recording's segments are fine; a segment the
    clip does not hold, or a row that is no segment at all, is refused saying so."""
    row = manifest_row("too_long", media.paths["too_long"])  # 12 s; the limit is 8 s
    clip = decode_clip(replace(row, start=9.0, duration=2.0), CFG)
    assert len(clip.frames_THWC) == 50
    refusals = {
        (2.0, 9.0): "segment is 9 s long; the limit is 8 s",
        (3.0, None): r"clip is 9 s long after 3\.00 s; the limit is 8 s",
        (12.5, 1.0): r"segment starts at 12\.50 s, after the clip's end \(12\.00 s\)",
        (11.0, 2.0): r"segment 11\.00–13\.00 s runs past the clip's end: 1\.00 s of it has",
    }
    for (start, duration), reason in refusals.items():
        with pytest.raises(ClipError, match=reason):
            decode_clip(replace(row, start=start, duration=duration), CFG)
    with pytest.raises(ValueError, match=r"bad/too_long: segment start -1\.0 s"):
        replace(row, start=-1.0)
    with pytest.raises(ValueError, match=r"bad/too_long: segment duration 0\.0 s is not positive"):
        replace(row, duration=0.0)


def test_large_frames_are_downscaled_while_decoding(tmp_path: Path) -> None:
    """`max_side` shrinks the long side in FFmpeg's scaler, keeps the aspect ratio, and gives what
    an area resize of the full frame gives; a frame within the limit is left as it is."""
    y_HW, x_HW = np.mgrid[0:360, 0:960]
    image_HWC = np.stack([x_HW * 255 // 959, y_HW * 255 // 359, (x_HW + y_HW) % 256], -1)
    path = tmp_path / "wide.mp4"
    tone_S = 0.1 * np.sin(np.arange(SR) * 2 * np.pi * 220 / SR).astype(np.float32)
    frames_THWC = np.repeat(image_HWC[None].astype(np.uint8), VIDEO.fps, 0)
    write_av(path, frames_THWC, Fraction(VIDEO.fps), audio_S=tone_S)
    full_HWC = next(iter_frames(path))
    small_HWC = next(iter_frames(path, max_side=480))
    assert small_HWC.shape == (180, 480, 3) and small_HWC.flags.c_contiguous
    resized_HWC = cv2.resize(full_HWC, (480, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(small_HWC.astype(int) - resized_HWC).mean() < 2.0
    assert np.array_equal(next(iter_frames(path, max_side=960)), full_HWC)
    clip = decode_clip(manifest_row("wide", path), FeatureConfig(max_side=480))
    assert clip.frames_THWC.shape[1:] == (180, 480, 3) and clip.scale == 0.5


def test_real_variable_frame_rate_clip_keeps_audio_and_video_in_step(media: Media) -> None:
    path = media.paths["vfr_fixture"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        seconds = float(stream.duration * stream.time_base)
        n_source_frames = stream.frames
    assert n_source_frames < seconds * 30 - 10  # variable: fewer frames than its nominal 30 fps
    video_frames = len(read_frames(path))
    assert abs(video_frames - seconds * VIDEO.fps) <= 1
    assert abs(video_frames - len(load_audio(path)) / SAMPLES_PER_FRAME) <= 1
    clip = decode_clip(manifest_row("vfr_fixture", path), CFG)
    assert len(clip.frames_THWC) >= video_frames - 1


def test_face_missing_for_a_stretch_is_interpolated(media: Media) -> None:
    row = features_of(media, "blank_stretch")
    n_frames = 50
    assert row.n_frames == n_frames
    blank = BLANK.stop - BLANK.start
    assert row.face_ratio == pytest.approx((n_frames - blank) / n_frames, abs=1 / n_frames)
    landmarks_TK2 = row.landmarks_TK2()
    assert np.isfinite(landmarks_TK2).all()
    # Landmarks over the blank stretch are bridged from the frames around it, not zeros.
    before, after = landmarks_TK2[BLANK.start - 1], landmarks_TK2[BLANK.stop]
    low, high = np.minimum(before, after) - 3, np.maximum(before, after) + 3
    bridged = landmarks_TK2[BLANK]
    assert ((bridged >= low) & (bridged <= high)).mean() > 0.95
    assert row.roi_THW().shape == (n_frames, VIDEO.roi_size, VIDEO.roi_size)


def test_two_faces_keep_the_largest_and_record_both(media: Media) -> None:
    row = features_of(media, "two_faces")
    assert row.n_faces == 2
    assert row.face_ratio == 1.0
    with av.open(str(media.paths["two_faces"])) as container:
        height = container.streams.video[0].codec_context.height
    # The larger face fills the left square (height × height); the smaller one is on the right.
    landmarks_TK2 = row.landmarks_TK2()
    assert landmarks_TK2[..., 0].max() < height
    assert landmarks_TK2[..., 0].mean() == pytest.approx(height / 2, abs=height / 6)


# --- one job over all of it ------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_one_job_over_every_bad_input_finishes_and_accounts_for_each(
    ray_local, synth_corpus: Path, media: Media, tmp_path: Path
) -> None:
    good, _ = scan("synthetic", str(synth_corpus))
    good = good[:3]
    rows = [manifest_row(name, media.paths[name]) for name in (*BAD, *USABLE)] + good
    manifest = str(tmp_path / "manifest.parquet")
    write_manifest(rows, manifest)
    out = str(tmp_path / "features")

    summary = preprocess(manifest, out, PreprocessConfig(features=CFG, shard_size=4))

    feature_rows = shards.read_features(out)
    error_rows = shards.read_errors(out)
    feature_ids = [r.id for r in feature_rows]
    error_ids = [r.id for r in error_rows]
    assert len(feature_ids) == len(set(feature_ids)) and len(error_ids) == len(set(error_ids))
    assert not set(feature_ids) & set(error_ids)
    assert set(feature_ids) | set(error_ids) == {r.id for r in rows}  # none dropped
    assert set(feature_ids) == {f"bad/{name}" for name in USABLE} | {r.id for r in good}

    video_of = {r.id: r.video for r in rows}
    for error in error_rows:
        expected = BAD[error.id.removeprefix("bad/")]
        assert error.stage == expected.stage, error
        assert re.search(expected.reason, error.reason), error
        assert error.video == video_of[error.id]
        if expected.names_file:
            assert error.video in error.reason

    stages = Counter(refusal.stage for refusal in BAD.values())
    assert summary.features == len(feature_ids)
    assert summary.errors == stages
    metadata = shards.read_metadata(out)
    assert metadata["counts"] == {"features": len(feature_ids), "errors": len(BAD)}
    assert metadata["errors_by_stage"] == dict(stages)

    by_id = {r.id: r for r in feature_rows}
    assert 0.5 <= by_id["bad/blank_stretch"].face_ratio < 1
    assert by_id["bad/two_faces"].n_faces == 2
    assert all(by_id[r.id].face_ratio == 1.0 and by_id[r.id].n_faces == 1 for r in good)
