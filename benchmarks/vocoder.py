"""Vocoder quality and speed on ground-truth mels: Griffin-Lim (the baseline) against HiFi-GAN.

    python benchmarks/vocoder.py /work/data/features --vocoder out/runs/hifigan --split test

Every clip of the split is vocoded from its stored ground-truth log-mel by each vocoder and scored
against its recording (the source video's audio, cut to the frames the mel covers) with
`l2s.evaluate.metrics.score_utterance`: PESQ wide-band (16 kHz) and narrow-band (8 kHz), STOI,
ESTOI, MCD. Printed: mean ± 95 % interval per vocoder, each mean's difference from Griffin-Lim,
and the vocoding real-time factor (compute seconds per second of speech, in this process, one clip
at a time, after one warm-up call) with its ratio to Griffin-Lim's.
"""

from __future__ import annotations

import l2s  # noqa: F401  first: it sets OMP_WAIT_POLICY before torch loads OpenMP

# isort: split

import argparse
import time

import numpy as np
import torch
from rich.console import Console

METRICS = ("pesq_wb", "pesq_nb", "stoi", "estoi", "mcd")


def run(dataset: str, split: str, specs: list[str | None], limit: int | None) -> list[dict]:
    from l2s.config import AUDIO
    from l2s.evaluate.metrics import score_utterance
    from l2s.infer.vocoder import load_vocoder
    from l2s.pipeline import shards
    from l2s.pipeline.generate import source_rows
    from l2s.train.vocoder_data import clip_audio

    rows = sorted(shards.read_features(dataset, split=split), key=lambda r: r.id)[:limit]
    if not rows:
        raise SystemExit(f"{dataset}: no clips in split {split!r}")
    sources = source_rows(dataset)
    references = {r.id: clip_audio(sources[r.id], r.n_frames) for r in rows}
    console = Console()
    scores = []
    for spec in specs:
        vocoder = load_vocoder(spec)
        name = "griffin-lim" if spec in (None, "griffin-lim") else "hifigan"
        vocoder(rows[0].mel_MF())  # warm-up: first-call allocations are not the vocoder's speed
        seconds = speech = 0.0
        for row in rows:
            mel_MF = row.mel_MF()
            start = time.perf_counter()
            wav_S = vocoder(mel_MF)
            seconds += time.perf_counter() - start
            speech += len(wav_S) / AUDIO.sample_rate
            assert len(wav_S) == mel_MF.shape[1] * AUDIO.hop_length
            scores.append(
                {"split": split, "system": name, "id": row.id}
                | score_utterance(references[row.id], wav_S)
            )
        console.print(
            f"{vocoder.name}: {len(rows)} clips, {speech:.1f} s of speech vocoded in "
            f"{seconds:.2f} s: real-time factor {seconds / speech:.4f} "
            f"({torch.get_num_threads()} torch threads)"
        )
        scores.append({"split": split, "system": name, "rtf": seconds / speech})
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="feature dataset (its manifest must name the videos)")
    parser.add_argument("--vocoder", required=True, help="HiFi-GAN checkpoint or run directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    args = parser.parse_args()

    from l2s.evaluate.split import print_summary, summarize

    rows = run(args.dataset, args.split, [None, args.vocoder], args.limit)
    rtf = {r["system"]: r["rtf"] for r in rows if "rtf" in r}
    clips = [r for r in rows if "rtf" not in r]
    print_summary(clips, title="vocoders on ground-truth mels (mean ± 95 % interval)")
    means = summarize(clips).means
    base, ours = means[(args.split, "griffin-lim")], means[(args.split, "hifigan")]
    deltas = "  ".join(
        f"{m} {ours[m].value - base[m].value:+.3f}" for m in METRICS if m in base and m in ours
    )
    print(f"hifigan − griffin-lim: {deltas}")
    print(
        f"real-time factor: griffin-lim {rtf['griffin-lim']:.4f}, hifigan {rtf['hifigan']:.4f} "
        f"({rtf['hifigan'] / rtf['griffin-lim']:.2f}× griffin-lim's)"
    )
    wins = np.mean(
        [
            h["pesq_wb"] > g["pesq_wb"]
            for g, h in zip(
                [r for r in clips if r["system"] == "griffin-lim"],
                [r for r in clips if r["system"] == "hifigan"],
                strict=True,
            )
        ]
    )
    print(f"hifigan scores a higher PESQ-WB than griffin-lim on {wins:.0%} of the clips")


if __name__ == "__main__":
    main()
