"""The `l2s` command line: thin commands over the library."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Lip-to-speech at corpus scale on Ray.", no_args_is_help=True, add_completion=False
)
console = Console()
# Options several commands share, each declared once.
Checkpoint = Annotated[str, typer.Option(help="A checkpoint or a run directory (its latest).")]
Vocoder = Annotated[
    str | None,
    typer.Option(
        help="griffin-lim (default), or a HiFi-GAN run (l2s train-vocoder) or checkpoint."
    ),
]
Speaker = Annotated[str | None, typer.Option(help="A speaker the model was trained on.")]
RunDir = Annotated[str, typer.Option(help="Run directory (local or s3://); the same one resumes.")]
Nodes = Annotated[
    int, typer.Option(help="Nodes (with --gpus-per-node; on CPUs, --workers spread over them).")
]
GpusPerNode = Annotated[int, typer.Option(help="GPUs per node (0: train on CPU).")]
Workers = Annotated[int, typer.Option(help="CPU training workers (no GPUs).")]
CpusPerWorker = Annotated[
    float | None,
    typer.Option(help="CPUs each worker asks for (default: most of the cluster, shared)."),
]
Steps = Annotated[int, typer.Option(help="Optimizer steps in all.")]
TimeBudget = Annotated[
    float | None, typer.Option(help="Minutes of training in all (over resumes).")
]
ValEvery = Annotated[int, typer.Option(help="Steps between validations.")]
CkptEvery = Annotated[int, typer.Option(help="Steps between checkpoints.")]
Seed = Annotated[int, typer.Option(help="Seed for weights and data order.")]


def _version(value: bool) -> None:
    if value:
        from l2s import __version__

        console.print(f"l2s {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Lip-to-speech at corpus scale on Ray: silent talking-face video in, speech out."""


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the corpus to (LRS3 layout).")],
    speakers: Annotated[int, typer.Option(help="Speakers in train/val/test.")] = 4,
    utterances: Annotated[
        int, typer.Option(help="Utterances per speaker (85 % train, 5 % val, 10 % test).")
    ] = 50,
    unseen_speakers: Annotated[
        int, typer.Option(help="Extra speakers only in test_unseen_speakers.")
    ] = 1,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    vocab: Annotated[
        str, typer.Option(help="'grid' (the GRID grammar) or 'open' (short English sentences).")
    ] = "grid",
    workers: Annotated[int, typer.Option(help="Processes (0: all cores).")] = 0,
) -> None:
    """Generate the synthetic talking-face corpus: espeak-ng speech with lips that follow it."""
    from l2s.synth.corpus import SynthConfig, generate

    cfg = SynthConfig(
        speakers=speakers,
        utterances=utterances,
        unseen_speakers=unseen_speakers,
        seed=seed,
        vocab=vocab,
    )
    start = time.perf_counter()
    written = list(generate(cfg, out, workers=workers or None))
    elapsed = time.perf_counter() - start
    summarize_corpus(out)
    rate = (
        f", {len(written) / elapsed:.1f} clips/s" if written else " (all clips were already there)"
    )
    console.print(f"wrote {len(written)} clips to {out} in {elapsed:.1f} s{rate}")


@app.command("synth-sheet")
def synth_sheet(
    corpus: Annotated[Path, typer.Argument(help="A corpus made by `l2s synth`.")],
    out: Annotated[Path, typer.Argument(help="PNG to write.")],
) -> None:
    """Contact sheet of the synthetic mouths: one row per viseme, one column per speaker."""
    from l2s.synth.sheet import viseme_sheet

    console.print(f"wrote {viseme_sheet(corpus, out)}")


@app.command()
def manifest(
    corpus: Annotated[str, typer.Argument(help="lrs2, lrs3, lrw, grid, folder or synthetic.")],
    root: Annotated[str, typer.Argument(help="The corpus root (local path or s3://).")],
    out: Annotated[str, typer.Argument(help="Manifest Parquet to write (local path or s3://).")],
) -> None:
    """Scan a corpus into a manifest: one row per utterance; says what it skipped and why."""
    from l2s.corpora import scan, skip_counts, write_manifest

    rows, skips = scan(corpus, root)
    write_manifest(rows, out)
    splits = Counter(r.split for r in rows)
    console.print(
        f"{len(rows)} utterances ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))}) → {out}"
    )
    for reason, count in skip_counts(skips).items():
        console.print(f"  skipped {count}: {reason}")


