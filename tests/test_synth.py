"""The synthetic corpus generator: files, sync, speech content, lip shapes, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dlib
import jiwer
import numpy as np
import pytest
from pocketsphinx import Decoder

from l2s.audio import load_audio
from l2s.synth.corpus import SynthConfig, generate, plan, write_clip
from l2s.synth.facebank import predictor_path
from l2s.synth.sentences import grid_jsgf
from l2s.synth.visemes import viseme_names
from l2s.video import probe, read_frames

SPLITS = ("train", "val", "test", "test_unseen_speakers")


def clips(root: Path, split: str = "*") -> list[Path]:
    return sorted(root.glob(f"{split}/*/*.mp4"))


def transcript(mp4: Path) -> str:
    first = mp4.with_suffix(".txt").read_text().splitlines()[0]
    assert first.startswith("Text:  "), f"{mp4}: not an LRS3 transcript"
    return first.split(":", 1)[1].strip()


def test_layout_splits_and_transcripts(synth_corpus: Path) -> None:
    for split in SPLITS:
        assert clips(synth_corpus, split), f"no clips in {split}"
    for mp4 in clips(synth_corpus):
        assert mp4.with_suffix(".json").exists()
        assert transcript(mp4) == transcript(mp4).upper()
    seen_text = {transcript(p) for split in ("train", "val") for p in clips(synth_corpus, split)}
    assert not seen_text & {transcript(p) for p in clips(synth_corpus, "test")}
    unseen = {p.parent.name for p in clips(synth_corpus, "test_unseen_speakers")}
    assert unseen and not unseen & {p.parent.name for p in clips(synth_corpus, "train")}


def test_every_clip_decodes_at_25_fps_with_audio_in_sync(synth_corpus: Path) -> None:
    for mp4 in clips(synth_corpus):
        info = probe(mp4)
        assert info.fps == 25 and info.has_audio and info.codec == "h264"
        n_frames = len(read_frames(mp4, gray=True))
        audio_seconds = len(load_audio(mp4)) / 16000
        assert abs(n_frames / 25 - audio_seconds) <= 1 / 25, mp4


def test_speech_says_the_transcript(synth_corpus: Path) -> None:
    decoder = Decoder(lm=None, loglevel="ERROR")
    decoder.add_jsgf_string("grid", grid_jsgf())
    decoder.activate_search("grid")
    references, hypotheses = [], []
    for mp4 in clips(synth_corpus):
        pcm = (np.clip(load_audio(mp4), -1, 1) * 32767).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        references.append(transcript(mp4).lower())
        hypotheses.append(decoder.hyp().hypstr if decoder.hyp() else "")
    wer = jiwer.wer(references, hypotheses)
    print(f"pocketsphinx GRID-grammar WER on {len(references)} clips: {wer:.3f}")
    assert wer <= 0.25


def _mouth_darkness(frame_HW: np.ndarray, landmarks_K2: np.ndarray) -> float:
    """Fraction of dark pixels in the lips' bounding box (the open cavity is dark)."""
    x0, y0 = landmarks_K2[48:68].min(0).astype(int)
    x1, y1 = landmarks_K2[48:68].max(0).astype(int) + 1
    nose_x, nose_y = landmarks_K2[33].astype(int)
    skin = np.median(frame_HW[nose_y - 5 : nose_y + 5, nose_x - 5 : nose_x + 5])
    return float((frame_HW[y0:y1, x0:x1] < 0.5 * skin).mean())


def test_mouth_opening_follows_the_audio_envelope(synth_corpus: Path) -> None:
    correlations = []
    for mp4 in clips(synth_corpus, "train"):
        landmarks = np.array(json.loads(mp4.with_suffix(".json").read_text())["landmarks"])
        frames = read_frames(mp4, gray=True)
        wav = load_audio(mp4)[: len(frames) * 640]
        envelope = np.sqrt((wav.reshape(len(frames), 640) ** 2).mean(1))
        opening = [_mouth_darkness(f, lm) for f, lm in zip(frames, landmarks, strict=True)]
        correlations.append(np.corrcoef(opening, envelope)[0, 1])
    print(f"mouth opening vs audio envelope: mean r = {np.mean(correlations):.2f}")
    assert np.mean(correlations) >= 0.3


