"""The synthetic talking-face corpus: speakers, sentences, splits, and one clip at a time.

Layout and transcripts follow LRS3: `<split>/<speaker>/<utt>.mp4` (h264 + AAC 16 kHz mono) and
`<utt>.txt` (`Text:  UPPER CASE`, `Conf:`, then word timings), plus `<utt>.json` with the ground
truth of the generator: phoneme timeline, per-frame 68 landmarks and mouth parameters.
Splits: `train`, `val`, `test` (sentences never used in train or val) and `test_unseen_speakers`
(speakers absent from every other split, each on a base photograph no seen speaker uses when
the face bank allows it). Everything is a function of the seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from l2s.config import AUDIO, VIDEO
from l2s.synth import face as facemod
from l2s.synth.espeak import Voice, synthesize
from l2s.synth.sentences import sample_sentence
from l2s.synth.visemes import mouth_track
from l2s.video import write_video

GENERATOR_VERSION = 1
# AAC codes 1024-sample blocks: clips last a multiple of 5120 samples (8 frames) so that audio
# and video durations are exactly equal after encoding.
BLOCK_FRAMES = 8
# The base photos' genders (l2s/synth/faces/face*.png), so a speaker's voice matches the face.
FACE_IS_FEMALE = (False, False, True, True, True)
# espeak-ng variants that pocketsphinx understands best (WER 0.03–0.22 on GRID sentences, measured);
# m3, m4, m7, m8 and f4 are croakier voices it often misses.
MALE_VARIANTS = ("m1", "m2", "m5", "m6")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f5")


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    speakers: int = 4
    utterances: int = 50
    unseen_speakers: int = 1
    seed: int = 0
    vocab: str = "grid"

    def __post_init__(self) -> None:
        if self.speakers < 1 or self.utterances < 3:
            raise ValueError(
                "need at least 1 speaker and 3 utterances per speaker (train/val/test)"
            )
        if self.unseen_speakers < 0:
            raise ValueError("unseen_speakers must be >= 0")
        if self.vocab not in ("grid", "open"):
            raise ValueError(f"unknown vocabulary {self.vocab!r}: use 'grid' or 'open'")


@dataclass(frozen=True, kw_only=True)
class Speaker:
    id: str
    voice: Voice
    appearance: facemod.Appearance


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    split: str
    speaker: Speaker
    utt: str
    text: str
    seed: tuple[int, ...]

    @property
    def relpath(self) -> str:
        return f"{self.split}/{self.speaker.id}/{self.utt}"


def make_speakers(cfg: SynthConfig) -> list[Speaker]:
    n_faces = len(FACE_IS_FEMALE)
    seen_faces = max(n_faces - cfg.unseen_speakers, 1)
    speakers = []
    for k in range(cfg.speakers + cfg.unseen_speakers):
        rng = np.random.default_rng([cfg.seed, 1, k])
        face = k % seen_faces if k < cfg.speakers else (seen_faces + k - cfg.speakers) % n_faces
        female = FACE_IS_FEMALE[face]
        variants = FEMALE_VARIANTS if female else MALE_VARIANTS
        voice = Voice(
            variant=variants[rng.integers(len(variants))],
            rate=int(rng.integers(135, 165)),
            pitch=int(rng.integers(35, 65)),
            pitch_range=int(rng.integers(30, 80)),
        )
        appearance = facemod.Appearance(
            face=face,
            width=float(rng.uniform(0.93, 1.07)),
            tint=tuple(float(x) for x in rng.uniform(0.88, 1.12, size=3)),
            gamma=float(rng.uniform(0.85, 1.15)),
            side_light=float(rng.uniform(-0.2, 0.2)),
        )
        speakers.append(Speaker(id=f"spk{k:02d}", voice=voice, appearance=appearance))
    return speakers


def plan(cfg: SynthConfig) -> list[ClipSpec]:
    """Every clip of the corpus: which speaker says which sentence in which split."""
    speakers = make_speakers(cfg)
    seen, unseen = speakers[: cfg.speakers], speakers[cfg.speakers :]
    n_test = max(1, round(0.1 * cfg.utterances))
    n_val = max(1, round(0.05 * cfg.utterances))
    n_train = cfg.utterances - n_test - n_val
    rng = np.random.default_rng([cfg.seed, 2])
    n_test_sentences = n_test * (len(seen) + len(unseen))
    test_sentences: list[str] = []
    while len(test_sentences) < n_test_sentences:
        sentence = sample_sentence(rng, cfg.vocab)
        if sentence not in test_sentences:
            test_sentences.append(sentence)
    held_out = set(test_sentences)

    def other_sentence() -> str:
        while (sentence := sample_sentence(rng, cfg.vocab)) in held_out:
            pass
        return sentence

    clips = []
    tests = iter(test_sentences)
    for speaker in seen:
        counts = (("train", n_train), ("val", n_val), ("test", n_test))
        for split, count in counts:
            for _ in range(count):
                text = next(tests) if split == "test" else other_sentence()
                clips.append((split, speaker, text))
    clips.extend(
        ("test_unseen_speakers", speaker, next(tests)) for speaker in unseen for _ in range(n_test)
    )
    specs = []
    for i, (split, speaker, text) in enumerate(clips):
        utt = f"{sum(1 for s, sp, _ in clips[:i] if sp is speaker) + 1:05d}"
        specs.append(
            ClipSpec(split=split, speaker=speaker, utt=utt, text=text, seed=(cfg.seed, 3, i))
        )
    return specs


def _blinks(n_frames: int, rng: np.random.Generator, fps: int) -> np.ndarray:
    """Eyelid closure per frame: blinks every 2–6 s, each about 150 ms."""
    closure = np.zeros(n_frames)
    t = rng.uniform(0.3, 3.0)
    while t * fps < n_frames:
        centre = t * fps
        frames = np.arange(n_frames)
        closure = np.maximum(closure, np.clip(1 - np.abs(frames - centre) / (0.075 * fps), 0, 1))
        t += rng.uniform(2.0, 6.0)
    return closure


def render_clip(spec: ClipSpec) -> dict:
    """Speech, frames and ground truth for one clip (pure; no files)."""
    rng = np.random.default_rng(spec.seed)
    speech = synthesize(spec.text, spec.speaker.voice)
    wav = resample_poly(speech.wav_S, AUDIO.sample_rate, speech.sample_rate).astype(np.float32)
    wav *= 0.7 / max(float(np.abs(wav).max()), 1e-6)
    lead_in = float(rng.uniform(0.2, 0.4))
    samples_per_block = AUDIO.sample_rate * BLOCK_FRAMES // VIDEO.fps
    total = (
        int(lead_in * AUDIO.sample_rate) + len(wav) + int(rng.uniform(0.2, 0.4) * AUDIO.sample_rate)
    )
    total = -(-total // samples_per_block) * samples_per_block
    audio = np.zeros(total, np.float32)
    start = int(lead_in * AUDIO.sample_rate)
    audio[start : start + len(wav)] = wav
    lead_in = start / AUDIO.sample_rate
    phonemes = [(p, a + lead_in, b + lead_in) for p, a, b in speech.phonemes]
    words = [(w, a + lead_in, b + lead_in) for w, a, b in speech.words]
    n_frames = total * VIDEO.fps // AUDIO.sample_rate
    # Average the mouth over each frame's exposure (three instants): a little motion blur.
    times = np.arange(n_frames)[:, None] / VIDEO.fps + np.array([0.25, 0.5, 0.75]) / VIDEO.fps
    params_TP = mouth_track(phonemes, times.reshape(-1)).reshape(n_frames, 3, -1).mean(1)
    blink_T = _blinks(n_frames, rng, VIDEO.fps)
    motion_T4 = facemod.head_motion(n_frames, rng, VIDEO.fps)
    face = facemod.speaker_face(spec.speaker.appearance)
    frames, landmarks = zip(
        *(facemod.render(face, params_TP[t], blink_T[t], motion_T4[t]) for t in range(n_frames)),
        strict=True,
    )
    return {
        "frames_THWC": np.stack(frames),
        "audio_S": audio,
        "landmarks_TK2": np.stack(landmarks),
        "params_TP": params_TP,
        "phonemes": phonemes,
        "words": words,
    }


def lrs3_transcript(text: str, words: list[tuple[str, float, float]]) -> str:
    lines = [f"Text:  {text.upper()}", "Conf:  4", "", "WORD START END ASDSCORE"]
    lines += [f"{w.upper()} {a:.2f} {b:.2f} 5.0" for w, a, b in words]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_clip(spec: ClipSpec, root: Path) -> str:
    """Render and write one clip; the mp4 is written last, so its presence means 'done'."""
    base = root / spec.relpath
    base.parent.mkdir(parents=True, exist_ok=True)
    clip = render_clip(spec)
    sidecar = {
        "id": f"{spec.speaker.id}/{spec.utt}",
        "speaker": spec.speaker.id,
        "split": spec.split,
        "text": spec.text.upper(),
        "fps": VIDEO.fps,
        "sample_rate": AUDIO.sample_rate,
        "voice": asdict(spec.speaker.voice),
        "appearance": asdict(spec.speaker.appearance),
        "phonemes": [[p, round(a, 4), round(b, 4)] for p, a, b in clip["phonemes"]],
        "words": [[w.upper(), round(a, 4), round(b, 4)] for w, a, b in clip["words"]],
        "mouth_parameters": ["open", "width", "round", "tuck"],
        "mouth": np.round(clip["params_TP"], 4).tolist(),
        "landmarks": np.round(clip["landmarks_TK2"], 2).tolist(),
    }
    _write_text(base.with_suffix(".txt"), lrs3_transcript(spec.text, clip["words"]))
    _write_text(base.with_suffix(".json"), json.dumps(sidecar))
    write_video(
        base.with_suffix(".mp4"), clip["frames_THWC"], VIDEO.fps, clip["audio_S"], AUDIO.sample_rate
    )
    return spec.relpath


def _done(spec: ClipSpec, root: Path) -> bool:
    base = root / spec.relpath
    return all(base.with_suffix(s).exists() for s in (".mp4", ".txt", ".json"))


def _worker_init() -> None:
    # One clip per process at a time: keep BLAS / OpenCV from oversubscribing the cores.
    import cv2

    cv2.setNumThreads(1)


def generate(
    cfg: SynthConfig, out: str | Path, workers: int | None = None, progress: bool = True
) -> Iterator[str]:
    """Write the corpus under `out`, yielding each clip's relative path as it completes.

    Clips already written are skipped, so an interrupted run resumes where it stopped.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "l2s.synth", "version": GENERATOR_VERSION, "config": asdict(cfg)}
    meta_path = root / "corpus.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["config"] != meta["config"]:
        raise FileExistsError(
            f"{root} holds a synthetic corpus made with another config; use a new folder"
        )
    _write_text(meta_path, json.dumps(meta, indent=2))
    todo = [spec for spec in plan(cfg) if not _done(spec, root)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc="synth", unit="clip", disable=not progress)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_init
    ) as pool:
        futures = [pool.submit(write_clip, spec, root) for spec in todo]
        for future in as_completed(futures):
            bar.update()
            yield future.result()
    bar.close()
