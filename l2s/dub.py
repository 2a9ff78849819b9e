"""`l2s dub`: every new video under a prefix → the same video with generated speech as its audio,
or re-voiced with given speech and its lips re-drawn to match.

    l2s dub s3://media/silent s3://media/dubbed --checkpoint s3://models/runs/base
    l2s dub s3://media/en s3://media/fr --speech-dir s3://media/fr-speech --lipsync s3://models/lips

With `--speech-dir S` (and a lip generator, `--lipsync`), each video is re-voiced with the speech
file of the same relative name under S (`a/b.mp4` ← `S/a/b.wav`, or .flac .mp3 .m4a .ogg .aac
.mp4), and its mouth re-drawn to that speech (`l2s.lipsync.video`: the video is re-encoded, h264
at the source's size and rate). A video without its speech file fails at stage `speech` and is
tried again by the next run (the file may come later).

For each video under SRC (.mp4 .mov .mkv .avi .webm; local or s3://) that the ledger does not
list as finished: speak for it (`l2s.infer.speak`, the model loaded once per worker), mux the speech in
as its only audio track with the video stream copied (`l2s.video.mux_audio`), and write
`DST/<relative path>.mp4` with a JSON sidecar `DST/<relative path>.json` beside it (checkpoint,
step, model config, voice, durations, compute time, the text the lips were read to say, and
scores against the source's own audio track where it has one: STOI, PESQ, MCD, and WER / CER of
what a recognizer hears in the speech against what it hears in that track). Videos are spread over a pool of Ray actors; a local Ray on 2 cores
runs it as well as a GPU cluster.

The ledger is `DST/_ledger/`: one small JSON record per video, `done/<name>.json` or
`failed/<name>.json` (with the stage and the reason), where <name> is the video's path below SRC
quoted into one file name. The worker that finished the video writes it. One record per video
rather than one ledger file, because:
- a record is written once, whole (temporary file + rename locally, one PUT on S3, which has no
  append and no rename): nothing is read, changed and written back, so no worker or concurrent
  run can lose another's update, and a killed run keeps every record it wrote before the kill;
- the record comes last, after the mp4 and the sidecar, so "done" means all three are complete. A
  video killed halfway has no record; the next run does it again and overwrites its outputs whole
  (their names are fixed), so every output exists exactly once. Temporary files a killed run left
  beside those outputs (local DST only) are removed by the next run before it writes them again;
- listing `done/` tells a nightly run what is finished without reading a single record, however
  many videos the bucket holds; only failure records are read (for their retry flag and reason).
  A done record outranks a failed one, so a retry that succeeds needs no atomic replacement: it
  writes `done/` and then removes the old `failed/` record;
- a source replaced after it was dubbed (modified later than its done record, as both listings
  say) is dubbed again, and one replaced after it failed (later than the source time its failure
  record holds) is tried again. (Clocks of a local DST and an s3:// SRC may disagree by seconds; a
  video uploaded that close to its dubbing may then be dubbed once more the next night.)
A failure never stops the batch. Failures with a passing cause (a read or write error, a bug in a
worker) are tried again by the next run; the rest (not a video, no face…) stay failed until
`--retry-failed`. Concurrent runs on one DST stay correct but may dub some videos twice.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import socket
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import numpy as np

from l2s import __version__, storage
from l2s.audio import AudioError, load_audio
from l2s.features import FeatureConfig
from l2s.infer import SpeakError
from l2s.infer.model import SpeechModel
from l2s.infer.speak import speak_with
from l2s.infer.vocoder import load_vocoder
from l2s.infer.voice import voice
from l2s.lipsync import LipSyncError
from l2s.lipsync.model import LipSyncModel
from l2s.lipsync.video import lipsync
from l2s.pipeline.adapter import Cluster, Pool, Resources, plan_pool, remote_args
from l2s.video import VideoError, VideoInfo, mux_audio, probe

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
SPEECH_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".aac", ".mp4")
LEDGER = "_ledger"
# Stages whose failures have passing causes: the next run tries these videos again (a speech
# file missing from --speech-dir may be uploaded later).
RETRIED_STAGES = ("read", "write", "internal", "speech")
SCORE_KEYS = ("stoi", "estoi", "pesq_wb", "pesq_nb", "mcd", "wer", "cer", "duration_s")


@dataclass(frozen=True, kw_only=True)
class SourceVideo:
    """A video under SRC and where its results go (paths relative to SRC and DST, '/'-separated)."""

    uri: str
    relative: str
    modified: float | None = None  # modification time (Unix s) as the listing said

    @property
    def output(self) -> str:
        return posixpath.splitext(self.relative)[0] + ".mp4"

    @property
    def sidecar(self) -> str:
        return posixpath.splitext(self.relative)[0] + ".json"

    def written(self) -> tuple[str, ...]:
        """Every file that dubbing it may write, below DST."""
        return (self.output, self.sidecar, self.record("done"), self.record("failed"))

    def record(self, status: str) -> str:
        """Its ledger record with this status (done or failed), below DST."""
        return posixpath.join(LEDGER, status, quote(self.relative, safe="") + ".json")


@dataclass(frozen=True, kw_only=True)
class LedgerRecord:
    """What happened to one source video; the ledger holds the latest one per video."""

    source: str  # path below SRC
    status: str  # "done" or "failed"
    stage: str = ""  # where it failed: read, speech, decode, speak, lipsync, mux, write, internal
    reason: str = ""
    retry: bool = False  # a passing cause: the next run tries again
    output: str = ""  # path of the dubbed mp4 below DST
    seconds: float = 0.0  # of video
    compute_seconds: float = 0.0
    finished_at: str = ""
    run: str = ""
    source_modified: float | None = None  # the source's modification time when it was read

    def __post_init__(self) -> None:
        if self.status not in ("done", "failed"):
            raise ValueError(f"{self.source}: status must be done or failed, not {self.status!r}")


@dataclass(frozen=True, kw_only=True)
class DubConfig:
    # Speech from the lips: a lip-to-speech checkpoint or run (its latest, fixed at the start).
    checkpoint: str | None = None
    speaker: str | None = None  # a training speaker's voice
    reference_audio: str | None = None  # or the voice of a recording (local or s3://)
    # Or given speech, lips re-drawn: the speech files (one per video, same relative name) and
    # the lip generator (l2s train-lipsync) that re-draws the mouths.
    speech_dir: str | None = None
    lipsync: str | None = None
    workers: int | None = None  # model actors; None: one per GPU, else one per CPU
    retry_failed: bool = False  # also redo videos that failed for good in earlier runs
    vocoder: str | None = None  # an `l2s.infer.vocoder` spec; None: Griffin-Lim
    # The recognizer of the sidecars' WER (`l2s.evaluate.asr.load_recognizer`): auto (pocketsphinx
    # with GRID's grammar when the model reads lips with it, else its open LM), grid, open, a
    # recognizer run of `l2s train-asr`, or none.
    asr: str = "auto"
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.speaker is not None and self.reference_audio is not None:
            raise ValueError("give a speaker or a reference recording, not both")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if (self.speech_dir is None) != (self.lipsync is None):
            raise ValueError("--speech-dir and --lipsync go together (speech given, lips re-drawn)")
        if (self.checkpoint is None) == (self.speech_dir is None):
            raise ValueError(
                "give a lip-to-speech checkpoint (speech from the lips) or --speech-dir with "
                "--lipsync (given speech, lips re-drawn), not both or neither"
            )
        if self.speech_dir is not None and (self.speaker or self.reference_audio or self.vocoder):
            raise ValueError("--speaker, --reference-audio and --vocoder need a checkpoint")


@dataclass(frozen=True, kw_only=True)
class DubPlan:
    """Everything a worker needs, fixed once by the driver so that every video of a run gets the
    same checkpoint and voice, even if training writes a newer checkpoint meanwhile."""

    dst: str
    checkpoint: str  # the lip-to-speech model, or the lip generator when `speech` is given
    voice_D: np.ndarray | None
    voice: str
    model: dict  # checkpoint, step, preset, model and training configs: for the sidecars
    features: FeatureConfig
    run: str
    vocoder: str  # the vocoder's own name: a HiFi-GAN run resolved to its checkpoint now
    asr: str | None  # the recognizer spec (auto resolved), None: no WER
    speech: dict[str, str] | None = None  # video path without suffix → its speech file's URI


@dataclass
class Summary:
    done: int = 0
    failed: list[LedgerRecord] = field(default_factory=list)  # this run's failures
    skipped_done: int = 0
    changed: int = 0  # done or failed for good earlier, but replaced since: done again
    skipped_failed: list[LedgerRecord] = field(default_factory=list)  # failed earlier, for good
    lost: int = 0  # a worker died with them (no record: the next run does them)
    lost_reason: str = ""  # why the first worker died
    conflicts: list[str] = field(default_factory=list)  # sources whose output name is taken
    swept: int = 0  # temporaries of a killed run removed
    seconds: float = 0.0
    video_seconds: float = 0.0


def find_videos(src: str, dst: str) -> tuple[list[SourceVideo], list[str]]:
    """Videos under `src` and the ones left out because another source has their output name.

    Hidden files (a component starting with '.', as uploaders' partial files and macOS '._x' files
    are named) and anything under `dst` (when it lies inside `src`) are not sources. Of sources
    that differ only in suffix (`a.mov`, `a.mp4` → `a.mp4`) the .mp4, else the first, is dubbed.
    """
    src, dst = storage.normalize(src), storage.normalize(dst)
    if src == dst:
        raise ValueError(f"{dst}: the destination must differ from the source (outputs are mp4)")
    if not storage.exists(src):
        raise FileNotFoundError(f"{src}: no such folder or prefix")
    by_output: dict[str, list[SourceVideo]] = {}
    for uri, modified in storage.modified_times(src, VIDEO_SUFFIXES).items():
        if uri.startswith(dst + "/"):
            continue
        relative = uri[len(src) + 1 :]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        video = SourceVideo(uri=uri, relative=relative, modified=modified)
        by_output.setdefault(video.output, []).append(video)
    videos, conflicts = [], []
    for output, group in sorted(by_output.items()):
        keep = next((v for v in group if v.relative == output), group[0])
        videos.append(keep)
        conflicts += [
            f"{v.relative}: its output {output} is {keep.relative}'s"
            for v in group
            if v is not keep
        ]
    return videos, conflicts


def speech_files(speech_dir: str) -> dict[str, str]:
    """The speech files under `speech_dir`, by their path below it without the suffix (a .wav
    wins over other suffixes of the same name, then the first in sorted order)."""
    root = storage.normalize(speech_dir)
    if not storage.exists(root):
        raise FileNotFoundError(f"{root}: no such speech folder or prefix")
    found: dict[str, str] = {}
    for uri in sorted(storage.list_files(root, SPEECH_SUFFIXES)):
        stem, suffix = posixpath.splitext(uri[len(root) + 1 :])
        if stem not in found or suffix == ".wav":
            found[stem] = uri
    return found


def read_ledger(dst: str) -> tuple[dict[str, float | None], dict[str, LedgerRecord]]:
    """The sources done, with when their records were written (one listing, no reads), and the
    failure records of the rest.

    A failure record that cannot be parsed counts as absent (its video is done again): records
    are written whole, so only a hand edit makes one.
    """
    root = storage.join(storage.normalize(dst), LEDGER)
    done = {
        _source_of(uri): written
        for uri, written in storage.modified_times(storage.join(root, "done"), [".json"]).items()
    }
    failed = {}
    for data in storage.read_many(_records(root, "failed")).values():
        if isinstance(data, OSError):  # removed since the listing: a retry has just succeeded
            continue
        try:
            record = LedgerRecord(**json.loads(data))
        except (ValueError, TypeError):
            continue
        if record.source not in done:
            failed[record.source] = record
    return done, failed


def _records(root: str, status: str) -> list[str]:
    # A missing folder lists as empty; temporaries of killed writes end in .tmp, not .json.
    return storage.list_files(storage.join(root, status), [".json"])


def _replaced_since(video: SourceVideo, then: float | None) -> bool:
    """Whether the source was modified after `then` (False when either time is unknown)."""
    return video.modified is not None and then is not None and video.modified > then


def _source_of(record_uri: str) -> str:
    return unquote(posixpath.basename(record_uri).removesuffix(".json"))


def write_record(dst: str, video: SourceVideo, record: LedgerRecord) -> None:
    """Write the record; a done record then removes the failure record of an earlier run."""
    data = json.dumps(asdict(record)).encode()
    storage.write_bytes(storage.join(dst, video.record(record.status)), data)
    if record.status == "done":
        storage.remove(storage.join(dst, video.record("failed")))


def sweep_temporaries(dst: str, todo: list[SourceVideo]) -> int:
    """Remove what killed runs left half-written beside the files `todo` is about to write."""
    if not storage.is_local(dst) or not storage.exists(dst):
        return 0
    targets = {storage.join(dst, name) for video in todo for name in video.written()}
    stale = [u for u in storage.list_files(dst) if storage.temporary_target(u) in targets]
    for uri in stale:
        storage.remove(uri)
    return len(stale)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _failed(plan: DubPlan, video: SourceVideo, stage: str, reason: str) -> LedgerRecord:
    return LedgerRecord(
        source=video.relative,
        status="failed",
        stage=stage,
        reason=reason,
        retry=stage in RETRIED_STAGES,
        finished_at=_now(),
        run=plan.run,
        source_modified=video.modified,
    )


def _fetch(uri: str, folder: str, name: str = "source") -> str:
    """A local path to read `uri` from: the file itself, or a copy in `folder` (PyAV reads files)."""
    if storage.is_local(uri):
        return uri
    local = os.path.join(folder, name + posixpath.splitext(uri)[1])
    fs, path = storage.filesystem(uri)
    fs.get_file(path, local)
    return local


def _scores(
    source: str, info: VideoInfo, wav: str, recognizer=None
) -> tuple[dict | None, str, dict | None]:
    """Scores of the speech against the source's own audio track, or None and why there are none;
    and what the recognizer (an `ASRBackend`) heard in both, the track's words being the reference
    of WER / CER (the source has no transcript).

    The track is what was said while the lips moved, when the source has one (a damaged or
    re-recorded track scores low for reasons of its own).
    """
    from l2s.evaluate.metrics import nan_reasons_of, score_utterance

    if not info.has_audio:
        return None, "the source has no audio track to compare with", None
    try:
        reference_S = load_audio(source)
    except AudioError as e:
        return None, f"the source's audio track cannot be decoded ({e})", None
    speech_S = load_audio(wav)
    heard = None
    if recognizer is not None:
        heard = {
            "recognizer": recognizer.name,
            "source": recognizer.transcribe(reference_S),
            "speech": recognizer.transcribe(speech_S),
        }
    row = score_utterance(
        reference_S,
        speech_S,
        transcript=None if heard is None else heard["source"],
        hypothesis=None if heard is None else heard["speech"],
    )
    scores = {k: None if math.isnan(row[k]) else round(float(row[k]), 4) for k in SCORE_KEYS}
    reasons = nan_reasons_of(str(row["nan_reasons"]))
    note = "; ".join(f"{k}: {why}" for k, why in reasons.items() if k in SCORE_KEYS)
    return scores, note, heard


def dub_video(
    model: SpeechModel, plan: DubPlan, video: SourceVideo, recognizer=None
) -> LedgerRecord:
    """One source video → its dubbed mp4, sidecar and ledger record (the record written last).
    `recognizer` (an `ASRBackend`, loaded once per worker): the sidecar's WER / CER.

    Returns the record: what is wrong with a video, or with reading or writing it, is a failure
    record with its stage and reason. Anything else is a bug and raises (the driver records it).
    """
    start = time.perf_counter()
    out = storage.join(plan.dst, video.output)
    stage = "read"
    with tempfile.TemporaryDirectory(prefix="l2s-dub-") as work:
        try:
            source = _fetch(video.uri, work)
            stage = "decode"
            info = probe(source)
            stage = "speak"
            wav = os.path.join(work, "speech.wav")
            spoken = speak_with(
                model, (plan.voice_D, plan.voice), source, wav, plan.features, start, plan.vocoder
            )
            scores, no_scores, heard = _scores(source, info, wav, recognizer)
            stage = "mux"
            mux_audio(source, wav, out)
            stage = "write"
            record = LedgerRecord(
                source=video.relative,
                status="done",
                output=video.output,
                seconds=info.duration,
                compute_seconds=round(time.perf_counter() - start, 3),
                finished_at=_now(),
                run=plan.run,
                source_modified=video.modified,
            )
            sidecar = {
                "source": video.uri,
                "output": out,
                "l2s_version": __version__,
                "model": plan.model,
                "vocoder": plan.vocoder,
                "voice": plan.voice,
                "durations": {"video_s": info.duration, "speech_s": spoken.seconds},
                "source_video": asdict(info),
                "video_stream": "copied",
                "face_ratio": round(spoken.face_ratio, 4),
                "text": spoken.text,
                "compute_seconds": record.compute_seconds,
                "scores": scores,
                "scores_note": no_scores,
                "asr": heard,
                "finished_at": record.finished_at,
                "run": plan.run,
            }
            storage.write_bytes(
                storage.join(plan.dst, video.sidecar), json.dumps(sidecar, indent=2).encode()
            )
        except VideoError as e:
            reason = str(e).replace(source, video.uri)  # name the source, not its local copy
            record = _failed(plan, video, "mux" if stage == "mux" else "decode", reason)
        except SpeakError as e:
            record = _failed(plan, video, stage, str(e).replace(source, video.uri))
        except OSError as e:
            record = _failed(plan, video, "read" if stage == "read" else "write", str(e))
    write_record(plan.dst, video, record)
    return record


def lipsync_video(model: LipSyncModel, plan: DubPlan, video: SourceVideo) -> LedgerRecord:
    """One source video and its speech file → the video re-voiced with its lips re-drawn, its
    sidecar and ledger record (the record written last), as `dub_video` does for speech."""
    start = time.perf_counter()
    out = storage.join(plan.dst, video.output)
    stem = posixpath.splitext(video.relative)[0]
    stage = "read"
    with tempfile.TemporaryDirectory(prefix="l2s-dub-") as work:
        source = video.uri
        try:
            source = _fetch(video.uri, work)
            stage = "speech"
            speech_uri = (plan.speech or {}).get(stem)
            if speech_uri is None:
                raise LipSyncError(
                    f"no speech file {stem}{{{','.join(SPEECH_SUFFIXES)}}} under {plan.voice}"
                )
            speech = _fetch(speech_uri, work, "speech")
            stage = "decode"
            info = probe(source)
            stage = "lipsync"
            local_out = os.path.join(work, "out.mp4")
            done = lipsync(source, speech, local_out, model, plan.features)
            stage = "write"
            with open(local_out, "rb") as f:
                storage.write_bytes(out, f.read())
            record = LedgerRecord(
                source=video.relative,
                status="done",
                output=video.output,
                seconds=info.duration,
                compute_seconds=round(time.perf_counter() - start, 3),
                finished_at=_now(),
                run=plan.run,
                source_modified=video.modified,
            )
            sidecar = {
                "source": video.uri,
                "output": out,
                "speech": speech_uri,
                "l2s_version": __version__,
                "lip_generator": plan.model,
                "durations": {"video_s": info.duration, "output_s": done.seconds},
                "source_video": asdict(info),
                "video_stream": f"re-encoded (h264, {done.fps:.3g} fps, lips re-drawn)",
                "face_ratio": round(done.face_ratio, 4),
                "compute_seconds": record.compute_seconds,
                "finished_at": record.finished_at,
                "run": plan.run,
            }
            storage.write_bytes(
                storage.join(plan.dst, video.sidecar), json.dumps(sidecar, indent=2).encode()
            )
        except (VideoError, LipSyncError) as e:
            reason = str(e).replace(source, video.uri)
            record = _failed(plan, video, stage if stage != "read" else "decode", reason)
        except OSError as e:
            record = _failed(
                plan, video, "read" if stage in ("read", "speech") else "write", str(e)
            )
    write_record(plan.dst, video, record)
    return record


class Dubber:
    """A worker: the model loaded once (on its GPU when it has one), then one video per call."""

    def __init__(self, plan: DubPlan) -> None:
        import torch

        from l2s.evaluate.asr import load_recognizer

        self.plan = plan
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if plan.speech is None:
            self.model = SpeechModel.load(plan.checkpoint, device)
            self.recognizer = None if plan.asr is None else load_recognizer(plan.asr)
        else:
            self.lips = LipSyncModel.load(plan.checkpoint, device)

    def dub(self, video: SourceVideo) -> LedgerRecord:
        if self.plan.speech is None:
            return dub_video(self.model, self.plan, video, self.recognizer)
        return lipsync_video(self.lips, self.plan, video)


def make_plan(dst: str, cfg: DubConfig) -> DubPlan:
    """Fix the checkpoint (a run directory's latest, now), the voice and the recognizer, once for
    the whole run."""
    from l2s.evaluate.asr import load_recognizer
    from l2s.infer.checkpoint import read_config

    run = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{socket.gethostname()}-{os.getpid()}"
    if cfg.speech_dir is not None:
        lips = LipSyncModel.load(cfg.lipsync)
        config = read_config(lips.checkpoint)
        return DubPlan(
            dst=storage.normalize(dst),
            checkpoint=lips.checkpoint,
            voice_D=None,
            voice=storage.normalize(cfg.speech_dir),
            model={
                "checkpoint": lips.checkpoint,
                "step": config["progress"]["step"],
                "model_config": config["model_config"],
                "train_config": config["train_config"],
            },
            features=cfg.features,
            run=run,
            vocoder="",
            asr=None,  # the speech is the given file's: nothing to recognise
            speech=speech_files(cfg.speech_dir),
        )
    speech_model = SpeechModel.load(cfg.checkpoint)
    reference = cfg.reference_audio
    with tempfile.TemporaryDirectory(prefix="l2s-voice-") as work:
        local = _fetch(reference, work) if reference is not None else None
        voice_D, described = voice(speech_model, local, cfg.speaker)
    if reference is not None:
        described = f"reference {reference}"
    config = read_config(speech_model.checkpoint)
    model = {
        "checkpoint": speech_model.checkpoint,
        "step": config["progress"]["step"],
        "preset": config["train_config"]["preset"],
        "model_config": config["model_config"],
        "train_config": config["train_config"],
    }
    asr: str | None = cfg.asr
    if asr == "auto":
        reads_grid = speech_model.grammar is not None and speech_model.grammar.name == "grid"
        asr = "grid" if reads_grid else "open"
    elif asr == "none":
        asr = None
    else:
        load_recognizer(asr)  # a bad spec is refused before any worker starts
    return DubPlan(
        dst=storage.normalize(dst),
        checkpoint=speech_model.checkpoint,
        voice_D=voice_D,
        voice=described,
        model=model,
        features=cfg.features,
        run=run,
        vocoder=load_vocoder(cfg.vocoder).name,
        asr=asr,
    )


def _pool(n_videos: int, workers: int | None) -> Pool:
    """The Dubber actors: as many as `plan_pool` sizes from the cluster (whole CPUs each: no Ray
    Data tasks share the cluster with them), never more than the videos to do."""
    return plan_pool(
        Cluster.current(),
        cpu=Resources(cpus=1),
        gpu=Resources(cpus=1, gpus=1),
        workers=workers,
        items=n_videos,
    )


def _run_pool(
    plan: DubPlan,
    todo: list[SourceVideo],
    workers: int | None,
    on_record: Callable[[LedgerRecord], None],
) -> tuple[int, str]:
    """Dub `todo` on a pool of actors, each fed a new video as it finishes one. Returns how many
    videos were lost with workers that died (they have no record, so the next run does them) and
    why the first worker died."""
    import ray

    pool = _pool(len(todo), workers)
    actor_class = ray.remote(Dubber).options(**remote_args(pool.resources))
    queue = deque(todo)
    pending: dict = {}

    def feed(actor) -> None:
        if queue:
            video = queue.popleft()
            pending[actor.dub.remote(video)] = (actor, video)

    for _ in range(pool.max_size):
        feed(actor_class.remote(plan))
    lost, why = 0, ""
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, video = pending.pop(ref)
        try:
            record = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            # The actor is gone (it could not load the model, ran out of memory, lost its node):
            # it is not fed again.
            lost, why = lost + 1, why or str(e)
            continue
        except ray.exceptions.RayTaskError as e:
            # A bug, not a bad video: recorded, and tried again by the next run.
            cause = e.cause if e.cause is not None else e
            record = _failed(plan, video, "internal", f"{type(cause).__name__}: {cause}")
            write_record(plan.dst, video, record)
        on_record(record)
        feed(actor)
    return lost + len(queue), why


def dub(
    src: str,
    dst: str,
    cfg: DubConfig,
    on_start: Callable[[int], None] | None = None,
    on_record: Callable[[LedgerRecord], None] | None = None,
) -> Summary:
    """Dub every video under `src` not yet finished in `dst`'s ledger, on the current Ray (or the
    one RAY_ADDRESS names, or a local one started in-process)."""
    start = time.perf_counter()
    videos, conflicts = find_videos(src, dst)
    done, failed = read_ledger(dst)
    summary = Summary(conflicts=conflicts)
    todo = []
    for video in videos:
        record = failed.get(video.relative)
        if video.relative in done:
            if _replaced_since(video, done[video.relative]):
                summary.changed += 1
                todo.append(video)
            else:
                summary.skipped_done += 1
        elif record is None or record.retry or cfg.retry_failed:
            todo.append(video)
        elif _replaced_since(video, record.source_modified):
            summary.changed += 1  # a new upload under the failed one's name
            todo.append(video)
        else:
            summary.skipped_failed.append(record)
    summary.swept = sweep_temporaries(dst, todo)
    if on_start is not None:
        on_start(len(todo))
    if todo:
        from l2s.pipeline.runtime import connect

        connect()  # only now: a run with nothing to do needs no Ray (starting one takes seconds)
        plan = make_plan(dst, cfg)

        def collect(record: LedgerRecord) -> None:
            if record.status == "done":
                summary.done += 1
                summary.video_seconds += record.seconds
            else:
                summary.failed.append(record)
            if on_record is not None:
                on_record(record)

        summary.lost, summary.lost_reason = _run_pool(plan, todo, cfg.workers, collect)
    summary.seconds = time.perf_counter() - start
    return summary


def run_dub(src: str, dst: str, cfg: DubConfig) -> Summary:
    """Dub with a progress bar, then print the summary and every failure's reason (the CLI and
    the job call this)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    counts: Counter[str] = Counter()
    with Progress(
        TextColumn("dub"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("dub", total=None, tally="")

        def started(n: int) -> None:
            progress.update(task, total=n)

        def finished(record: LedgerRecord) -> None:
            counts[record.status] += 1
            tally = f"[green]{counts['done']} done[/] [red]{counts['failed']} failed[/]"
            progress.update(task, advance=1, tally=tally)

        summary = dub(src, dst, cfg, started, finished)
    console.print(f"dub {src} → {dst}")
    table = Table()
    table.add_column("")
    table.add_column("videos", justify="right")
    table.add_row("dubbed now", str(summary.done))
    for stage, count in sorted(Counter(r.stage for r in summary.failed).items()):
        table.add_row(f"failed now at {stage}", str(count))
    table.add_row("done earlier (skipped)", str(summary.skipped_done))
    if summary.changed:
        table.add_row("replaced since done or failed (done again)", str(summary.changed))
    table.add_row("failed earlier (skipped; --retry-failed)", str(len(summary.skipped_failed)))
    if summary.lost:
        table.add_row("lost with a worker (next run)", str(summary.lost))
    if summary.swept:
        table.add_row("half-written files of a killed run removed", str(summary.swept))
    if summary.conflicts:
        table.add_row("output name taken (renamed?)", str(len(summary.conflicts)))
    console.print(table)
    if summary.done:
        console.print(
            f"{summary.done / summary.seconds:.2f} videos/s, "
            f"{summary.video_seconds / summary.seconds:.2f} s of video per second"
        )
    for record in summary.failed:
        retry = " (tried again next run)" if record.retry else ""
        console.print(f"[red]failed[/] {record.source} at {record.stage}: {record.reason}{retry}")
    if summary.lost:
        console.print(f"[red]a worker died[/]: {summary.lost_reason}")
    for conflict in summary.conflicts:
        console.print(f"[yellow]not dubbed[/] {conflict}")
    if summary.failed or summary.skipped_failed:
        console.print(
            f"reasons: {storage.join(storage.normalize(dst), LEDGER)} (one record a video)"
        )
    return summary
