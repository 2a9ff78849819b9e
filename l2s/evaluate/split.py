"""Scoring a generated split against the recordings, with two baselines in the same table.

Systems, each vocoded by the split's vocoder (Griffin-Lim unless `l2s generate --vocoder` named
another) and scored against the clip's original waveform:
  l2s          the model's mel (the wav `generate_split` wrote)
  gt_mel       the ground-truth mel: the ceiling the vocoder allows
  mean_mel     a constant predictor, the training mel mean at every frame: the floor

    rows = score_results("out/results/test")          # one row per (clip, system)
    print_summary(rows)                                # mean and 95 % interval per split and system
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import soundfile as sf
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from l2s import storage
from l2s.audio import load_audio, write_wav
from l2s.config import AUDIO, MELS_PER_FRAME
from l2s.evaluate.metrics import score_utterance
from l2s.infer.vocoder import load_vocoder
from l2s.pipeline import shards
from l2s.pipeline.adapter import Resources, Stage
from l2s.pipeline.generate import WAV_DIR, mel_of

SCORES_FILE = "scores.parquet"
# Folders (in a results folder) of the recordings and of each system's audio.
AUDIO_DIRS = {"reference": "reference", "l2s": WAV_DIR, "gt_mel": "gt_mel", "mean_mel": "mean_mel"}
SYSTEMS = ("l2s", "gt_mel", "mean_mel")
SUMMARY_METRICS = ("stoi", "estoi", "pesq_wb", "pesq_nb", "mcd", "speaker_similarity", "wer")
HEADERS = {"speaker_similarity": "spk_sim"}  # short column names for the printed table


def reference_audio(record: dict) -> np.ndarray:
    """The clip's recorded speech, cut to the frames the features cover."""
    if not record["video"]:
        raise FileNotFoundError(f"{record['id']}: source video unknown (the manifest is gone)")
    wav_S = load_audio(record["video"], AUDIO.sample_rate)
    return wav_S[: record["n_frames"] * MELS_PER_FRAME * AUDIO.hop_length]


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


def _embedding(encoder, wav_S: np.ndarray) -> np.ndarray | None:
    """The speaker embedding of a waveform, or None when there is no speech to embed (the
    similarity is then NaN): a silent mean-mel baseline must not stop the scoring."""
    from l2s.speaker import SpeakerError

    if encoder is None:
        return None
    try:
        return encoder.embed(wav_S)
    except SpeakerError:
        return None


def score_record(record: dict, results: str, recognizer=None, speaker_encoder=None) -> list[dict]:
    """One generated clip → one score row per system; the recording and the baselines' audio (the
    record's vocoder) are written beside the model's wavs (for the report) unless already there.

    With a `speaker_encoder` (l2s.speaker.SpeakerEncoder), `speaker_similarity` is the cosine of
    each system's embedding with the recording's."""
    reference_S = reference_audio(record)
    reference_D = _embedding(speaker_encoder, reference_S)
    audio = system_audio(record, load_vocoder(record.get("vocoder")))
    for name, wav_S in (
        ("reference", reference_S),
        ("gt_mel", audio["gt_mel"]),
        ("mean_mel", audio["mean_mel"]),
    ):
        uri = storage.join(results, AUDIO_DIRS[name], f"{record['id']}.wav")
        if not storage.exists(uri):
            write_wav(uri, wav_S)
    rows = []
    for system, generated_S in audio.items():
        hypothesis = recognizer.transcribe(generated_S) if recognizer else None
        scores = score_utterance(
            reference_S,
            generated_S,
            transcript=record["transcript"] if recognizer else None,
            hypothesis=hypothesis,
            reference_embedding=reference_D,
            generated_embedding=_embedding(speaker_encoder, generated_S),
        )
        rows.append(
            {
                "id": record["id"],
                "speaker": record["speaker"],
                "split": record["split"],
                "system": system,
                "hypothesis": hypothesis,
                "asr": recognizer.name if recognizer else None,
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
        from l2s.speaker import SpeakerEncoder

        self.recognizer = None
        if self.asr is not None:
            from l2s.evaluate.asr import PocketSphinxASR

            self.recognizer = PocketSphinxASR(self.asr)
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
    results: str, asr: str | None = None, *, workers: int | None = None, progress: bool = True
) -> list[dict]:
    """Score every generated clip of `results` in parallel on the current Ray (one actor per CPU);
    write `results/scores.parquet`.

    The generated records (mels and all) are streamed from their shards to the actors: the
    driver holds only the score rows. `asr`: None (no WER / CER), "grid" or "open" (pocketsphinx,
    offline).
    """
    import pyarrow.parquet as pq
    import ray

    from l2s.pipeline.adapter import apply, remote_args
    from l2s.pipeline.generate import GENERATED

    files = shards.list_shards(results, GENERATED)
    if not files:
        raise FileNotFoundError(f"{results}: nothing generated yet ({GENERATED}/ is empty)")
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


def summarize(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(split, system) → metric → (mean, 95 % half-interval, n), NaNs left out."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["split"], row["system"])].append(row)
    summary = {}
    for key, group in groups.items():
        summary[key] = {}
        for metric in SUMMARY_METRICS:
            values = np.array([r[metric] for r in group if not math.isnan(r[metric])])
            if len(values):
                half = (
                    1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
                )
                summary[key][metric] = (float(values.mean()), float(half), len(values))
    return summary


def print_summary(
    rows: list[dict],
    console: Console | None = None,
    title: str = "scores (Griffin-Lim; mean ± 95 % interval)",
) -> None:
    summary = summarize(rows)
    table = Table(title=title)
    table.add_column("split", no_wrap=True)
    table.add_column("system", no_wrap=True)
    table.add_column("clips", justify="right")
    shown = [m for m in SUMMARY_METRICS if any(m in v for v in summary.values())]
    for metric in shown:
        table.add_column(HEADERS.get(metric, metric), justify="right")
    order = {s: i for i, s in enumerate(SYSTEMS)}
    for split, system in sorted(summary, key=lambda k: (k[0], order.get(k[1], 99))):
        values = summary[(split, system)]
        n = max((v[2] for v in values.values()), default=0)
        cells = [f"{values[m][0]:.3f}±{values[m][1]:.3f}" if m in values else "–" for m in shown]
        table.add_row(split, system, str(n), *cells)
    console = console or Console()
    if not console.is_terminal:  # a log file: no need to squeeze the table into 80 columns
        console.width = max(console.width, 140)
    console.print(table)
