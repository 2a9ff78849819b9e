"""The `l2s` command line: thin commands over the library."""

from __future__ import annotations

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