@app.command()
def preprocess(
    manifest_uri: Annotated[
        str, typer.Argument(metavar="MANIFEST", help="Manifest Parquet (l2s manifest).")
    ],
    out: Annotated[str, typer.Argument(help="Feature dataset directory (local path or s3://).")],
    backend: Annotated[
        str, typer.Option(help="Face backend: dlib (offline default) or face_alignment.")
    ] = "dlib",
    weights_dir: Annotated[str | None, typer.Option(help="Staged face_alignment weights.")] = None,
    shard_size: Annotated[int, typer.Option(help="Clips per Parquet shard.")] = 8,
    workers: Annotated[int, typer.Option(help="Feature actors (0: one per CPU or GPU).")] = 0,
    speaker_embeddings: Annotated[bool, typer.Option(help="Compute speaker embeddings.")] = True,
) -> None:
    """Video corpus → feature Parquet on Ray Data (resumable: a rerun skips what is written)."""
    from l2s.face import FaceConfig
    from l2s.features import FeatureConfig
    from l2s.pipeline.preprocess import PreprocessConfig, run_preprocess

    cfg = PreprocessConfig(
        features=FeatureConfig(face=FaceConfig(backend=backend, weights_dir=weights_dir)),
        shard_size=shard_size,
        workers=workers or None,
        speaker_embeddings=speaker_embeddings,
    )
    run_preprocess(manifest_uri, out, cfg)


@app.command("roi-sheet")
def roi_sheet(
    features: Annotated[str, typer.Argument(help="Feature dataset directory.")],
    out: Annotated[Path, typer.Argument(help="PNG to write.")],
    limit: Annotated[int, typer.Option(help="Clips to show.")] = 12,
) -> None:
    """Contact sheet of mouth ROIs from a feature dataset: one row per clip."""
    from l2s.face import contact_sheet
    from l2s.pipeline.shards import read_features

    rows = sorted(read_features(features), key=lambda r: r.id)[:limit]
    path = contact_sheet([r.roi_THW() for r in rows], [r.id for r in rows], out)
    console.print(f"wrote {path}")


