"""Preprocessing on Ray Data: manifest → feature shards + error table + metadata.

Two stages (`l2s.pipeline.adapter`) around the pure functions of l2s.features:
  Decode  (CPU tasks)   manifest rows → 25 fps frames + 16 kHz audio, or the reason it failed
  Extract (actor pool)  face detector and speaker encoder loaded once per actor (GPU actors when
                        the cluster has GPUs and the detector uses one); landmarks → mouth ROIs,
                        log-mel, embedding; each batch is written as one whole Parquet shard
                        (see l2s.pipeline.shards).
The extract stage writes its own shards instead of `Dataset.write_parquet` so that a shard is
complete or absent and its ids are known: that is what makes a killed job resumable with no
duplicates. `serial_preprocess` runs the same functions in one process (the benchmark's baseline).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from l2s import __version__, storage
from l2s.config import AUDIO, VIDEO
from l2s.corpora import read_manifest
from l2s.features import ClipError, DecodedClip, FeatureConfig, clip_features, decode_clip
from l2s.pipeline import shards
from l2s.pipeline.adapter import Resources, Stage
from l2s.schema import SCHEMA_VERSION, ErrorRow, FeatureRow, ManifestRow


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    shard_size: int = 8  # clips per Parquet shard (and per extract batch)
    speaker_embeddings: bool = True
    workers: int | None = None  # extract actors; None: one per CPU (or per GPU)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


@dataclass
class Summary:
    features: int = 0
    errors: Counter = field(default_factory=Counter)
    skipped: int = 0  # already done by an earlier run
    seconds: float = 0.0
    video_seconds: float = 0.0


def _pack(clip: DecodedClip) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, frames=clip.frames_THWC, audio=clip.audio_S, scale=clip.scale)
    return buffer.getvalue()


def _unpack(row: ManifestRow, payload: bytes) -> DecodedClip:
    arrays = np.load(io.BytesIO(payload))
    return DecodedClip(
        row=row, frames_THWC=arrays["frames"], audio_S=arrays["audio"], scale=float(arrays["scale"])
    )


MANIFEST_FIELDS = tuple(ManifestRow.__dataclass_fields__)


def _rows(batch: dict) -> list[ManifestRow]:
    n = len(batch["id"])
    return [ManifestRow(**{k: _plain(batch[k][i]) for k in MANIFEST_FIELDS}) for i in range(n)]


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


class Decode(Stage):
    """CPU tasks: decode each clip, or record why it cannot be decoded."""

    cpu = Resources(cpus=0.5)

    def __init__(self, cfg: FeatureConfig, batch_size: int) -> None:
        self.cfg, self.batch_size = cfg, batch_size

    def __call__(self, batch: dict) -> dict:
        payloads, stages, reasons = [], [], []
        for row in _rows(batch):
            try:
                payloads.append(_pack(decode_clip(row, self.cfg)))
                stages.append("")
                reasons.append("")
            except ClipError as e:
                payloads.append(b"")
                stages.append(e.stage)
                reasons.append(e.reason)
        return {**batch, "payload": payloads, "error_stage": stages, "error_reason": reasons}


class Extract(Stage):
    """Model stage: detector and speaker encoder loaded once per actor; writes one shard a batch.

    CPU actors take half a CPU (the decode tasks need the rest); a GPU actor is used only by the
    face_alignment detector (dlib runs on CPUs)."""

    cpu = Resources(cpus=0.5)

    def __init__(self, cfg: PreprocessConfig, out: str) -> None:
        self.cfg, self.out, self.batch_size = cfg, out, cfg.shard_size
        if cfg.features.face.backend == "face_alignment":
            self.gpu = Resources(cpus=1, gpus=1)

    def setup(self) -> None:
        from l2s.face import load_detector

        self.detector = load_detector(self.cfg.features.face)
        self.speaker_encoder = None
        if self.cfg.speaker_embeddings:
            from l2s.speaker import SpeakerEncoder

            self.speaker_encoder = SpeakerEncoder()
            self.speaker_encoder.setup()

    def __call__(self, batch: dict) -> dict:
        features: list[FeatureRow] = []
        errors: list[ErrorRow] = []
        video_seconds = 0.0
        for row, payload, stage, reason in zip(
            _rows(batch), batch["payload"], batch["error_stage"], batch["error_reason"], strict=True
        ):
            if stage:
                errors.append(
                    ErrorRow(id=row.id, video=row.video, stage=str(stage), reason=str(reason))
                )
                continue
            try:
                clip = _unpack(row, payload)
                features.append(
                    clip_features(clip, self.cfg.features, self.detector, self.speaker_encoder)
                )
                video_seconds += len(clip.frames_THWC) / VIDEO.fps
            except ClipError as e:
                errors.append(ErrorRow(id=row.id, video=row.video, stage=e.stage, reason=e.reason))
        shards.write_shard(self.out, features, errors)
        return {
            "features": np.array([len(features)]),
            "error_stages": np.array(["\n".join(e.stage for e in errors)]),
            "video_seconds": np.array([video_seconds]),
        }


def _todo(manifest: str, out: str) -> tuple[list[ManifestRow], int]:
    rows = read_manifest(manifest)
    done = shards.done_ids(out)
    todo = [r for r in rows if r.id not in done]
    return todo, len(rows) - len(todo)


# Manifest rows read and put in Ray's object store at a time by `plan`.
PLAN_BATCH = 8192


def plan(manifest: str, out: str, shard_size: int):
    """The rows of `manifest` not yet in `out`, as a Ray Dataset of blocks of `shard_size` rows
    (None when every row is done), and how many rows are done.

    The driver reads the manifest PLAN_BATCH rows at a time, drops the done ones and puts the
    rest in Ray's object store (shared memory, spilled to disk when full): its own memory holds
    one batch and the set of done ids, whatever the corpus's size. Reading it here rather than
    with `ray.data.read_parquet` also spares the workers the manifest's storage credentials
    (Ray Data's file listing task runs without the job's storage environment)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    from l2s.corpora.manifest import check_manifest

    check_manifest(manifest)
    done = pa.array(sorted(shards.done_ids(out)), pa.string())
    refs, skipped = [], 0
    with storage.open_uri(manifest) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=PLAN_BATCH):
            rows = pa.Table.from_batches([batch])
            if len(done):
                rows = rows.filter(pc.invert(pc.is_in(rows["id"], value_set=done)))
                skipped += batch.num_rows - rows.num_rows
            if rows.num_rows:
                refs.append(ray.put(rows))
    if not refs:
        return None, skipped
    return ray.data.from_arrow_refs(refs).repartition(target_num_rows_per_block=shard_size), skipped


