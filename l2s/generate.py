"""A trained checkpoint + mouth ROIs → log-mel → waveform, for single clips and whole splits.

    gen = Generator.load("out/runs/tiny")            # a run directory or one checkpoint
    mel_MF = gen.mel(roi_THW, gen.speaker("s01"))    # a named training speaker's voice
    generate_split("out/features", "test", "out/runs/tiny", "out/results/test")

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
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from l2s import storage
from l2s.audio import griffin_lim, write_wav
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.corpora import read_manifest
from l2s.models.frontend import normalize_video
from l2s.models.lip2speech import Lip2Speech
from l2s.pipeline import shards
from l2s.schema import FeatureRow
from l2s.train.checkpoint import load_checkpoint, resolve
from l2s.train.data import crop
from l2s.train.speakers import SpeakerTable

GENERATED_FILE = "generated.parquet"
WAV_DIR = "wavs"


@dataclass
class Generator:
    model: Lip2Speech
    speakers: SpeakerTable
    checkpoint: str

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu") -> Generator:
        uri = resolve(checkpoint)
        model, _, speakers = load_checkpoint(uri, device)
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
    rows: Sequence[FeatureRow], table: SpeakerTable
) -> dict[str, tuple[np.ndarray | None, str]]:
    """Per clip id: the embedding to condition on and where it came from ("train mean",
    "other utterances (k)" or "none"); never the clip's own embedding."""
    by_speaker: dict[str, list[FeatureRow]] = defaultdict(list)
    for row in rows:
        by_speaker[row.speaker].append(row)
    chosen: dict[str, tuple[np.ndarray | None, str]] = {}
    for speaker, group in by_speaker.items():
        mean_D = table.embedding(speaker)
        for row in group:
            if mean_D is not None:
                chosen[row.id] = (mean_D, "train mean")
                continue
            others = [np.asarray(r.speaker_embedding, np.float32) for r in group if r.id != row.id]
            others = [e for e in others if e.size]
            if others:
                chosen[row.id] = (np.mean(others, axis=0), f"other utterances ({len(others)})")
            else:
                chosen[row.id] = (None, "none")
    return chosen


def source_videos(dataset: str) -> dict[str, str]:
    """Clip id → source video URI, from the manifest the dataset was made from ({} if it is gone)."""
    manifest = shards.read_metadata(dataset).get("source_manifest")
    if not manifest or not storage.exists(manifest):
        return {}
    return {row.id: row.video for row in read_manifest(manifest)}


def generate_split(dataset: str, split: str, checkpoint: str, out: str) -> Path:
    """Generate every clip of one split: `out/wavs/<id>.wav` (Griffin-Lim) and `out/generated.parquet`
    (predicted and ground-truth mels, the mean-mel baseline's level, the speaker source, the video).

    Resumable: clips whose wav exists are not generated again (wavs are written atomically).
    """
    rows = sorted(shards.read_features(dataset, split=split), key=lambda r: r.id)
    if not rows:
        raise ValueError(f"{dataset}: no clips in split {split!r}")
    gen = Generator.load(checkpoint)
    speakers = split_speakers(rows, gen.speakers)
    videos = source_videos(dataset)
    out_dir = Path(out)
    records = []
    for row in tqdm(rows, desc=f"generate {split}", unit="clip"):
        speaker_D, source = speakers[row.id]
        mel_MF = gen.mel(row.roi_THW(), speaker_D)
        wav_path = out_dir / WAV_DIR / f"{row.id}.wav"
        if not wav_path.exists():
            write_wav(wav_path, griffin_lim(mel_MF))
        records.append(
            {
                "id": row.id,
                "speaker": row.speaker,
                "split": row.split,
                "transcript": row.transcript,
                "video": videos.get(row.id),
                "n_frames": row.n_frames,
                "mel": mel_MF.astype(np.float32).tobytes(),
                "target_mel": row.mel,
                "mean_mel": gen.mean_mel(1)[:, 0].tolist(),
                "speaker_source": source,
                "wav": str(wav_path),
                "checkpoint": gen.checkpoint,
            }
        )
    shards.write_table(pa.Table.from_pylist(records), str(out_dir / GENERATED_FILE))
    return out_dir / GENERATED_FILE


def mel_of(record: dict, column: str) -> np.ndarray:
    return np.frombuffer(record[column], dtype=np.float32).reshape(AUDIO.n_mels, -1)
