"""Does the lip-read text make the speech intelligible? One ablation on one dataset, same data and
same training budget for every model:

    regression       the text-free model (Kim et al.'s multi-task design: CTC head unused at
                     inference)
    + text           the mel decoder attends to the lip-read text (Hegde et al.'s idea): trained
                     on transcripts with lip-reader-like errors, run on the lips' own reading
    flow             a text-conditioned model with a flow-matching head (its own training run),
                     sampled in 16 Euler steps without guidance
    flow + guidance  the same samples with classifier-free guidance on video and text, and a
                     recognizer (`l2s train-asr`, --guide) pulling each step toward the lip-read
                     text (LipVoicer's idea)
    oracle text      the + text model hearing the true transcript: the ceiling of text conditioning

    python benchmarks/intelligibility.py /work/data/grid_s1/features --out out/bench/grid \\
        --steps 1500 --asr out/runs/asr_grid --guide out/runs/asr_grid

Each model trains (in this process, through the one training loop: `l2s.train.train(...,
local=True)`; a rerun resumes or skips a finished run) with the tiny preset, batch 4, lr 4e-3, no
time masking. The test split is then spoken in-process by the same per-batch function batch
generation runs (`l2s.pipeline.generate.generate_clips`, Griffin-Lim), timed for the real-time
factor, and scored against the recordings: STOI, ESTOI, PESQ-WB, MCD, WER / CER of each recognizer
(pocketsphinx with the GRID grammar or its open LM, chosen from the transcripts; and any
`l2s train-asr` run given with --asr), and the lips' reading (VSR WER / CER). The recordings' own
row (each recognizer's own WER) and the ground-truth mel through Griffin-Lim are in the table.
WER / CER are pooled over the split's words and characters. The table is printed and written to
OUT/table.md, every per-clip row to OUT/rows.json.

Every stage resumes: a finished training run is not opened again, and each batch of 8 clips'
speech (OUT/speech/SYSTEM/records/) and scores (OUT/scores/SYSTEM/) is saved when done, so a
stopped run picks up where it was (delete those folders after retraining a model). The real-time
factor is the sum of the timed batches' seconds over the speech they made, on whatever load the
machine had then.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SIGNALS = ("stoi", "estoi", "pesq_wb", "mcd")


@dataclass(frozen=True)
class System:
    name: str
    run: str  # the trained model it speaks with (a key of RUNS)
    oracle: bool = False
    guided: bool = False  # a flow head sampled with guidance (--video-guidance, ...)


RUNS: dict[str, dict] = {
    "regression": {},
    "text": {"text_conditioning": True},
    "flow": {"text_conditioning": True, "flow_head": True},
}
SYSTEMS = (
    System("regression", "regression"),
    System("+ text", "text"),
    System("flow", "flow"),
    System("flow + guidance", "flow", guided=True),
    System("oracle text", "text", oracle=True),
)


@dataclass
class Trained:
    run: str
    steps: int
    minutes: float
    parameters: int
    val: dict = field(default_factory=dict)


def train_run(dataset: str, out: Path, name: str, args: argparse.Namespace) -> Trained:
    import dataclasses

    import torch

    from l2s.models.lip2speech import Lip2Speech, count_parameters, tiny
    from l2s.train import TrainConfig, summarize_run, train

    steps = args.flow_steps if RUNS[name].get("flow_head") and args.flow_steps else args.steps
    cfg = TrainConfig(
        dataset=dataset,
        out=str(out / "runs" / name),
        model=dataclasses.replace(tiny(), **RUNS[name]),
        steps=steps,
        batch_size=4,
        lr=4e-3,
        warmup_steps=100,
        time_mask=False,
        text_noise=args.text_noise,
        val_every=steps,
        ckpt_every=min(steps, 100),  # a run stopped midway resumes from its last hundred steps
        val_utterances=64,
        n_val_audio=0,
        workers=1,
        seed=args.seed,
    )
    summary = summarize_run(cfg.out, cfg.steps, 0)
    if summary.step < cfg.steps:  # a finished run is not opened again (its data would be read)
        summary = train(cfg, local=True)
    val = {k: v for k, v in summary.metrics.items() if k.startswith("val/")}
    with torch.device("meta"):
        parameters = count_parameters(Lip2Speech(cfg.model_config))
    return Trained(summary.run, summary.step, summary.train_seconds / 60, parameters, val)


BATCH = 8  # clips per forward pass, and per saved part of the speech and of the scores


def speak_split(
    dataset: str, rows: list, checkpoint: str, system: System, out: Path, args: argparse.Namespace
) -> tuple[list[dict], float]:
    """The split's clips spoken by `checkpoint` in this process: records and the seconds the
    model and vocoder took. Each batch's records are saved (OUT/records/) as it is done, so a
    rerun of a run that was stopped speaks only the batches it lacks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = [vars(r) for r in rows][: args.limit]
    parts = out / "records"
    parts.mkdir(parents=True, exist_ok=True)
    speak = None
    records, seconds = [], 0.0
    for first in range(0, len(clips), BATCH):
        part = parts / f"{first:05d}.parquet"
        if not part.exists():
            speak = speak or speaker(dataset, checkpoint, system, out, args, rows, clips[0])
            start = time.perf_counter()
            spoken = speak(clips[first : first + BATCH])
            took = time.perf_counter() - start
            table = pa.Table.from_pylist(spoken).replace_schema_metadata({"seconds": f"{took}"})
            pq.write_table(table, f"{part}.tmp")
            Path(f"{part}.tmp").rename(part)
        table = pq.read_table(part)
        seconds += float(table.schema.metadata[b"seconds"])
        records += table.to_pylist()
    return records, seconds