def test_visemes_give_measurably_different_mouth_shapes(synth_corpus: Path) -> None:
    """An independent detector (dlib's 68-point predictor) sees the viseme differences."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(predictor_path())
    shapes: dict[str, list[tuple[float, float]]] = {}
    wanted = {"bilabial", "open", "close_back", "close_front"}
    for mp4 in clips(synth_corpus):
        phonemes = json.loads(mp4.with_suffix(".json").read_text())["phonemes"]
        frames = read_frames(mp4, gray=True)
        for label, start, end in phonemes:
            viseme, k = viseme_names(label)[0], round((start + end) / 2 * 25)
            if viseme not in wanted or k >= len(frames) or not (boxes := detector(frames[k], 0)):
                continue
            points = np.array([(p.x, p.y) for p in predictor(frames[k], boxes[0]).parts()], float)
            width = np.linalg.norm(points[54] - points[48])
            eyes = np.linalg.norm(points[45] - points[36])
            shapes.setdefault(viseme, []).append(
                (np.linalg.norm(points[62] - points[66]) / width, width / eyes)
            )
    mean = {v: np.mean(s, axis=0) for v, s in shapes.items()}
    print({v: np.round(m, 3).tolist() for v, m in mean.items()})
    assert mean["open"][0] - mean["bilabial"][0] >= 0.04, (
        "open vowels must open the lips more than p/b/m"
    )
    assert mean["close_front"][1] - mean["close_back"][1] >= 0.03, (
        "/i/ must spread the lips more than /u/"
    )


def test_dlib_finds_the_face_on_at_least_99_percent_of_frames(synth_corpus: Path) -> None:
    detector = dlib.get_frontal_face_detector()
    found = total = 0
    for mp4 in clips(synth_corpus):
        for frame in read_frames(mp4, gray=True):
            found += bool(detector(frame, 0))
            total += 1
    print(f"dlib HOG found the face on {found}/{total} frames")
    assert found / total >= 0.99


def _digest(base: Path) -> dict[str, str]:
    return {
        s: hashlib.sha256(base.with_suffix(s).read_bytes()).hexdigest()
        for s in (".mp4", ".txt", ".json")
    }


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    spec = plan(SynthConfig(speakers=2, utterances=4, seed=3))[0]
    for name in ("a", "b"):
        write_clip(spec, tmp_path / name)
    assert _digest(tmp_path / "a" / spec.relpath) == _digest(tmp_path / "b" / spec.relpath)
    other = plan(SynthConfig(speakers=2, utterances=4, seed=4))[0]
    write_clip(other, tmp_path / "c")
    assert (
        _digest(tmp_path / "c" / other.relpath)[".mp4"]
        != _digest(tmp_path / "a" / spec.relpath)[".mp4"]
    )


def test_rerun_writes_only_missing_clips(synth_corpus: Path) -> None:
    cfg = SynthConfig(speakers=2, utterances=10, unseen_speakers=1, seed=7)
    victim = clips(synth_corpus, "val")[0]
    before = _digest(victim.with_suffix(""))
    victim.unlink()
    rewritten = list(generate(cfg, synth_corpus, progress=False))
    assert rewritten == [str(victim.relative_to(synth_corpus).with_suffix(""))]
    assert _digest(victim.with_suffix("")) == before
    assert list(generate(cfg, synth_corpus, progress=False)) == []


def test_another_config_in_the_same_folder_is_refused(synth_corpus: Path) -> None:
    with pytest.raises(FileExistsError, match="another config"):
        list(generate(SynthConfig(speakers=3, utterances=10, seed=7), synth_corpus, progress=False))
