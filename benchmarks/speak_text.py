"""What `l2s speak --text` reads from the lips, scored: each clip of a split, from its source video
(decode, face tracking, mouth ROIs: what a user's video goes through), spoken by `l2s speak` with
`--text`, and the text files it wrote scored against the transcripts (WER / CER pooled over words /
characters), beside greedy CTC decoding of the model on the dataset's stored mouth ROIs (what the
grammar adds).

    python benchmarks/speak_text.py /work/data/grid_s1/features --checkpoint RUN [--split test] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="only the split's first N clips (by id)")
    args = parser.parse_args()

    from typer.testing import CliRunner

    from l2s.cli import app
    from l2s.evaluate.metrics import cer, wer
    from l2s.infer.model import SpeechModel
    from l2s.models.grammar import greedy
    from l2s.pipeline import shards
    from l2s.pipeline.generate import source_rows

    rows = sorted(shards.read_features(args.dataset, split=args.split), key=lambda r: r.id)
    sources = source_rows(args.dataset)
    if not sources:
        raise SystemExit(
            f"{args.dataset}: the manifest it was made from is gone (no source videos)"
        )
    missing = [r.id for r in rows if r.id not in sources]
    if missing:
        raise SystemExit(
            f"{args.dataset}: {len(missing)} clips not in its manifest ({missing[0]}, …)"
        )
    cut = [r.id for r in rows if sources[r.id].start or sources[r.id].duration]
    if cut:  # `l2s speak` speaks a whole video: a clip cut from a longer one would not match
        raise SystemExit(
            f"{args.dataset}: {len(cut)} clips are segments of longer videos ({cut[0]}, …)"
        )
    rows = rows[: args.limit]
    model = SpeechModel.load(args.checkpoint)
    truths, reads, greedies = [], [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="l2s-speak-text-") as work:
        for row in rows:
            text = Path(work) / "said.txt"
            command = ["speak", sources[row.id].video, "--checkpoint", args.checkpoint]
            command += ["--out", str(Path(work) / "speech.wav"), "--text", str(text)]
            result = CliRunner().invoke(app, command)
            if result.exit_code != 0:
                raise SystemExit(f"{row.id}: l2s speak failed: {result.output}")
            reads.append(text.read_text().strip())
            (window,) = model.window_outputs([row.roi_THW()], [None])
            greedies.append(greedy(window.log_probs_VT.T))
            truths.append(row.transcript)
            print(f"{row.id}: {row.transcript!r} read as {reads[-1]!r}", flush=True)
    seconds = time.perf_counter() - start
    reading = "greedy" if model.grammar is None else f"the {model.grammar.name} grammar"
    print(
        f"{args.checkpoint}: {len(rows)} {args.split} clips through `l2s speak --text` in {seconds:.0f} s"
    )
    print("| lips read with | WER | CER |\n|---|---|---|")
    print(
        f"| {reading} (`l2s speak --text`) | {wer(truths, reads):.3f} | {cer(truths, reads):.3f} |"
    )
    print(f"| greedy CTC | {wer(truths, greedies):.3f} | {cer(truths, greedies):.3f} |")


if __name__ == "__main__":
    main()