@app.command()
def train(
    dataset: Annotated[str, typer.Argument(help="Feature dataset directory (l2s preprocess).")],
    out: RunDir = "out/runs/tiny",
    preset: Annotated[str, typer.Option(help="Model size: tiny, base or large.")] = "tiny",
    nodes: Nodes = 1,
    gpus_per_node: GpusPerNode = 0,
    workers: Workers = 2,
    cpus_per_worker: CpusPerWorker = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="ddp or deepspeed (default: deepspeed for base/large on GPUs, else ddp)"),
    ] = None,
    zero_stage: Annotated[int, typer.Option(help="DeepSpeed ZeRO stage.")] = 2,
    steps: Steps = 2000,
    time_budget: TimeBudget = None,
    batch_size: Annotated[int, typer.Option(help="Clips per worker and step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 100,
    ctc_weight: Annotated[float, typer.Option(help="Weight of the CTC text task.")] = 0.1,
    time_mask: Annotated[
        bool, typer.Option(help="Time masking (helps long runs; slows runs of minutes).")
    ] = True,
    val_every: ValEvery = 200,
    ckpt_every: CkptEvery = 500,
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPU), fp32 or bf16.")] = "auto",
    dropout: Annotated[
        float | None, typer.Option(help="Model dropout (default: the preset's).")
    ] = None,
    text_conditioning: Annotated[
        bool,
        typer.Option(
            help="The decoder attends to the lip-read text (noisy transcripts in training)."
        ),
    ] = False,
    text_noise: Annotated[
        float,
        typer.Option(help="Fraction of transcript words misread in text-conditioned training."),
    ] = 0.2,
    video_dropout: Annotated[
        float,
        typer.Option(
            help="Fraction of clips whose decoder hears the text without the video in "
            "text-conditioned training (modality dropout)."
        ),
    ] = 0.0,
    grammar: Annotated[
        str,
        typer.Option(
            help="How lips are read: auto (GRID's grammar for GRID), grid, lexicon, none."
        ),
    ] = "auto",
    init: Annotated[
        str | None,
        typer.Option(help="Start from this checkpoint's (or run's) weights: fine-tuning."),
    ] = None,
    recognizer: Annotated[
        str | None,
        typer.Option(
            help="A train-asr run: its frozen recognizer reads the generated mel, and its CTC "
            "loss against the transcript joins the training loss."
        ),
    ] = None,
    asr_weight: Annotated[float, typer.Option(help="Weight of that recognizer's loss.")] = 0.3,
    seed: Seed = 0,
) -> None:
    """Train the lip-to-speech model on Ray Train (DDP or DeepSpeed); rerun to resume."""
    from l2s.models.losses import LossConfig
    from l2s.train import TrainConfig
    from l2s.train import train as run_training

    if strategy is None:
        strategy = "deepspeed" if gpus_per_node > 0 and preset != "tiny" else "ddp"
    from l2s.models.lip2speech import PRESETS

    model = None
    if (dropout is not None or text_conditioning) and preset in PRESETS:
        sizes = PRESETS[preset]()
        model = dataclasses.replace(
            sizes,
            dropout=sizes.dropout if dropout is None else dropout,
            text_conditioning=text_conditioning,
        )
    cfg = TrainConfig(
        dataset=dataset,
        out=out,
        preset=preset,
        model=model,
        loss=LossConfig(ctc_weight=ctc_weight, asr_weight=asr_weight),
        recognizer=recognizer,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(warmup_steps, steps - 1),
        time_mask=time_mask,
        grammar=grammar,
        text_noise=text_noise,
        video_dropout=video_dropout,
        val_every=val_every,
        ckpt_every=ckpt_every,
        strategy=strategy,
        zero_stage=zero_stage,
        precision=precision,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        time_budget_min=time_budget,
        init=init,
        seed=seed,
    )
    _print_run(
        run_training(cfg), ("val/post_l1", "val/stoi_gl", "val/estoi_gl", "train/samples_per_s")
    )


@app.command("train-vocoder")
def train_vocoder(
    dataset: Annotated[
        str, typer.Argument(help="Feature dataset directory; its manifest names the recordings.")
    ],
    out: RunDir = "out/runs/hifigan",
    preset: Annotated[
        str, typer.Option(help="HiFi-GAN size: tiny (CPU), v3 or v1 (GPUs).")
    ] = "tiny",
    nodes: Nodes = 1,
    gpus_per_node: GpusPerNode = 0,
    workers: Workers = 2,
    cpus_per_worker: CpusPerWorker = None,
    steps: Steps = 100_000,
    time_budget: TimeBudget = None,
    batch_size: Annotated[int, typer.Option(help="Segments per worker and step.")] = 16,
    segment_frames: Annotated[
        int, typer.Option(help="Mel frames per segment (×160 samples).")
    ] = 32,
    lr: Annotated[float, typer.Option(help="Initial learning rate (AdamW β 0.8, 0.99).")] = 2e-4,
    final_lr_ratio: Annotated[
        float, typer.Option(help="The learning rate decays exponentially to lr × this.")
    ] = 0.5,
    gan_after: Annotated[
        int, typer.Option(help="Generator-only steps (mel + STFT loss) before the GAN terms.")
    ] = 0,
    val_every: ValEvery = 500,
    ckpt_every: CkptEvery = 1000,
    seed: Seed = 0,
) -> None:
    """Train a HiFi-GAN vocoder on a dataset's ground-truth mels and recordings (Ray Train);
    rerun to resume. Validation prints PESQ-WB / STOI beside Griffin-Lim's on the same mels."""
    from l2s.train.vocoder import VocoderTrainConfig
    from l2s.train.vocoder import train_vocoder as run_training

    cfg = VocoderTrainConfig(
        dataset=dataset,
        out=out,
        preset=preset,
        steps=steps,
        batch_size=batch_size,
        segment_frames=segment_frames,
        lr=lr,
        final_lr_ratio=final_lr_ratio,
        gan_after=gan_after,
        val_every=val_every,
        ckpt_every=ckpt_every,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        time_budget_min=time_budget,
        seed=seed,
    )
    _print_run(run_training(cfg), ("val/pesq_wb", "val/stoi", "val/pesq_wb_gl", "val/stoi_gl"))


