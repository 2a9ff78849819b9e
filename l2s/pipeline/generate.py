"""Generation of a whole split on Ray Data: feature shards → wavs + output-record shards.

    read   (Parquet scan)  the split's rows not yet generated, only the columns generation needs
    model  (actor pool)    the checkpoint loaded once per actor (a GPU actor when the cluster has
                           GPUs); each batch goes through `generate_clips`: the model over
                           the clips' 10-s windows (`l2s.infer.windows`) in padded forward
                           passes, the vocoder, and its records written as one whole shard
                           (`results/generated/part-*`)
The voices come from `l2s.infer.voice.SplitVoices`, counted on the driver over the whole split
(the leave-one-out rule needs all of a speaker's clips) a shard at a time, and held per speaker,
so neither the driver nor an actor holds anything per clip but ids and manifest rows. A rerun
skips ids already in a shard, as preprocessing does; a wav is written before the shard that names
it, so a shard never points at a missing wav.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from l2s import storage
from l2s.audio import write_wav
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.corpora import read_manifest
from l2s.infer.model import SpeechModel
from l2s.infer.vocoder import Vocoder, load_vocoder
from l2s.infer.voice import SplitVoices
from l2s.models.text import normalize_text
from l2s.pipeline import shards
from l2s.pipeline.adapter import Resources, Stage
from l2s.schema import ManifestRow

COLUMNS = ["id", "speaker", "speaker_embedding", "split", "transcript", "n_frames", "roi", "mel"]
GENERATED = "generated"  # folder of output-record shards in a results folder
WAV_DIR = "wavs"


def source_rows(dataset: str) -> dict[str, ManifestRow]:
    """Clip id → its manifest row (source video and segment), from the manifest the dataset was
    made from ({} if it is gone)."""
    manifest = shards.read_metadata(dataset).get("source_manifest")
    if not manifest or not storage.exists(manifest):
        return {}
    return {row.id: row for row in read_manifest(manifest)}


def generate_clips(
    model: SpeechModel,
    clips: Sequence[dict],
    voices: SplitVoices,
    sources: dict[str, ManifestRow],
    out: str,
    vocode: Vocoder | None = None,
    oracle_text: bool = False,
) -> list[dict]:
    """One batch of feature rows (dicts with id, speaker, speaker_embedding, split, transcript,
    n_frames, roi, mel) → wavs in `out/wavs/` (written atomically) and one output record per
    clip, each spoken in the voice `voices` gives it, with the text the lips were read to say.

    The model runs over each clip's windows as `l2s speak` does (`SpeechModel.speech`), so that
    scoring measures the speech `speak` gives; a forward pass takes as many windows as the batch
    has clips. `vocode`: a `l2s.infer.vocoder` vocoder (default Griffin-Lim); its name is kept in
    each record so that scoring sends the ground-truth mel through the same one. `oracle_text`: a
    text-conditioned model hears the clip's transcript instead of its lips' reading (the ceiling
    of text conditioning; never what l2s gives a user)."""
    vocode = vocode or load_vocoder(None)
    rois = [
        np.frombuffer(c["roi"], np.uint8).reshape(c["n_frames"], VIDEO.roi_size, VIDEO.roi_size)
        for c in clips
    ]
    texts = [normalize_text(c["transcript"] or "") for c in clips] if oracle_text else None
    chosen = [voices.of(c["speaker"], c["speaker_embedding"]) for c in clips]
    voices_D = [voice_D for voice_D, _ in chosen]
    said = model.speech(rois, voices_D, per_pass=len(clips), texts=texts)
    mels = [s.mel_MF for s in said]
    mean_M = model.mean_mel(1)[:, 0].tolist()
    records = []
    wavs = vocode.batch(mels)
    for clip, (_, voice_source), speech, mel_MF, wav_S in zip(
        clips, chosen, said, mels, wavs, strict=True
    ):
        wav = storage.join(out, WAV_DIR, f"{clip['id']}.wav")
        write_wav(wav, wav_S)
        source = sources.get(clip["id"])
        records.append(
            {
                "id": clip["id"],
                "speaker": clip["speaker"],
                "split": clip["split"],
                "transcript": clip["transcript"],
                "text": speech.text,
                "heard": "transcript" if oracle_text else "lips",
                "video": source.video if source else None,
                "start": source.start if source else 0.0,  # where the clip starts in the video
                "n_frames": int(clip["n_frames"]),
                "mel": mel_MF.astype(np.float32).tobytes(),
                "target_mel": clip["mel"],
                "mean_mel": mean_M,
                "speaker_source": voice_source,
                "wav": wav,
                "checkpoint": model.checkpoint,
                "vocoder": vocode.name,
            }
        )
    return records


def read_generated(results: str, limit: int | None = None) -> list[dict]:
    """The output records of a generated split (`results/generated/part-*.parquet`) by id: all,
    or the first `limit` (then only those are kept, a shard in memory at a time)."""
    ids = sorted(shards.read_column(results, GENERATED, "id"))
    if not ids:
        raise FileNotFoundError(f"{results}: nothing generated yet ({GENERATED}/ is empty)")
    wanted = pa.array(ids[:limit] if limit is not None else ids, pa.string())
    records = []
    for _, part in shards.iter_tables(results, GENERATED):
        records.extend(part.filter(pc.is_in(part["id"], value_set=wanted)).to_pylist())
    return sorted(records, key=lambda r: r["id"])


def mel_of(record: dict, column: str) -> np.ndarray:
    return np.frombuffer(record[column], dtype=np.float32).reshape(AUDIO.n_mels, -1)


@dataclass
class Summary:
    clips: int = 0
    skipped: int = 0  # generated by an earlier run
    speech_seconds: float = 0.0
    seconds: float = 0.0  # wall-clock, Ray start-up excluded

    @property
    def real_time_factor(self) -> float:
        """Wall-clock seconds per second of speech generated (all workers together)."""
        return self.seconds / self.speech_seconds if self.speech_seconds else float("nan")


class GenerateBatch(Stage):
    """Model actors: one `SpeechModel` and vocoder per actor (on the actor's GPU when the cluster
    has GPUs, else on three quarters of a CPU, so that the Parquet scan always finds a CPU);
    writes one output shard per batch."""

    cpu = Resources(cpus=0.75)
    gpu = Resources(cpus=1, gpus=1)

    def __init__(
        self,
        checkpoint: str,
        out: str,
        voices: SplitVoices,
        sources: dict,
        vocoder: str | None,
        batch_size: int,
        oracle_text: bool = False,
    ) -> None:
        self.checkpoint, self.vocoder, self.batch_size = checkpoint, vocoder, batch_size
        self.out, self.voices, self.sources = out, voices, sources
        self.oracle_text = oracle_text

    def setup(self) -> None:
        import torch

        # Ray makes only the actor's own GPU visible, when it was given one.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SpeechModel.load(self.checkpoint, device)
        self.vocode = load_vocoder(self.vocoder, device)

    def __call__(self, batch: dict) -> dict:
        clips = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        records = generate_clips(
            self.model, clips, self.voices, self.sources, self.out, self.vocode, self.oracle_text
        )
        name = shards.shard_name([r["id"] for r in records])
        shards.write_table(pa.Table.from_pylist(records), storage.join(self.out, GENERATED, name))
        frames = sum(r["n_frames"] for r in records)
        return {"clips": np.array([len(records)]), "frames": np.array([frames])}


def generate_split(
    dataset: str,
    split: str,
    checkpoint: str,
    out: str,
    *,
    batch_size: int = 8,
    workers: int | None = None,
    vocoder: str | None = None,
    progress: bool = True,
    oracle_text: bool = False,
) -> Summary:
    """Generate every clip of `split` not yet in `out`, on the current Ray (see the module doc).
    `oracle_text`: see `generate_clips`."""
    import ray
    from ray.data.expressions import col
    from tqdm import tqdm

    from l2s.pipeline.adapter import apply, remote_args

    start = time.perf_counter()
    done = set(shards.read_column(out, GENERATED, "id"))
    voices = SplitVoices(SpeechModel.load(checkpoint).speakers)
    files, clips, todo = [], 0, 0
    for uri, part in shards.iter_tables(
        dataset, shards.FEATURES, ["id", "speaker", "speaker_embedding"], split
    ):
        voices.add(part["speaker"].to_pylist(), part["speaker_embedding"].to_pylist())
        left = sum(i not in done for i in part["id"].to_pylist())
        clips, todo = clips + len(part), todo + left
        if left:
            files.append(uri)
    if not clips:
        raise ValueError(f"{dataset}: no clips in split {split!r}")
    summary = Summary(skipped=clips - todo)
    if todo:
        fs, _ = storage.arrow_filesystem(files[0])
        light = remote_args()
        ds = ray.data.read_parquet(
            [storage.arrow_filesystem(f)[1] for f in files], filesystem=fs, **light
        ).select_columns(COLUMNS)
        ds = ds.filter(expr=col("split") == split, **light)
        if done:
            ds = ds.filter(expr=col("id").not_in(sorted(done)), **light)
        stage = GenerateBatch(
            checkpoint,
            out,
            voices,
            source_rows(dataset),
            vocoder,
            batch_size=batch_size,
            oracle_text=oracle_text,
        )
        ds = apply(ds, stage, workers=workers)
        bar = tqdm(total=todo, desc=f"generate {split}", unit="clip", disable=not progress)
        for result in ds.iter_rows():
            summary.clips += int(result["clips"])
            summary.speech_seconds += (
                int(result["frames"]) * MELS_PER_FRAME * AUDIO.hop_length / AUDIO.sample_rate
            )
            bar.update(int(result["clips"]))
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
