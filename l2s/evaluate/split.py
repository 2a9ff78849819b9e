"""Scoring a generated split against the recordings: the recordings' own row (the bound) and two
baselines in the same table.

Systems, each scored against the clip's original waveform; all but the recording are vocoded by
the split's vocoder (Griffin-Lim unless `l2s generate --vocoder` named another):
  recording    the original waveform itself: the bound (its WER / CER are the recognizer's own)
  l2s          the model's mel (the wav `generate_split` wrote)
  gt_mel       the ground-truth mel: the ceiling the vocoder allows
  mean_mel     a constant predictor, the training mel mean at every frame: the floor

    rows = score_results("out/results/test")          # one row per (clip, system)
    print_summary(rows)                                # mean and 95 % interval per split and system

The summary compares systems on the same clips: each metric's means cover the clips where every
system that has the metric at all has it (paired), with the count shown when that is not every
clip and a note saying which system lacked it and why. WER / CER are pooled over the words /
characters of those clips (Σ errors ÷ Σ reference words), not averaged per clip.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import soundfile as sf
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from l2s import storage
from l2s.audio import load_audio, write_wav
from l2s.config import AUDIO, MELS_PER_FRAME
from l2s.evaluate.metrics import MetricUnavailable, nan_reasons_of, score_utterance
from l2s.infer.vocoder import load_vocoder
from l2s.pipeline import shards
from l2s.pipeline.adapter import Resources, Stage
from l2s.pipeline.generate import WAV_DIR, mel_of

SCORES_FILE = "scores.parquet"
# Folders (in a results folder) of each system's audio.
AUDIO_DIRS = {"recording": "reference", "l2s": WAV_DIR, "gt_mel": "gt_mel", "mean_mel": "mean_mel"}
SYSTEMS = ("recording", "l2s", "gt_mel", "mean_mel")
SUMMARY_METRICS = (
    "stoi", "estoi", "pesq_wb", "pesq_nb", "mcd", "speaker_similarity", "wer", "cer", "vsr_wer",
    "vsr_cer",
)  # fmt: skip
ALWAYS_SHOWN = ("wer", "cer")  # a table without them would hide that nothing recognised the words
# metric → the reference units it is pooled over
POOLED = {"wer": "ref_words", "cer": "ref_chars", "vsr_wer": "ref_words", "vsr_cer": "ref_chars"}
HEADERS = {"speaker_similarity": "spk_sim"}  # short column names for the printed table
ASR_MODES = ("auto", "grid", "open")


def reference_audio(record: dict) -> np.ndarray:
    """The clip's recorded speech, cut to the frames the features cover (from where the clip
    starts in its video: results generated before segments were kept have whole clips)."""
    if not record["video"]:
        raise FileNotFoundError(f"{record['id']}: source video unknown (the manifest is gone)")
    n_samples = record["n_frames"] * MELS_PER_FRAME * AUDIO.hop_length
    start = record.get("start", 0.0)
    return load_audio(record["video"], AUDIO.sample_rate, start, n_samples / AUDIO.sample_rate)


def system_audio(record: dict, vocode: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    with storage.open_uri(record["wav"]) as f:
        wav_S, _ = sf.read(f, dtype="float32")
    mean_MF = np.repeat(
        np.asarray(record["mean_mel"], np.float32)[:, None], 4 * record["n_frames"], 1
    )
    return {
        "l2s": wav_S,
        "gt_mel": vocode(mel_of(record, "target_mel")),
        "mean_mel": vocode(mean_MF),
    }


def _embedding(encoder, wav_S: np.ndarray, whose: str) -> np.ndarray | MetricUnavailable | None:
    """The speaker embedding of a waveform, or why there is none (the similarity is then NaN with
    that reason): a silent mean-mel baseline must not stop the scoring. None without an encoder."""
    from l2s.speaker import SpeakerError

    if encoder is None:
        return None
    try:
        return encoder.embed(wav_S)
    except SpeakerError as e:
        return MetricUnavailable(f"no speaker embedding of the {whose} ({e})")


def score_record(record: dict, results: str, recognizer=None, speaker_encoder=None) -> list[dict]:
    """One generated clip → one score row per system; the recording and the baselines' audio (the
    record's vocoder) are written beside the model's wavs (for the report) unless already there.

    With a `speaker_encoder` (l2s.speaker.SpeakerEncoder), `speaker_similarity` is the cosine of
    each system's embedding with the recording's. With a `recognizer` (an ASRBackend) and a
    transcript, every system's speech is transcribed for WER / CER, the recording's included."""
    reference_S = reference_audio(record)
    reference_D = _embedding(speaker_encoder, reference_S, "recording")
    audio = {"recording": reference_S} | system_audio(record, load_vocoder(record.get("vocoder")))
    for name in ("recording", "gt_mel", "mean_mel"):
        uri = storage.join(results, AUDIO_DIRS[name], f"{record['id']}.wav")
        if not storage.exists(uri):
            write_wav(uri, audio[name])
    transcript = record["transcript"]
    rows = []
    for system, generated_S in audio.items():
        hypothesis = (
            recognizer.transcribe(generated_S) if recognizer and transcript is not None else None
        )
        scores = score_utterance(
            reference_S,
            generated_S,
            transcript=transcript,
            hypothesis=hypothesis,
            lip_text=record.get("text") if system == "l2s" else None,
            reference_embedding=reference_D,
            generated_embedding=(
                reference_D
                if system == "recording"
                else _embedding(speaker_encoder, generated_S, f"{system} speech")
            ),
        )
        rows.append(
            {
                "id": record["id"],
                "speaker": record["speaker"],
                "split": record["split"],
                "system": system,
                "hypothesis": hypothesis,
                "asr": recognizer.name if hypothesis is not None else None,
                "lip_text": record.get("text") if system == "l2s" else None,
                **scores,
            }
        )
    return rows


class ScoreBatch(Stage):
    """Scoring actors (three quarters of a CPU each, one per CPU): the speaker encoder and the ASR
    decoder (when asked for) are loaded once per actor."""

    cpu = Resources(cpus=0.75)
    batch_size = 1

    def __init__(self, results: str, asr: str | None) -> None:
        self.results, self.asr = results, asr

    def setup(self) -> None:
        from l2s.evaluate.asr import load_recognizer
        from l2s.speaker import SpeakerEncoder

        self.recognizer = None if self.asr is None else load_recognizer(self.asr)
        self.speaker_encoder = SpeakerEncoder()

    def __call__(self, batch: dict) -> pa.Table:
        records = [dict(zip(batch, v, strict=True)) for v in zip(*batch.values(), strict=True)]
        rows = [
            row
            for record in records
            for row in score_record(record, self.results, self.recognizer, self.speaker_encoder)
        ]
        return pa.Table.from_pylist(rows)


def score_results(
    results: str, asr: str | None = "auto", *, workers: int | None = None, progress: bool = True
) -> list[dict]:
    """Score every generated clip of `results` in parallel on the current Ray (one actor per CPU);
    write `results/scores.parquet`.

    The generated records (mels and all) are streamed from their shards to the actors: the
    driver holds only the score rows. `asr`: the recognizer for WER / CER: pocketsphinx (offline)
    with "grid" (the GRID grammar), "open" (its trigram LM) or "auto" (the grammar when every
    transcript is a GRID sentence, the LM otherwise, none when no clip has a transcript); a
    recognizer run or checkpoint of `l2s train-asr`; or None (no WER / CER).
    """
    import pyarrow.parquet as pq
    import ray

    from l2s.evaluate.asr import load_recognizer, mode_for_transcripts
    from l2s.pipeline.adapter import apply, remote_args
    from l2s.pipeline.generate import GENERATED

    if asr is not None and asr not in ASR_MODES:
        load_recognizer(asr)  # a bad spec is refused here, before any actor starts
    files = shards.list_shards(results, GENERATED)
    if not files:
        raise FileNotFoundError(f"{results}: nothing generated yet ({GENERATED}/ is empty)")
    if asr == "auto":
        asr = mode_for_transcripts(shards.read_column(results, GENERATED, "transcript"))
    fs, _ = storage.arrow_filesystem(files[0])
    paths = [storage.arrow_filesystem(f)[1] for f in files]
    clips = sum(pq.read_metadata(p, filesystem=fs).num_rows for p in paths)
    ds = ray.data.read_parquet(paths, filesystem=fs, **remote_args())
    ds = apply(
        ds.repartition(target_num_rows_per_block=1), ScoreBatch(results, asr), workers=workers
    )
    rows = [
        dict(row)
        for row in tqdm(
            ds.iter_rows(), total=clips * len(SYSTEMS), desc="score", disable=not progress
        )
    ]
    rows.sort(key=lambda r: (r["id"], SYSTEMS.index(r["system"])))
    shards.write_table(pa.Table.from_pylist(rows), storage.join(results, SCORES_FILE))
    return rows


class Mean(NamedTuple):
    """A metric over a set of clips: its mean (pooled for WER / CER), 95 % half-interval, clips."""

    value: float
    half_interval: float
    n: int


@dataclass(frozen=True, kw_only=True)
class Summary:
    means: dict[tuple[str, str], dict[str, Mean]]  # (split, system) → metric → over paired clips
    clips: dict[tuple[str, str], int]  # (split, system) → clips scored
    notes: list[str]  # per split and metric: clips the means cover, and why the others are out
    asr: list[str]  # the recognizers the rows' WER / CER come from


def _mean(metric: str, rows: list[dict]) -> Mean:
    n = len(rows)
    if metric in POOLED:
        units = np.array([r[POOLED[metric]] for r in rows], np.float64)
        errors = np.array([r[metric] for r in rows]) * units
        rate = errors.sum() / units.sum()
        # The ratio estimator's linearised standard error (Σ errors ÷ Σ units over sampled clips).
        spread = np.sqrt(np.sum((errors - rate * units) ** 2) / (n - 1) / n) if n > 1 else 0.0
        return Mean(float(rate), float(1.96 * spread / units.mean()), n)
    values = np.array([r[metric] for r in rows], np.float64)
    half = 1.96 * values.std(ddof=1) / math.sqrt(n) if n > 1 else 0.0
    return Mean(float(values.mean()), float(half), n)


def _order(systems) -> list[str]:
    return sorted(systems, key=lambda s: (SYSTEMS.index(s) if s in SYSTEMS else len(SYSTEMS), s))


def _gaps(split_rows: list[dict], metric: str) -> str:
    """Which systems lack `metric` on how many clips, and why ("no value for mean_mel on 2 clips
    (voice activity detection found no speech: 2)")."""
    reasons: dict[str, Counter] = defaultdict(Counter)
    for row in split_rows:
        if math.isnan(row[metric]):
            why = nan_reasons_of(row["nan_reasons"]).get(metric, "no reason recorded")
            reasons[row["system"]][why] += 1
    groups: dict[tuple[int, str], list[str]] = defaultdict(list)
    for system in _order(reasons):
        why = ", ".join(f"{reason}: {n}" for reason, n in reasons[system].most_common())
        groups[(sum(reasons[system].values()), why)].append(system)
    return "; ".join(
        f"no value for {', '.join(systems)} on {count} clip{'s' if count > 1 else ''}"
        f"{' each' if len(systems) > 1 else ''} ({why})"
        for (count, why), systems in groups.items()
    )


def summarize(rows: list[dict]) -> Summary:
    """Per split, system and metric: the mean over the clips where every system that has the
    metric at all has it, so rows compare like with like; NaNs are left out and noted."""
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    means: dict[tuple[str, str], dict[str, Mean]] = defaultdict(dict)
    clips: dict[tuple[str, str], int] = Counter((r["split"], r["system"]) for r in rows)
    notes = []
    for split, split_rows in sorted(by_split.items()):
        ids = {r["id"] for r in split_rows}
        systems = _order({r["system"] for r in split_rows})
        for metric in SUMMARY_METRICS:
            valued: dict[str, dict[str, dict]] = {s: {} for s in systems}
            for row in split_rows:
                if not math.isnan(row[metric]):
                    valued[row["system"]][row["id"]] = row
            scored = [s for s in systems if valued[s]]
            paired = set.intersection(*(set(valued[s]) for s in scored)) if scored else set()
            for system in scored:
                chosen = [valued[system][i] for i in sorted(paired)]
                if chosen:
                    means[(split, system)][metric] = _mean(metric, chosen)
            # A metric only some systems have at all (the lips' reading) is noted for those.
            if any(len(valued[s]) < clips[(split, s)] for s in scored or systems):
                header = HEADERS.get(metric, metric)
                notes.append(
                    f"{split} {header}: means over {len(paired)} of {len(ids)} clips; "
                    + _gaps(split_rows, metric)
                )
    asr = sorted({r["asr"] for r in rows if r.get("asr")})
    return Summary(means=dict(means), clips=dict(clips), notes=notes, asr=asr)


def summary_cells(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The summary as a table: column headers, and one row of cells per (split, system); a mean
    over fewer clips than the system has carries its count ("0.512±0.020 (n=14)")."""
    shown = [
        m
        for m in SUMMARY_METRICS
        if m in ALWAYS_SHOWN or any(m in v for v in summary.means.values())
    ]
    order = _order({system for _, system in summary.clips})
    keys = sorted(summary.clips, key=lambda k: (k[0], order.index(k[1])))
    body = []
    for split, system in keys:
        values, clips = summary.means.get((split, system), {}), summary.clips[(split, system)]
        cells = []
        for metric in shown:
            mean = values.get(metric)
            if mean is None:
                cells.append("–")
            else:
                count = f" (n={mean.n})" if mean.n < clips else ""
                cells.append(f"{mean.value:.3f}±{mean.half_interval:.3f}{count}")
        body.append([split, system, str(clips), *cells])
    return ["split", "system", "clips", *(HEADERS.get(m, m) for m in shown)], body


def summary_caption(summary: Summary) -> list[str]:
    """What the table needs said beside it: the recognizer, how WER / CER pool, the notes."""
    asr = ", ".join(summary.asr) if summary.asr else "none (WER / CER not scored)"
    return [
        f"ASR: {asr}. WER / CER pooled: Σ errors ÷ Σ reference words (characters).",
        *summary.notes,
    ]


def print_summary(
    rows: list[dict],
    console: Console | None = None,
    title: str = "scores (Griffin-Lim; mean ± 95 % interval over the clips where every system has "
    "the metric)",
) -> None:
    summary = summarize(rows)
    header, body = summary_cells(summary)
    table = Table(title=title, caption="\n".join(summary_caption(summary)), caption_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i < 2, justify="left" if i < 2 else "right")
    for cells in body:
        table.add_row(*cells)
    console = console or Console()
    if not console.is_terminal:  # a log file: no need to squeeze the table into 80 columns
        console.width = max(console.width, 160)
    console.print(table)