@app.command("train-asr")
def train_asr(
    dataset: Annotated[
        str, typer.Argument(help="Feature dataset directory: its mels and transcripts.")
    ],
    out: RunDir = "out/runs/asr",
    preset: Annotated[str, typer.Option(help="Recognizer size: tiny (CPU) or base.")] = "tiny",
    nodes: Nodes = 1,
    gpus_per_node: GpusPerNode = 0,
    workers: Annotated[int, typer.Option(help="CPU training workers (no GPUs).")] = 1,
    steps: Steps = 4000,
    time_budget: TimeBudget = None,
    batch_size: Annotated[int, typer.Option(help="Clips per worker and step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    grammar: Annotated[
        str, typer.Option(help="How speech is read: auto (GRID's grammar for GRID), lexicon, none.")
    ] = "auto",
    val_every: ValEvery = 500,
    ckpt_every: CkptEvery = 500,
    seed: Seed = 0,
) -> None:
    """Train a CTC speech recognizer on a dataset's recordings (log-mels) and transcripts on Ray
    Train; rerun to resume. `l2s score --asr RUN` scores WER with it."""
    from l2s.train.asr import AsrTrainConfig
    from l2s.train.asr import train_asr as run_training

    cfg = AsrTrainConfig(
        dataset=dataset,
        out=out,
        preset=preset,
        grammar=grammar,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(200, steps - 1),
        val_every=val_every,
        ckpt_every=ckpt_every,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workers=workers,
        time_budget_min=time_budget,
        seed=seed,
    )
    _print_run(run_training(cfg), ("val/wer", "val/cer", "val/wer_greedy", "train/ctc"))


@app.command()
def generate(
    dataset: Annotated[str, typer.Argument(help="Feature dataset directory.")],
    checkpoint: Checkpoint,
    out: Annotated[str, typer.Option(help="Results folder: wavs/ and generated/ records.")],
    split: Annotated[str, typer.Option(help="Split to generate.")] = "test",
    batch_size: Annotated[
        int, typer.Option(help="Clips per batch, and 10-s model windows per forward pass.")
    ] = 8,
    workers: Annotated[
        int | None, typer.Option(help="Model actors (default: one per GPU, else per CPU).")
    ] = None,
    vocoder: Vocoder = None,
) -> None:
    """Generate speech for every clip of a split on Ray Data model actors; the voice
    never comes from the clip itself. Rerun to finish an interrupted run."""
    from l2s.pipeline.generate import generate_split
    from l2s.pipeline.runtime import connect

    connect()
    summary = generate_split(
        dataset, split, checkpoint, out, batch_size=batch_size, workers=workers, vocoder=vocoder
    )
    console.print(
        f"{split}: {summary.clips} clips generated ({summary.skipped} already done), "
        f"{summary.speech_seconds:.0f} s of speech in {summary.seconds:.1f} s: real-time factor "
        f"{summary.real_time_factor:.3f}; results in {out}"
    )


@app.command()
def score(
    results: Annotated[list[str], typer.Argument(help="Results folders (l2s generate).")],
    asr: Annotated[
        str,
        typer.Option(
            help="WER/CER with pocketsphinx: auto (the GRID grammar when every transcript is a "
            "GRID sentence, else the open LM), grid, open; or a recognizer run of l2s train-asr; "
            "or none."
        ),
    ] = "auto",
    report: Annotated[
        Path | None, typer.Option(help="HTML report (default: beside the first results folder)")
    ] = None,
) -> None:
    """Score generated speech against the recordings, with ground-truth-mel and mean-mel baselines;
    print the summary and write an HTML report."""
    from l2s.evaluate.asr import ASRError, load_recognizer
    from l2s.evaluate.report import write_report
    from l2s.evaluate.split import ASR_MODES, print_summary, score_results
    from l2s.pipeline.runtime import connect

    if asr not in (*ASR_MODES, "none"):
        try:
            load_recognizer(asr)
        except ASRError as e:
            console.print(f"[red]error:[/] --asr {e}; or auto, none")
            raise typer.Exit(2) from e
    connect()
    rows = [
        row for folder in results for row in score_results(folder, None if asr == "none" else asr)
    ]
    print_summary(rows, console)
    path = write_report(results, rows, report or Path(results[0]).parent / "report.html")
    console.print(f"report: {path}")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for everything the demo makes.")] = "out/demo",
    quick: Annotated[
        bool, typer.Option(help="A few clips and a minute of training: does everything run?")
    ] = False,
    speakers: Annotated[int | None, typer.Option(help="Speakers in the synthetic corpus.")] = None,
    utterances: Annotated[int | None, typer.Option(help="Utterances per speaker.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps of the tiny preset.")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Most minutes of training (stops there, even short).")
    ] = None,
) -> None:
    """The whole system on a local Ray: synth → preprocess → train → generate → score → report."""
    from l2s.demo import DemoConfig, run_demo
    from l2s.demo import quick as quick_config

    cfg = quick_config(out) if quick else DemoConfig(out=out)
    given = {"speakers": speakers, "utterances": utterances, "steps": steps}
    given["max_train_minutes"] = minutes
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    run_demo(cfg)