def speaker(
    dataset: str,
    checkpoint: str,
    system: System,
    out: Path,
    args: argparse.Namespace,
    rows: list,
    warm_clip: dict,
) -> Callable[[list[dict]], list[dict]]:
    """batch of clips → records, for `system` (a warmed-up model: the first call is not timed)."""
    from l2s.infer.model import SpeechModel
    from l2s.infer.recognizer import Recognizer
    from l2s.infer.sampling import FlowSampling
    from l2s.infer.vocoder import load_vocoder
    from l2s.infer.voice import SplitVoices
    from l2s.pipeline.generate import generate_clips, source_rows

    model, vocode = SpeechModel.load(checkpoint), load_vocoder(None)
    if system.guided:
        model.sampling = FlowSampling(
            video_guidance=args.video_guidance,
            text_guidance=args.text_guidance,
            asr_scale=args.asr_scale if args.guide else 0.0,
        )
        model.guide = Recognizer.load(args.guide).network if args.guide else None
    voices = SplitVoices(model.speakers).add(
        [r.speaker for r in rows], [r.speaker_embedding for r in rows]
    )
    sources = source_rows(dataset)

    def speak(batch: list[dict]) -> list[dict]:
        return generate_clips(model, batch, voices, sources, str(out), vocode, system.oracle)

    generate_clips(model, [warm_clip], voices, sources, str(out / "warm"), vocode, system.oracle)
    return speak


def score(records: list[dict], system: str, recognizers: list, out: Path) -> list[dict]:
    """One row per clip: signal scores against the recording, WER / CER per recognizer (its name
    in the key; the first one's also as plain `wer` / `cer`), the lips' reading (VSR WER / CER).
    Each batch's rows are saved (OUT/scores/SYSTEM/) as it is done; a rerun reads them back."""
    parts = out / "scores" / slug(system)
    parts.mkdir(parents=True, exist_ok=True)
    rows = []
    for first in range(0, len(records), BATCH):
        part = parts / f"{first:05d}.json"
        saved = json.loads(part.read_text()) if part.exists() else []
        names = {f"wer[{asr.name}]" for asr in recognizers}
        if not saved or any(not names <= row.keys() for row in saved):  # none, or other ASRs
            saved = [score_clip(r, system, recognizers) for r in records[first : first + BATCH]]
            Path(f"{part}.tmp").write_text(json.dumps(saved))
            Path(f"{part}.tmp").rename(part)
        rows += saved
    return rows


def score_clip(record: dict, system: str, recognizers: list) -> dict:
    import soundfile as sf

    from l2s.evaluate.metrics import cer, score_utterance, wer
    from l2s.evaluate.split import reference_audio
    from l2s.infer.vocoder import load_vocoder
    from l2s.pipeline.generate import mel_of

    reference_S = reference_audio(record)
    if system == "recording":
        generated_S = reference_S
    elif system == "gt_mel":
        generated_S = load_vocoder(None)(mel_of(record, "target_mel"))
    else:
        generated_S, _ = sf.read(record["wav"], dtype="float32")
    hypotheses = [asr.transcribe(generated_S) for asr in recognizers]
    row = {"id": record["id"], "split": record["split"], "system": system}
    row |= score_utterance(
        reference_S,
        generated_S,
        transcript=record["transcript"],
        hypothesis=hypotheses[0],
        lip_text=record["text"] if system not in ("recording", "gt_mel") else None,
    )
    for asr, hypothesis in zip(recognizers, hypotheses, strict=True):
        row[f"wer[{asr.name}]"] = wer(record["transcript"], hypothesis)
        row[f"cer[{asr.name}]"] = cer(record["transcript"], hypothesis)
        row[f"heard[{asr.name}]"] = hypothesis
    row["lip_text"] = record.get("text")
    return row


