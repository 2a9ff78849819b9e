"""Preprocessing end to end: synthetic and real clips → features; kill and rerun; s3://."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from l2s import storage
from l2s.corpora import scan, write_manifest
from l2s.face import mouth_transforms, roi_landmarks
from l2s.features import FeatureConfig, clip_features, decode_clip
from l2s.pipeline import shards
from l2s.pipeline.preprocess import PreprocessConfig, preprocess
from l2s.schema import ErrorRow

MOUTH = slice(48, 68)


def test_synthetic_corpus_becomes_features_with_none_failing(
    synth_features: str, synth_corpus: Path
) -> None:
    rows = shards.read_features(synth_features)
    assert not shards.read_errors(synth_features)
    assert len(rows) == len(list(synth_corpus.glob("*/*/*.mp4")))
    assert len({r.id for r in rows}) == len(rows)
    for row in rows:
        roi, mel = row.roi_THW(), row.mel_MF()
        assert roi.shape[1:] == (96, 96) and mel.shape == (80, 4 * row.n_frames)
        assert np.isclose(np.linalg.norm(row.speaker_embedding), 1, atol=1e-4)
    meta = shards.read_metadata(synth_features)
    assert meta["counts"] == {"features": len(rows), "errors": 0}
    assert meta["audio"]["n_fft"] == 640 and meta["speaker_encoder"]["dim"] == 256


def test_mouth_roi_is_centred_on_the_true_mouth(synth_features: str, synth_corpus: Path) -> None:
    """Ground-truth mouth landmarks from the generator, mapped into the ROI, sit where the
    detected ones do: mean error ≤ 3 px at 96×96."""
    errors = []
    for row in shards.read_features(synth_features):
        speaker, utt = row.id.split("/")
        sidecar = next(synth_corpus.glob(f"*/{speaker}/{utt}.json"))
        truth_TK2 = np.array(json.loads(sidecar.read_text())["landmarks"], dtype=np.float32)
        detected_TK2 = row.landmarks_TK2()
        transform_T23 = mouth_transforms(detected_TK2)
        in_roi = roi_landmarks(truth_TK2[: row.n_frames], transform_T23)[:, MOUTH]
        errors.append(
            np.linalg.norm(
                in_roi - roi_landmarks(detected_TK2, transform_T23)[:, MOUTH], axis=-1
            ).mean()
        )
        centre = in_roi.mean(axis=1).mean(axis=0)
        assert np.abs(centre - 47.5).max() < 6, (
            f"{row.id}: true mouth centre at {centre} in the ROI"
        )
    print(
        f"mean mouth-landmark error in the 96×96 ROI: {np.mean(errors):.2f} px (max clip {np.max(errors):.2f})"
    )
    assert np.mean(errors) <= 3.0


def test_real_clips_have_a_face_on_95_percent_of_frames(real_clips: list[Path]) -> None:
    from l2s.schema import ManifestRow

    cfg = FeatureConfig()
    for clip in real_clips:
        row = ManifestRow(
            id=clip.stem, speaker=clip.stem, split="test", video=str(clip), corpus="folder"
        )
        features = clip_features(decode_clip(row, cfg), cfg)
        print(f"{clip.name}: face on {features.face_ratio:.1%} of {features.n_frames} frames")
        assert features.face_ratio >= 0.95
        assert features.roi_THW().shape == (features.n_frames, 96, 96)


def _shard_count(root: Path) -> int:
    return len(list((root / "features").glob("part-*.parquet")))


def test_a_segment_has_the_features_of_its_part_of_the_whole_clip(real_clips: list[Path]) -> None:
    """A manifest row may name a segment of a longer video (LRS3 pretrain): on the real variable
    frame rate clip, the segment's frames and samples are exactly the whole clip's at the same
    times; its mel is the whole mel's but for the two frames at each edge (the STFT's padding sees
    the cut); its landmarks and mouth ROIs differ only where tracking and smoothing see the cut."""
    from l2s.schema import ManifestRow

    cfg = FeatureConfig()
    [clip] = [c for c in real_clips if c.name == "video-retalking__face_1.mp4"]
    whole_row = ManifestRow(id="whole", speaker="s", split="test", video=str(clip), corpus="folder")
    k0, n = 40, 60  # frames: the segment is 1.6–4.0 s
    segment_row = replace(whole_row, id="segment", start=k0 / 25, duration=n / 25)
    whole, segment = decode_clip(whole_row, cfg), decode_clip(segment_row, cfg)
    assert np.array_equal(segment.frames_THWC, whole.frames_THWC[k0 : k0 + n])
    assert np.array_equal(segment.audio_S, whole.audio_S[k0 * 640 : (k0 + n) * 640])

    whole_features, features = clip_features(whole, cfg), clip_features(segment, cfg)
    assert features.n_frames == n and features.mel_MF().shape == (80, 4 * n)
    mel_MF = whole_features.mel_MF()[:, 4 * k0 : 4 * (k0 + n)]
    np.testing.assert_allclose(features.mel_MF()[:, 2:-2], mel_MF[:, 2:-2], atol=1e-5)
    landmark_error_T = np.linalg.norm(
        features.landmarks_TK2() - whole_features.landmarks_TK2()[k0 : k0 + n], axis=-1
    ).mean(axis=1)
    roi_error_T = np.abs(
        features.roi_THW().astype(int) - whole_features.roi_THW()[k0 : k0 + n]
    ).mean(axis=(1, 2))
    print(f"landmarks {landmark_error_T.mean():.2f} px, ROIs {roi_error_T.mean():.2f} grey levels")
    assert landmark_error_T.mean() < 0.5 and landmark_error_T.max() < 3
    assert roi_error_T.mean() < 0.5 and roi_error_T.max() < 5


def test_killed_job_resumes_and_equals_an_uninterrupted_run(
    synth_manifest: str, synth_features: str, ray_local, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    command = [sys.executable, "jobs/preprocess.py", synth_manifest, str(out), "--shard-size", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    job = subprocess.Popen(command, cwd=Path(__file__).parents[1], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while _shard_count(out) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    partial = shards.done_ids(str(out))
    total = len(shards.read_features(synth_features))
    assert 0 < len(partial) < total, f"kill landed after {len(partial)} of {total} clips"
    summary = preprocess(synth_manifest, str(out), PreprocessConfig(shard_size=2))
    # A batch of the killed job still in flight may land after `partial` was read.
    assert summary.skipped >= len(partial) and summary.skipped + summary.features == total
    resumed = {r.id: r for r in shards.read_features(str(out))}
    reference = {r.id: r for r in shards.read_features(synth_features)}
    written = Counter(shards.read_column(str(out), "features", "id"))
    assert written == Counter(list(reference)), "every clip exactly once"
    for id_, row in reference.items():
        assert resumed[id_].roi == row.roi and resumed[id_].mel == row.mel
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


def test_a_clip_written_twice_is_kept_once(synth_features: str, tmp_path: Path) -> None:
    """A straggling batch of a killed job can write clips that the rerun wrote in another shard."""
    out = str(tmp_path / "dup")
    rows = shards.read_features(synth_features)[:5]
    shards.write_shard(out, rows[:3], [])
    shards.write_shard(out, rows[2:], [])  # rows[2] twice, in differently named shards
    again = ErrorRow(id=rows[4].id, video="v.mp4", stage="decode", reason="straggler")
    shards.write_shard(out, [], [again])  # an error row for a clip that has features
    assert len(shards.read_column(out, "features", "id")) == 6
    assert shards.drop_duplicates(out) == 2
    assert Counter(shards.read_column(out, "features", "id")) == Counter(r.id for r in rows)
    assert shards.read_errors(out) == [] and not list(Path(out).rglob("*.tmp"))
    assert {r.id: r.mel for r in shards.read_features(out)} == {r.id: r.mel for r in rows}
    assert shards.drop_duplicates(out) == 0


def test_s3_manifest_videos_and_features_in_a_bucket(
    synth_corpus: Path, bucket: str, ray_local
) -> None:
    """Videos, manifest and features all live in a bucket on a real S3-compatible server."""
    fs, _ = storage.filesystem(bucket)
    clips = sorted(synth_corpus.glob("test/*/*"))
    for path in clips:
        fs.put_file(str(path), f"{bucket}/corpus/{path.relative_to(synth_corpus)}")
    rows, skips = scan("synthetic", f"{bucket}/corpus")
    assert len(rows) == len([c for c in clips if c.suffix == ".mp4"]) and not skips
    write_manifest(rows, f"{bucket}/manifest.parquet")
    summary = preprocess(
        f"{bucket}/manifest.parquet", f"{bucket}/features", PreprocessConfig(shard_size=2)
    )
    assert summary.features == len(rows) and not summary.errors
    features = shards.read_features(f"{bucket}/features")
    assert sorted(r.id for r in features) == sorted(r.id for r in rows)
    assert shards.read_metadata(f"{bucket}/features")["counts"]["features"] == len(rows)
    again = preprocess(
        f"{bucket}/manifest.parquet", f"{bucket}/features", PreprocessConfig(shard_size=2)
    )
    assert again.features == 0 and again.skipped == len(rows)