@app.command()
def speak(
    video: Annotated[str, typer.Argument(help="A silent (or not) video of a talking face.")],
    checkpoint: Checkpoint,
    out: Annotated[str, typer.Option(help="The wav to write.")] = "speech.wav",
    reference_audio: Annotated[
        str | None, typer.Option(help="A recording of the voice to speak in.")
    ] = None,
    speaker: Speaker = None,
    vocoder: Vocoder = None,
    text: Annotated[
        Path | None, typer.Option(help="Also write the lip-read transcript to this file.")
    ] = None,
    asr: Annotated[
        str | None,
        typer.Option(
            help="Also print the words a recognizer hears in the speech: grid, open "
            "(pocketsphinx with GRID's grammar or the open LM) or an l2s train-asr run."
        ),
    ] = None,
) -> None:
    """Speak for one video: mouth ROIs → mel → waveform (Griffin-Lim or HiFi-GAN), any frame rate
    or length; print what the lips were read to say (and, with --asr, what is heard)."""
    from l2s.infer import SpeakError
    from l2s.infer.speak import speak as run_speak

    recognizer = None
    if asr is not None:  # a bad --asr is refused before the video is read
        from l2s.evaluate.asr import ASRError, load_recognizer

        try:
            recognizer = load_recognizer(asr)
        except ASRError as e:
            console.print(f"[red]error:[/] --asr {e}")
            raise typer.Exit(2) from e
    try:
        spoken = run_speak(video, checkpoint, out, reference_audio, speaker, vocoder=vocoder)
    except SpeakError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    if text is not None:
        text.write_text(spoken.text + "\n")
    console.print(
        f"wrote {spoken.wav}: {spoken.seconds:.2f} s of speech; face on {spoken.face_ratio:.0%} of "
        f"frames; voice: {spoken.voice}; real-time factor {spoken.real_time_factor:.2f}\n"
        f"lips read: {spoken.text!r}{f' (→ {text})' if text else ''}"
    )
    if recognizer is not None:
        from l2s.audio import load_audio

        heard = recognizer.transcribe(load_audio(spoken.wav))
        console.print(f"heard ({recognizer.name}): {heard!r}")


