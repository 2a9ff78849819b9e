"""`l2s demo`: the whole system on the embedded default (a local Ray, local files, the synthetic
corpus), one stage after another, each the same library call the stage's own command makes:

    synth → manifest → preprocess (Ray Data) → train tiny (Ray Train) → generate → score → report

Every stage resumes, so a rerun of an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

console = Console()
SPLITS = ("test", "test_unseen_speakers")


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo makes and how long it trains. Training has a budget in optimizer steps (what
    the model's quality follows) and a cap in minutes (what a slow or busy machine runs into)."""

    out: str = "out/demo"
    speakers: int = 4
    utterances: int = 60  # per speaker: more sentences generalise better than more steps
    steps: int = 1800  # test STOI 0.720 at 1,800 steps, 0.664 at 1,469, 0.629 at 1,102 (README)
    max_train_minutes: float = 7.0

    def __post_init__(self) -> None:
        if self.speakers < 1 or self.utterances < 3 or self.steps < 2:
            raise ValueError("need speakers >= 1, utterances >= 3 and steps >= 2")
        if not self.max_train_minutes > 0:
            raise ValueError(f"max_train_minutes must be > 0, got {self.max_train_minutes}")


def quick(out: str) -> DemoConfig:
    """Every stage on a few clips and a minute of training: does the whole system run (CI)?"""
    return DemoConfig(out=out, speakers=2, utterances=8, steps=60, max_train_minutes=1.0)


class Stages:
    """Each stage's title as it starts, and every stage's wall time at the end."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.times: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, name: str, detail: str = "") -> None:
        self._close()
        self.current = name
        console.rule(f"[bold]{name}[/] {detail} (at {time.perf_counter() - self.start:.0f} s)")

    def _close(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.times[self.current] = now - self.last
        self.last = now

    def done(self) -> str:
        self._close()
        parts = ", ".join(
            f"{name.split(' ', 1)[1]} {seconds:.0f} s" for name, seconds in self.times.items()
        )
        return f"{(time.perf_counter() - self.start) / 60:.1f} min ({parts})"


def run_demo(cfg: DemoConfig) -> Path:
    from l2s.corpora import scan, write_manifest
    from l2s.evaluate.report import write_report
    from l2s.evaluate.split import print_summary, score_results
    from l2s.pipeline.generate import generate_split
    from l2s.pipeline.preprocess import run_preprocess
    from l2s.pipeline.runtime import connect
    from l2s.synth.corpus import SynthConfig, generate
    from l2s.train import TrainConfig, train

    root = Path(cfg.out)
    stage = Stages()
    stage("1/5 synth", f"a corpus of {cfg.speakers} speakers × {cfg.utterances} utterances")
    list(generate(SynthConfig(speakers=cfg.speakers, utterances=cfg.utterances), root / "corpus"))
    rows, _ = scan("synthetic", str(root / "corpus"))
    manifest = str(root / "manifest.parquet")
    write_manifest(rows, manifest)

    stage("2/5 preprocess", "on Ray Data: faces, mouth ROIs, mels, voices")
    connect()
    features = str(root / "features")
    run_preprocess(manifest, features)

    stage("3/5 train", f"tiny on Ray Train: {cfg.steps} steps, ≤ {cfg.max_train_minutes:g} min")
    run = str(root / "run")
    summary = train(
        TrainConfig(
            dataset=features,
            out=run,
            steps=cfg.steps,
            time_budget_min=cfg.max_train_minutes,
            # The recipe that learned fastest on 2 cores (README): two single-threaded workers
            # (a tiny model's ops gain ~10 % from a second thread, a second worker doubles the
            # clips per step), small batches, lr 4e-3, no time masking.
            workers=2,
            batch_size=4,
            time_mask=False,
            lr=4e-3,
            warmup_steps=min(100, cfg.steps // 4),
            val_every=max(cfg.steps // 4, 1),
            ckpt_every=max(cfg.steps // 2, 1),
            n_val_audio=2,
        )
    )
    console.print(
        f"step {summary.step} ({summary.stopped}) after {summary.train_seconds / 60:.1f} min "
        f"→ {summary.checkpoint}"
    )

    stage("4/5 generate", "the test splits (Griffin-Lim)")
    results = []
    for split in SPLITS:
        folder = str(root / "results" / split)
        generate_split(features, split, run, folder)
        results.append(folder)

    stage("5/5 score", "against the recordings; baselines, WER / CER")
    scored = [row for folder in results for row in score_results(folder, asr="auto")]
    print_summary(scored, console)
    report = write_report(results, scored, root / "report.html")
    console.print(f"done in {stage.done()}; report: {report}")
    return report
