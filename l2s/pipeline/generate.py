"""Generation of a whole split on Ray Data: feature shards → wavs + output-record shards.

    read   (Parquet scan)  the split's rows not yet generated, only the columns generation needs
    model  (actor pool)    the checkpoint loaded once per actor (a GPU actor when the cluster has
                           GPUs); each batch goes through `generate_clips`: the model over
                           the clips' 10-s windows (`l2s.infer.windows`) in padded forward
                           passes, the vocoder, and its records written as one whole shard
                           (`results/generated/part-*`)
The voice of every clip is chosen on the driver, over the whole split, by
`l2s.infer.voice.split_speakers` (the leave-one-out rule needs all of a speaker's clips). A rerun skips ids already in a shard, as
preprocessing does; a wav is written before the shard that names it, so a shard never points at a
missing wav.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from l2s import storage
from l2s.audio import write_wav
from l2s.config import AUDIO, MELS_PER_FRAME, VIDEO
from l2s.corpora import read_manifest
from l2s.infer.model import SpeechModel
from l2s.infer.vocoder import Vocoder, load_vocoder
from l2s.infer.voice import split_speakers
from l2s.models.text import normalize_text
from l2s.pipeline import shards
from l2s.schema import ManifestRow

COLUMNS = ["id", "speaker", "split", "transcript", "n_frames", "roi", "mel"]
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
    voices: dict[str, tuple[np.ndarray | None, str]],
    sources: dict[str, ManifestRow],
    out: str,
    vocode: Vocoder | None = None,
    oracle_text: bool = False,
) -> list[dict]:
    """One batch of feature rows (dicts with id, speaker, split, transcript, n_frames, roi, mel)
    → wavs in `out/wavs/` (written atomically) and one output record per clip, with the text the
    lips were read to say.

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
    said = model.speech(rois, [voices[c["id"]][0] for c in clips], per_pass=len(clips), texts=texts)
    mels = [s.mel_MF for s in said]
    mean_M = model.mean_mel(1)[:, 0].tolist()
    records = []
    wavs = vocode.batch(mels)
    for clip, speech, mel_MF, wav_S in zip(clips, said, mels, wavs, strict=True):
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
                "speaker_source": voices[clip["id"]][1],
                "wav": wav,
                "checkpoint": model.checkpoint,
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


class GenerateBatch:
    """Model actor: one `SpeechModel` per actor; writes one output shard per batch."""

    def __init__(
        self,
        checkpoint: str,
        out: str,
        voices: dict,
        sources: dict,
        vocoder: str | None,
        oracle_text: bool = False,
    ) -> None:
        self.model, self.vocode = SpeechModel.load(checkpoint), load_vocoder(vocoder)
        self.out, self.voices, self.sources = out, voices, sources
        self.oracle_text = oracle_text

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


def _resources(workers: int | None) -> tuple[int, dict]:
    """Actors and what each asks for: one GPU each when the cluster has GPUs, else one per CPU
    (asking for a fraction so that the Parquet scan always finds a CPU, ENVIRONMENT.md)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    if gpus:
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    return workers or max(cpus, 1), {"num_cpus": 0.75}


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
    from ray.data import ActorPoolStrategy
    from ray.data.expressions import col
    from tqdm import tqdm

    from l2s.pipeline.runtime import worker_env

    start = time.perf_counter()
    meta = shards.read_table(
        dataset, shards.FEATURES, ["id", "speaker", "speaker_embedding"], split
    )
    if meta is None or not len(meta):
        raise ValueError(f"{dataset}: no clips in split {split!r}")
    done = set(shards.read_column(out, GENERATED, "id"))
    todo = set(meta["id"].to_pylist()) - done
    summary = Summary(skipped=len(meta) - len(todo))
    if todo:
        voices = split_speakers(meta.to_pylist(), SpeechModel.load(checkpoint).speakers)
        voices = {k: v for k, v in voices.items() if k in todo}
        files = shards.shards_holding(dataset, shards.FEATURES, todo)
        fs, _ = storage.arrow_filesystem(files[0])
        remote = worker_env()
        ds = ray.data.read_parquet(
            [storage.arrow_filesystem(f)[1] for f in files],
            filesystem=fs,
            num_cpus=0.25,
            ray_remote_args=remote or None,
        ).select_columns(COLUMNS)
        ds = ds.filter(expr=col("split") == split, num_cpus=0.25, **remote)
        if done:
            ds = ds.filter(lambda row: row["id"] in todo, num_cpus=0.25, **remote)
        n_actors, actor_resources = _resources(workers)
        ds = ds.map_batches(
            GenerateBatch,
            fn_constructor_args=(
                checkpoint,
                out,
                voices,
                source_rows(dataset),
                vocoder,
                oracle_text,
            ),
            batch_size=batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=n_actors),
            **actor_resources,
            **remote,
        )
        bar = tqdm(total=len(todo), desc=f"generate {split}", unit="clip", disable=not progress)
        for result in ds.iter_rows():
            summary.clips += int(result["clips"])
            summary.speech_seconds += (
                int(result["frames"]) * MELS_PER_FRAME * AUDIO.hop_length / AUDIO.sample_rate
            )
            bar.update(int(result["clips"]))
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