@app.command()
def dub(
    src: Annotated[str, typer.Argument(help="Folder or prefix of videos (local or s3://).")],
    dst: Annotated[
        str, typer.Argument(help="Where DST/<relative path>.mp4 + .json and the ledger go.")
    ],
    checkpoint: Annotated[
        str | None,
        typer.Option(help="A lip-to-speech checkpoint or run: speech from the lips."),
    ] = None,
    speaker: Speaker = None,
    reference_audio: Annotated[
        str | None, typer.Option(help="A recording of the voice to speak in (local or s3://).")
    ] = None,
    speech_dir: Annotated[
        str | None,
        typer.Option(
            help="Speech files by the videos' relative names (a/b.mp4 ← S/a/b.wav): re-voice "
            "each video with its file and re-draw its lips (with --lipsync)."
        ),
    ] = None,
    lipsync: Annotated[
        str | None, typer.Option(help="The lip generator (l2s train-lipsync) for --speech-dir.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Model workers (0: one per GPU, else per CPU).")] = 0,
    retry_failed: Annotated[
        bool, typer.Option(help="Also redo videos that failed for good in earlier runs.")
    ] = False,
    vocoder: Vocoder = None,
    asr: Annotated[
        str,
        typer.Option(
            help="The sidecars' WER/CER recognizer: auto (pocketsphinx, GRID's grammar for a "
            "GRID model), grid, open, a recognizer run of l2s train-asr, or none."
        ),
    ] = "auto",
) -> None:
    """Give speech to every video under SRC not yet dubbed into DST, on Ray (rerun to resume):
    the video stream copied, the speech as its audio track, a JSON sidecar beside each (with the
    lip-read text, and WER of the speech against the source's own audio where it has one). With
    --speech-dir and --lipsync: each video's own speech file instead, and its lips re-drawn."""
    from l2s.dub import DubConfig, run_dub
    from l2s.evaluate.asr import ASRError
    from l2s.infer import SpeakError

    try:
        cfg = DubConfig(
            checkpoint=checkpoint,
            speaker=speaker,
            reference_audio=reference_audio,
            speech_dir=speech_dir,
            lipsync=lipsync,
            workers=workers or None,
            retry_failed=retry_failed,
            vocoder=vocoder,
            asr=asr,
        )
        run_dub(src, dst, cfg)
    except (SpeakError, ValueError, FileNotFoundError, ASRError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e


@app.command()
def serve(
    checkpoint: Checkpoint,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[
        int, typer.Option(help="Model windows per dynamic batch (1: no batching).")
    ] = 8,
    preprocess_replicas: Annotated[
        int,
        typer.Option(
            help="Most ingress replicas, each tracking one face at a time (0: one per CPU but one)."
        ),
    ] = 0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted.")] = 100.0,
    max_seconds: Annotated[float, typer.Option(help="Longest video accepted.")] = 60.0,
    vocoder: Vocoder = None,
    lipsync: Annotated[
        str | None,
        typer.Option(help="A lip generator (l2s train-lipsync): serves POST /v1/lipsync."),
    ] = None,
) -> None:
    """Serve speech over HTTP (Ray Serve): POST /v1/speech, /v1/dub (and /v1/lipsync with
    --lipsync); a web page at /; /docs."""
    import os
    import signal
    import threading

    from ray import serve as ray_serve

    from l2s.serve import ServeConfig
    from l2s.serve.app import start

    cfg = ServeConfig(
        checkpoint=checkpoint,
        max_batch_size=max_batch_size,
        max_preprocess_replicas=preprocess_replicas or max(1, (os.cpu_count() or 2) - 1),
        max_upload_mb=max_upload_mb,
        max_seconds=max_seconds,
        vocoder=vocoder,
        lipsync=lipsync,
    )
    try:
        url = start(cfg, host, port)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a process manager stopping us
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"serving {checkpoint} at {url}/ (API docs at {url}/docs); Ctrl-C stops")
    stop.wait()
    console.print("stopping")
    ray_serve.shutdown()