def slug(system: str) -> str:
    return system.replace(" ", "_").replace("+", "plus")


def pooled(rows: list[dict], rate: str, units: str) -> float:
    total = sum(r[units] for r in rows)
    return sum(r[rate] * r[units] for r in rows) / total if total else float("nan")


def table(rows: list[dict], recognizers: list, rtf: dict, trained: dict) -> list[str]:
    import math

    names = [a.name for a in recognizers]
    header = ["system", *SIGNALS, *(f"WER {n}" for n in names), *(f"CER {n}" for n in names),
              "VSR WER", "VSR CER", "RTF", "train"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        cells = [system]
        for metric in SIGNALS:
            values = [r[metric] for r in mine if not math.isnan(r[metric])]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "–")
        for kind in ("wer", "cer"):
            units = "ref_words" if kind == "wer" else "ref_chars"
            cells += [f"{pooled(mine, f'{kind}[{n}]', units):.3f}" for n in names]
        for kind, units in (("vsr_wer", "ref_words"), ("vsr_cer", "ref_chars")):
            lipread = [r for r in mine if not math.isnan(r[kind])]
            cells.append(f"{pooled(lipread, kind, units):.3f}" if lipread else "–")
        cells.append(f"{rtf[system]:.3f}" if system in rtf else "–")
        run = trained.get(system)
        cells.append(f"{run.steps} steps, {run.minutes:.0f} min" if run else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--flow-steps",
        type=int,
        help="the flow model's budget when it must differ (said in the table)",
    )
    parser.add_argument("--text-noise", type=float, default=0.2)
    parser.add_argument("--asr", action="append", default=[], help="an l2s train-asr run")
    parser.add_argument("--guide", help="an l2s train-asr run steering flow + guidance")
    parser.add_argument("--video-guidance", type=float, default=1.5)
    parser.add_argument("--text-guidance", type=float, default=2.0)
    parser.add_argument("--asr-scale", type=float, default=1.0)
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS))
    parser.add_argument("--limit", type=int, help="speak only the split's first N clips (by id)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from l2s.evaluate.asr import load_recognizer, mode_for_transcripts
    from l2s.pipeline import shards

    out = Path(args.out)
    chosen = [s for s in SYSTEMS if s.name in args.systems.split(",")]
    features = sorted(shards.read_features(args.dataset, split=args.split), key=lambda r: r.id)
    transcripts = [r.transcript for r in features]
    recognizers = [load_recognizer(mode_for_transcripts(transcripts) or "open")]
    recognizers += [load_recognizer(spec) for spec in args.asr]

    trained = {}
    for name in dict.fromkeys(s.run for s in chosen):
        start = time.perf_counter()
        trained[name] = train_run(args.dataset, out, name, args)
        print(f"[bench] {name}: {trained[name]} ({time.perf_counter() - start:.0f} s this call)")

    rows, rtf, by_system, n_clips = [], {}, {}, 0
    for system in chosen:
        folder = out / "speech" / slug(system.name)
        run = trained[system.run].run
        records, seconds = speak_split(args.dataset, features, run, system, folder, args)
        speech = sum(r["n_frames"] for r in records) / 25
        rtf[system.name] = seconds / speech
        n_clips = len(records)
        by_system[system.name] = trained[system.run]
        if not rows:
            rows += score(records, "recording", recognizers, out)
            rows += score(records, "gt_mel", recognizers, out)
        rows += score(records, system.name, recognizers, out)
        print(
            f"[bench] {system.name}: {len(records)} clips spoken, real-time factor {rtf[system.name]:.3f}"
        )

    guidance = (
        f"video {args.video_guidance:g}, text {args.text_guidance:g}, ASR "
        f"{args.asr_scale if args.guide else 0:g} ({args.guide or 'no recognizer'})"
    )
    lines = [
        f"{args.dataset}, split {args.split} ({n_clips} of {len(transcripts)} clips); tiny preset, {args.steps} "
        f"steps × batch 4 per model (flow: {args.flow_steps or args.steps}), in-process; Griffin-Lim; WER/CER pooled; flow: 16 Euler "
        f"steps; guidance: {guidance}.",
        "",
        *table(rows, recognizers, rtf, by_system),
    ]
    print("\n".join(lines))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