def preprocess(manifest: str, out: str, cfg: PreprocessConfig = PreprocessConfig()) -> Summary:
    """Features for every manifest row not yet in `out` (local or s3://), on the current Ray."""
    from l2s.pipeline.adapter import apply

    start = time.perf_counter()
    ds, skipped = plan(manifest, out, cfg.shard_size)
    summary = Summary(skipped=skipped)
    if ds is not None:
        ds = apply(ds, Decode(cfg.features, cfg.shard_size))
        ds = apply(ds, Extract(cfg, out), workers=cfg.workers)
        for result in ds.iter_rows():
            summary.features += int(result["features"])
            summary.errors.update(s for s in str(result["error_stages"]).split("\n") if s)
            summary.video_seconds += float(result["video_seconds"])
    summary.seconds = time.perf_counter() - start
    write_metadata(manifest, out, cfg)
    return summary


def serial_preprocess(
    manifest: str, out: str, cfg: PreprocessConfig = PreprocessConfig()
) -> Summary:
    """The same functions in one process, one clip after another (Lip2Wav's way): the baseline."""
    start = time.perf_counter()
    todo, skipped = _todo(manifest, out)
    summary = Summary(skipped=skipped)
    decode, extract = Decode(cfg.features, cfg.shard_size), Extract(cfg, out)
    extract.setup()
    for i in range(0, len(todo), cfg.shard_size):
        batch = {k: [getattr(r, k) for r in todo[i : i + cfg.shard_size]] for k in MANIFEST_FIELDS}
        result = extract(decode(batch))
        summary.features += int(result["features"][0])
        summary.errors.update(s for s in str(result["error_stages"][0]).split("\n") if s)
        summary.video_seconds += float(result["video_seconds"][0])
    summary.seconds = time.perf_counter() - start
    write_metadata(manifest, out, cfg)
    return summary


def write_metadata(manifest: str, out: str, cfg: PreprocessConfig) -> None:
    """The dataset's exact recipe and its counts, beside the shards (deduplicated first)."""
    from l2s.speaker import SpeakerEncoder

    shards.drop_duplicates(out)
    errors = shards.read_errors(out)
    n_features = len(shards.read_column(out, shards.FEATURES, "id"))
    encoder = SpeakerEncoder().metadata() if cfg.speaker_embeddings else None
    shards.write_metadata(
        out,
        {
            "l2s_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "source_manifest": storage.normalize(manifest),
            "audio": AUDIO.to_dict(),
            "video": VIDEO.to_dict(),
            "features": asdict(cfg.features),
            "speaker_encoder": encoder,
            "counts": {"features": n_features, "errors": len(errors)},
            "errors_by_stage": dict(Counter(e.stage for e in errors)),
        },
    )


def run_preprocess(manifest: str, out: str, cfg: PreprocessConfig = PreprocessConfig()) -> Summary:
    """Connect to Ray, preprocess, print and return the summary (the CLI and the job call this)."""
    from rich.console import Console
    from rich.table import Table

    from l2s.pipeline.runtime import connect

    connect()
    summary = preprocess(manifest, out, cfg)
    table = Table(title=f"features {out}")
    table.add_column("")
    table.add_column("clips", justify="right")
    table.add_row("written now", str(summary.features))
    table.add_row("done earlier (skipped)", str(summary.skipped))
    for stage, count in sorted(summary.errors.items()):
        table.add_row(f"failed at {stage}", str(count))
    console = Console()
    console.print(table)
    if summary.features:
        console.print(
            f"{summary.features / summary.seconds:.2f} clips/s, "
            f"{summary.video_seconds / summary.seconds:.2f} s of video per second"
        )
    if summary.errors:
        console.print(f"reasons: {storage.join(out, shards.ERRORS)} (stage, reason per clip)")
    return summary