@app.command("train-sync")
def train_sync(
    datasets: Annotated[
        list[str], typer.Argument(help="Feature datasets (l2s preprocess), trained on together.")
    ],
    out: RunDir = "out/runs/sync",
    preset: Annotated[str, typer.Option(help="Expert size: tiny or base.")] = "tiny",
    nodes: Nodes = 1,
    gpus_per_node: GpusPerNode = 0,
    workers: Workers = 2,
    steps: Steps = 3000,
    time_budget: TimeBudget = None,
    batch_size: Annotated[
        int, typer.Option(help="Clips (spans of windows) per worker and step.")
    ] = 16,
    max_shift: Annotated[
        int,
        typer.Option(help="Shifted negatives: a window's own audio up to this many frames off."),
    ] = 6,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    val_every: ValEvery = 250,
    ckpt_every: CkptEvery = 500,
    local: Annotated[bool, typer.Option(help="In this process, without Ray (one worker).")] = False,
    seed: Seed = 0,
) -> None:
    """Train the audio-visual sync expert (mouth ROI windows ↔ 0.2 s of log-mel, contrastive with
    shifted and mismatched audio) on Ray Train; rerun to resume. Validation prints how often the
    offset of shifted val clips is found within a frame."""
    from l2s.train.sync import SyncTrainConfig
    from l2s.train.sync import train_sync as run_training

    cfg = SyncTrainConfig(
        dataset=datasets[0],
        extra_datasets=tuple(datasets[1:]),
        out=out,
        preset=preset,
        steps=steps,
        batch_size=batch_size,
        max_shift=max_shift,
        lr=lr,
        warmup_steps=min(100, steps - 1),
        val_every=val_every,
        ckpt_every=ckpt_every,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workers=workers,
        time_budget_min=time_budget,
        seed=seed,
    )
    _print_run(
        run_training(cfg, local=local), ("val/offset_within_1", "val/offset_acc", "val/loss")
    )


SyncCheckpoint = Annotated[
    str, typer.Option(help="A sync expert (l2s train-sync): a checkpoint or a run directory.")
]


