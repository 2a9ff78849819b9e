"""GRID speaker s1, real faces, end to end: the clips → manifest → preprocess (Ray Data) → train
(Ray Train, a budget in minutes) → generate the test split → score against the recordings (STOI,
ESTOI, PESQ-WB/NB, WER/CER with pocketsphinx and GRID's grammar) → one table with the published
GRID rows beside l2s's, and the learning curve (val STOI by training minute).

    python benchmarks/grid.py --budget-minutes 60                    # CPU, the tiny preset
    python benchmarks/grid.py --budget-minutes 30 --gpus-per-node 1 --preset base
    python benchmarks/grid.py --name ft --init out/runs/synth --budget-minutes 20   # fine-tune
    python benchmarks/grid.py --name text --text-conditioning      # + the lip-read text, and oracle
    python benchmarks/grid.py --name asr --text-conditioning --asr-loss 10   # + a recognizer's loss

Every stage resumes (features are made once and shared by every run under --out; a run with the
same --name continues). The split is `l2s manifest grid`'s: 90/5/5 by a hash of the clip name
(seen speaker, unseen sentences). The published rows (Lip2Wav, CVPR'20, Table 2: speaker-dependent,
unseen sentences, mean over 4 speakers) are what these numbers compare with; l2s's are on one
speaker (s1) and its 45 test clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

PUBLISHED = (  # system: STOI, ESTOI, PESQ
    ("Vid2Speech", 0.491, 0.335, 1.734),
    ("Lip2AudSpec", 0.513, 0.352, 1.673),
    ("Vougioukas et al. (GAN)", 0.564, 0.361, 1.684),
    ("Ephrat et al.", 0.659, 0.376, 1.825),
    ("Lip2Wav", 0.731, 0.535, 1.772),
    ("VCA-GAN (Kim et al. '21)", 0.724, 0.609, 1.984),
)
COLUMNS = ("stoi", "estoi", "pesq_wb", "pesq_nb", "wer", "cer")


def default_grid() -> str:
    here = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("L2S_SHARED"), here.parent / "shared", "/work/shared"):
        if candidate and (Path(candidate) / "data" / "grid_s1").is_dir():
            return str(Path(candidate) / "data" / "grid_s1")
    return str(here.parent / "shared" / "data" / "grid_s1")


def features(grid: str, out: Path, console: Console) -> str:
    """The feature dataset of every clip under `grid` (made once, resumed if interrupted)."""
    from l2s.corpora import scan, skip_counts, write_manifest
    from l2s.pipeline.preprocess import run_preprocess

    manifest, dataset = out / "manifest.parquet", out / "features"
    if not manifest.exists():
        rows, skips = scan("grid", grid)
        write_manifest(rows, str(manifest))
        console.print(f"manifest: {len(rows)} clips; skipped {skip_counts(skips) or 'none'}")
    start = time.perf_counter()
    run_preprocess(str(manifest), str(dataset))
    console.print(f"features: {time.perf_counter() - start:.0f} s (0 if they were all there)")
    return str(dataset)


def recognizer_run(dataset: str, out: Path, minutes: float, workers: int, console: Console) -> str:
    """A speech recognizer trained for `minutes` on the recordings (resumed if it has less)."""
    from l2s.train.asr import AsrTrainConfig, train_asr

    run = out / "runs" / "asr"
    cfg = AsrTrainConfig(
        dataset=dataset, out=str(run), steps=1_000_000, time_budget_min=minutes, workers=workers
    )
    summary = train_asr(cfg)
    console.print(
        f"recognizer: {summary.step} steps in {summary.train_seconds / 60:.1f} min → {run}"
    )
    return str(run)


def curve(run: str) -> list[tuple[float, int, float, float]]:
    """(minute, step, val STOI, val ESTOI) of every validation of a run."""
    from l2s.train.logs import read_metrics

    return [
        (m["train_seconds"] / 60, m["step"], m["val/stoi_gl"], m["val/estoi_gl"])
        for m in read_metrics(run)
        if "val/stoi_gl" in m
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", default=default_grid(), help="GRID folder (s1/*.mp4, align/)")
    parser.add_argument("--out", default="out/grid", help="features, runs and results go here")
    parser.add_argument("--name", default="tiny", help="the run's name (same name: resume)")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="training time")
    parser.add_argument("--steps", type=int, default=1_000_000, help="training steps at most")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="CPU training workers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--init", default=None, help="start from this checkpoint's weights")
    parser.add_argument("--time-mask", action="store_true", help="auto-AVSR's time masking")
    parser.add_argument(
        "--frontend-width", type=int, default=None, help="ResNet trunk width (tiny: 8)"
    )
    parser.add_argument(
        "--text-conditioning",
        action="store_true",
        help="the decoder attends to the lip-read text (trained on noisy transcripts); the table "
        "adds the same model hearing the true transcript (the oracle)",
    )
    parser.add_argument(
        "--text-noise", type=float, default=0.2, help="fraction of transcript words misread"
    )
    parser.add_argument(
        "--video-dropout",
        type=float,
        default=0.0,
        help="with --text-conditioning: fraction of clips whose decoder hears the text alone",
    )
    parser.add_argument(
        "--asr-loss",
        type=float,
        default=None,
        metavar="MINUTES",
        help="first train a speech recognizer on the recordings for this long (runs/asr, shared "
        "by every run under --out); its CTC loss on the generated mel joins the training loss",
    )
    parser.add_argument("--asr-weight", type=float, default=0.3, help="that loss's weight")
    parser.add_argument("--vocoder", default=None, help="griffin-lim (default) or a HiFi-GAN run")
    parser.add_argument("--train-only", action="store_true", help="stop after training")
    args = parser.parse_args()

    from l2s.evaluate.split import print_summary, score_results, summarize
    from l2s.models.lip2speech import PRESETS
    from l2s.models.losses import LossConfig
    from l2s.pipeline.generate import generate_split
    from l2s.pipeline.runtime import connect
    from l2s.train import TrainConfig, train

    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    connect()
    dataset = features(args.grid, out, console)

    recognizer = None
    if args.asr_loss is not None:
        recognizer = recognizer_run(dataset, out, args.asr_loss, args.workers, console)
    run = str(out / "runs" / args.name)
    model = PRESETS[args.preset]()
    if args.frontend_width is not None:
        model = dataclasses.replace(model, frontend_width=args.frontend_width)
    if args.text_conditioning:
        model = dataclasses.replace(model, text_conditioning=True)
    cfg = TrainConfig(
        dataset=dataset,
        out=run,
        preset=args.preset,
        model=model,
        steps=args.steps,
        time_budget_min=args.budget_minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=100,
        time_mask=args.time_mask,
        text_noise=args.text_noise,
        video_dropout=args.video_dropout,
        recognizer=recognizer,
        loss=LossConfig(asr_weight=args.asr_weight),
        workers=args.workers,
        gpus_per_node=args.gpus_per_node,
        val_every=500,
        ckpt_every=1000,
        n_val_audio=8,
        init=args.init,
    )
    start = time.perf_counter()
    summary = train(cfg)
    console.print(
        f"trained {summary.step} steps in {summary.train_seconds / 60:.1f} min "
        f"({time.perf_counter() - start:.0f} s wall in this call) → {summary.checkpoint}"
    )
    if args.train_only:
        return

    results = str(out / "results" / args.name / "test")
    generate_split(dataset, "test", run, results, vocoder=args.vocoder)
    rows = score_results(results, asr="grid")
    print_summary(rows, console)

    means = summarize(rows).means
    systems = ["recording", "gt_mel", "l2s", "mean_mel"]
    if args.text_conditioning:  # the same model told the true transcript: the ceiling of text
        oracle = str(out / "results" / args.name / "oracle")
        generate_split(dataset, "test", run, oracle, vocoder=args.vocoder, oracle_text=True)
        means[("test", "oracle")] = summarize(score_results(oracle, asr="grid")).means[
            ("test", "l2s")
        ]
        systems.insert(3, "oracle")
    table = Table(title=f"GRID, unseen sentences: l2s on s1 ({summary.step} steps, "
                  f"{summary.train_seconds / 60:.0f} min on {describe(cfg)}) beside the published rows")  # fmt: skip
    for column in ("system", *COLUMNS):
        table.add_column(column, justify="left" if column == "system" else "right")
    names = {"l2s": f"[bold]l2s {args.preset}[/]", "oracle": "l2s hearing the true transcript"}
    for system in systems:
        cells = means.get(("test", system), {})
        table.add_row(
            names.get(system, system),
            *(f"{cells[c].value:.3f}" if c in cells else "–" for c in COLUMNS),
        )
    for name, stoi, estoi, pesq in PUBLISHED:
        table.add_row(name, f"{stoi:.3f}", f"{estoi:.3f}", f"{pesq:.3f}", "–", "–", "–")
    console.print(table)
    console.print("PESQ of the published rows: as each paper reports it (the wide-/narrow-band")
    console.print(
        "choice is not stated uniformly); l2s's are PESQ-WB at 16 kHz and PESQ-NB at 8 kHz."
    )

    points = curve(run)
    console.print("learning curve (val subset, Griffin-Lim of prediction vs of ground truth):")
    for minute, step, stoi, estoi in points:
        console.print(f"  {minute:5.1f} min  step {step:6d}  STOI {stoi:.3f}  ESTOI {estoi:.3f}")
    record = {
        "run": run,
        "config": dataclasses.asdict(cfg) | {"model": cfg.model_config.to_dict()},
        "steps": summary.step,
        "train_minutes": summary.train_seconds / 60,
        "test": {
            system: {
                c: means[("test", system)][c].value for c in COLUMNS if c in means[("test", system)]
            }
            for system in systems
            if ("test", system) in means
        },
        "curve": points,
    }
    (out / "results" / args.name / "grid.json").write_text(json.dumps(record, indent=2))


def describe(cfg) -> str:
    if cfg.use_gpu:
        return f"{cfg.nodes}×{cfg.gpus_per_node} GPU"
    return f"{cfg.workers} CPU worker(s), {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
