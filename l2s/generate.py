"""A trained checkpoint + mouth ROIs → log-mel → waveform, for single clips and whole splits.

    gen = Generator.load("out/runs/tiny")            # a run directory or one checkpoint
    mel_MF = gen.mel(roi_THW, gen.speaker("s01"))    # a named training speaker's voice
    mels = gen.mels([roi_a, roi_b], [voice_a, None])  # a padded batch in one forward pass

Whole splits run on Ray Data with model actors (`l2s.pipeline.generate.generate_split`); each actor
calls `generate_clips` on its batches.

The voice never comes from the target utterance's own audio (the mistake of Kim et al.'s test-time
embedding): a speaker seen in training takes its train-split mean embedding from the checkpoint;
an unseen one the mean over its *other* utterances in the split (leave-one-out), as a user's
reference clip would give; with neither, the model's "no speaker" input.

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, D embedding size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from l2s import storage
from l2s.audio import write_wav
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.corpora import read_manifest
from l2s.infer.checkpoint import load_model, resolve
from l2s.infer.speakers import SpeakerTable
from l2s.models.frontend import crop, normalize_video
from l2s.models.lip2speech import Lip2Speech
from l2s.pipeline import shards
from l2s.vocoder import Vocoder, load_vocoder

GENERATED = "generated"  # folder of output-record shards in a results folder
WAV_DIR = "wavs"


@dataclass
class Generator:
    model: Lip2Speech
    speakers: SpeakerTable
    checkpoint: str

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu") -> Generator:
        uri = resolve(checkpoint)
        model, speakers = load_model(uri, device)
        return cls(model, speakers, uri)

    def speaker(self, name: str) -> np.ndarray | None:
        """The train-split mean embedding of a speaker the model was trained on (None otherwise)."""
        return self.speakers.embedding(name)

    def mel(self, roi_THW: np.ndarray, speaker_D: np.ndarray | None) -> np.ndarray:
        """96×96 uint8 mouth ROIs at 25 fps → log-mel M×(4·T) (centre 88×88 crop, as in validation)."""
        return self.mels([roi_THW], [speaker_D])[0]

    @torch.inference_mode()
    def mels(
        self, rois: Sequence[np.ndarray], speakers: Sequence[np.ndarray | None]
    ) -> list[np.ndarray]:
        """Several clips in one forward pass (the server's dynamic batches): the ROIs are padded
        to the longest clip, the model masks the padding, and each mel is cut back to 4·T.
        A missing speaker is the zero vector, the model's "no speaker" input."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
        device = self.model.mel_mean_M.device
        lengths = [len(roi_THW) for roi_THW in rois]
        size = VIDEO.crop_size
        video_BTHW = torch.zeros(len(rois), max(lengths), size, size, dtype=torch.uint8)
        for b, roi_THW in enumerate(rois):
            video_BTHW[b, : lengths[b]] = torch.from_numpy(
                np.ascontiguousarray(crop(roi_THW, None))
            )
        lengths_B = None if len(set(lengths)) == 1 else torch.tensor(lengths, device=device)
        speaker_BD = None
        if any(s is not None for s in speakers):
            zeros_D = np.zeros(self.model.cfg.speaker_dim, np.float32)
            speaker_BD = torch.from_numpy(
                np.stack([zeros_D if s is None else np.asarray(s, np.float32) for s in speakers])
            ).to(device)
        output = self.model(normalize_video(video_BTHW).to(device), lengths_B, speaker_BD)
        mel_BMF = output.mel_post_BMF.float().cpu().numpy()
        return [mel_BMF[b, :, : n * MELS_PER_FRAME] for b, n in enumerate(lengths)]

    def mean_mel(self, n_frames: int) -> np.ndarray:
        """The constant mean-mel predictor (a baseline): the training mel mean at every frame."""
        mean_M = self.model.mel_mean_M.float().cpu().numpy()
        return np.repeat(mean_M[:, None], 4 * n_frames, axis=1)


def split_speakers(
    clips: Sequence[dict], table: SpeakerTable
) -> dict[str, tuple[np.ndarray | None, str]]:
    """Per clip id (clips: dicts with id, speaker, speaker_embedding): the embedding to condition
    on and where it came from ("train mean", "other utterances (k)" or "none"); never the clip's
    own embedding."""
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for clip in clips:
        by_speaker[clip["speaker"]].append(clip)
    chosen: dict[str, tuple[np.ndarray | None, str]] = {}
    for speaker, group in by_speaker.items():
        mean_D = table.embedding(speaker)
        for clip in group:
            if mean_D is not None:
                chosen[clip["id"]] = (mean_D, "train mean")
                continue
            others = [
                np.asarray(c["speaker_embedding"], np.float32)
                for c in group
                if c["id"] != clip["id"]
            ]
            others = [e for e in others if e.size]
            if others:
                chosen[clip["id"]] = (np.mean(others, axis=0), f"other utterances ({len(others)})")
            else:
                chosen[clip["id"]] = (None, "none")
    return chosen


def source_videos(dataset: str) -> dict[str, str]:
    """Clip id → source video URI, from the manifest the dataset was made from ({} if it is gone)."""
    manifest = shards.read_metadata(dataset).get("source_manifest")
    if not manifest or not storage.exists(manifest):
        return {}
    return {row.id: row.video for row in read_manifest(manifest)}


def generate_clips(
    gen: Generator,
    clips: Sequence[dict],
    voices: dict[str, tuple[np.ndarray | None, str]],
    videos: dict[str, str],
    out: str,
    vocode: Vocoder | None = None,
) -> list[dict]:
    """One batch of feature rows (dicts with id, speaker, split, transcript, n_frames, roi, mel)
    → wavs in `out/wavs/` (written atomically) and one output record per clip.

    `vocode`: a `l2s.vocoder` vocoder (default Griffin-Lim); its name is kept in each record so
    that scoring sends the ground-truth mel through the same one."""
    vocode = vocode or load_vocoder(None)
    rois = [
        np.frombuffer(c["roi"], np.uint8).reshape(c["n_frames"], VIDEO.roi_size, VIDEO.roi_size)
        for c in clips
    ]
    mels = gen.mels(rois, [voices[c["id"]][0] for c in clips])
    mean_M = gen.mean_mel(1)[:, 0].tolist()
    records = []
    wavs = vocode.batch(mels)
    for clip, mel_MF, wav_S in zip(clips, mels, wavs, strict=True):
        wav = storage.join(out, WAV_DIR, f"{clip['id']}.wav")
        write_wav(wav, wav_S)
        records.append(
            {
                "id": clip["id"],
                "speaker": clip["speaker"],
                "split": clip["split"],
                "transcript": clip["transcript"],
                "video": videos.get(clip["id"]),
                "n_frames": int(clip["n_frames"]),
                "mel": mel_MF.astype(np.float32).tobytes(),
                "target_mel": clip["mel"],
                "mean_mel": mean_M,
                "speaker_source": voices[clip["id"]][1],
                "wav": wav,
                "checkpoint": gen.checkpoint,
                "vocoder": vocode.name,
            }
        )
    return records


def read_generated(results: str) -> list[dict]:
    """Every output record of a generated split (`results/generated/part-*.parquet`), by id."""
    table = shards.read_table(results, GENERATED)
    if table is None:
        raise FileNotFoundError(f"{results}: nothing generated yet ({GENERATED}/ is empty)")
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def mel_of(record: dict, column: str) -> np.ndarray:
    return np.frombuffer(record[column], dtype=np.float32).reshape(AUDIO.n_mels, -1)