@app.command()
def sync(
    video: Annotated[str, typer.Argument(help="A video of a talking face.")],
    audio: Annotated[
        str | None, typer.Argument(help="Audio to compare with its lips (default: its own track).")
    ] = None,
    checkpoint: SyncCheckpoint = "out/runs/sync",
    max_offset: Annotated[int, typer.Option(help="Offsets searched, in frames each way.")] = 15,
) -> None:
    """How far a clip's audio is off its lips: the best offset in 25 fps frames (positive: the
    audio comes late), the confidence (LSE-C-like) and distance (LSE-D-like) of the sync expert."""
    from l2s.sync import SyncError
    from l2s.sync.clip import clip_sync
    from l2s.sync.expert import SyncExpert

    try:
        expert = SyncExpert.load(checkpoint)
        found = clip_sync(expert, video, audio, max_offset=max_offset)
    except (SyncError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    score = found.score
    late = "late" if score.offset > 0 else "early"
    advice = (
        "in sync"
        if score.offset == 0
        else f"audio {abs(score.offset)} frame(s) ({abs(score.offset) * 40} ms) {late}"
    )
    console.print(
        f"{video}: offset {score.offset:+d} frames ({advice}); confidence {score.confidence:.3f}, "
        f"distance {score.distance:.3f}; {found.frames} frames, face on {found.face_ratio:.0%}; "
        f"audio from {found.audio}"
    )


@app.command("train-lipsync")
def train_lipsync(
    dataset: Annotated[str, typer.Argument(help="Feature dataset directory (l2s preprocess).")],
    sync_expert: Annotated[
        str, typer.Option(help="The frozen sync expert (l2s train-sync): checkpoint or run.")
    ],
    out: RunDir = "out/runs/lipsync",
    init: Annotated[
        str | None,
        typer.Option(help="Start from this lip generator (fine-tune it on DATASET's person)."),
    ] = None,
    preset: Annotated[str, typer.Option(help="Generator size: tiny or base.")] = "tiny",
    nodes: Nodes = 1,
    gpus_per_node: GpusPerNode = 0,
    workers: Workers = 2,
    steps: Steps = 3000,
    time_budget: TimeBudget = None,
    batch_size: Annotated[int, typer.Option(help="5-frame windows per worker and step.")] = 8,
    sync_weight: Annotated[float, typer.Option(help="Weight of the sync expert's loss.")] = 0.01,
    gan_weight: Annotated[
        float, typer.Option(help="Weight of the visual-quality discriminator's loss (0: none).")
    ] = 0.0,
    visible_from_reference: Annotated[
        float,
        typer.Option(
            help="Share of training windows that see the reference frame above the mask, not "
            "their own cheeks (which show the clip's own speech)."
        ),
    ] = 0.5,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    val_every: ValEvery = 250,
    ckpt_every: CkptEvery = 500,
    local: Annotated[bool, typer.Option(help="In this process, without Ray (one worker).")] = False,
    seed: Seed = 0,
) -> None:
    """Train the lip generator (masked mouth ROI + reference frame + speech → the mouth re-drawn;
    L1, the frozen sync expert's loss and a visual-quality discriminator's) on Ray Train; rerun
    to resume. With --init, fine-tune a trained generator on one person's clips."""
    from l2s.train.lipsync import LipSyncTrainConfig
    from l2s.train.lipsync import train_lipsync as run_training

    cfg = LipSyncTrainConfig(
        dataset=dataset,
        out=out,
        sync_expert=sync_expert,
        init=init,
        preset=preset,
        steps=steps,
        batch_size=batch_size,
        sync_weight=sync_weight,
        gan_weight=gan_weight,
        visible_from_reference=visible_from_reference,
        lr=lr,
        warmup_steps=min(100, steps - 1),
        val_every=val_every,
        ckpt_every=ckpt_every,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workers=workers,
        time_budget_min=time_budget,
        seed=seed,
    )
    _print_run(run_training(cfg, local=local), ("val/l1", "val/sync_conf", "val/sync_conf_cross"))


@app.command()
def lipsync(
    video: Annotated[str, typer.Argument(help="A video of a talking face.")],
    speech: Annotated[str, typer.Argument(help="The speech its lips should say (any audio file).")],
    checkpoint: Annotated[
        str, typer.Option(help="A lip generator (l2s train-lipsync): a checkpoint or a run.")
    ] = "out/runs/lipsync",
    out: Annotated[str, typer.Option(help="The mp4 to write (h264 + AAC).")] = "lipsync.mp4",
) -> None:
    """Re-draw a video's mouth to new speech and mux that speech in: the source's resolution and
    frame rate, h264 yuv420p (plays in browsers), the speech cut or padded to the video."""
    from l2s.lipsync import LipSyncError
    from l2s.lipsync.model import LipSyncModel
    from l2s.lipsync.video import lipsync as run_lipsync

    try:
        done = run_lipsync(video, speech, out, LipSyncModel.load(checkpoint))
    except (LipSyncError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from e
    console.print(
        f"wrote {done.out}: {done.frames} frames at {done.fps:.3g} fps ({done.seconds:.2f} s, "
        f"{done.size[0]}×{done.size[1]}); face on {done.face_ratio:.0%} of frames; "
        f"{done.compute_seconds:.1f} s"
    )


def _print_run(summary, shown: tuple[str, ...]) -> None:
    """Where a training run stopped, the `shown` metrics of its last report, its checkpoint."""
    scores = "  ".join(f"{k} {summary.metrics[k]:.3f}" for k in shown if k in summary.metrics)
    console.print(
        f"step {summary.step} ({summary.stopped}) after {summary.train_seconds / 60:.1f} min; "
        f"{scores}\ncheckpoint {summary.checkpoint}"
    )


def summarize_corpus(root: Path) -> None:
    """Print clips, speakers and hours per split of a corpus in LRS3 layout."""
    import json

    clips: Counter[str] = Counter()
    speakers: dict[str, set[str]] = {}
    seconds: Counter[str] = Counter()
    for sidecar in sorted(root.glob("*/*/*.json")):
        meta = json.loads(sidecar.read_text())
        split = sidecar.parent.parent.name
        clips[split] += 1
        speakers.setdefault(split, set()).add(sidecar.parent.name)
        seconds[split] += len(meta["mouth"]) / meta["fps"]
    table = Table(title=f"synthetic corpus {root}")
    for column in ("split", "clips", "speakers", "minutes"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("train", "val", "test", "test_unseen_speakers"):
        if clips[split]:
            table.add_row(
                split, str(clips[split]), str(len(speakers[split])), f"{seconds[split] / 60:.1f}"
            )
    console.print(table)


if __name__ == "__main__":
    app()
