"""Real faces learn: a small subset of GRID speaker s1 (real video, real voice) through the whole
recipe — manifest → preprocess (Ray Data) → a short training → generate → score — in CI time, and
the model must beat the mean-mel baseline on held-out sentences. (benchmarks/grid.py runs all 900
clips for an hour.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import GRID_S1

from l2s.corpora import scan, write_manifest
from l2s.evaluate.split import score_results, summarize
from l2s.pipeline.generate import generate_split
from l2s.pipeline.preprocess import PreprocessConfig, preprocess
from l2s.train import TrainConfig, train

CLIPS = 24
HELD_OUT_EVERY = 6  # every 6th clip (by name) is held out: 4 test sentences, 20 to train on


@pytest.fixture(scope="module")
def grid_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first CLIPS clips of s1 (by name) in GRID's own layout, as links to the shared files."""
    videos = sorted((GRID_S1 / "s1").glob("*.mp4"))[:CLIPS]
    if len(videos) < CLIPS:
        pytest.skip(f"GRID s1 not found at {GRID_S1} (shared/data beside the clone)")
    root = tmp_path_factory.mktemp("grid")
    (root / "s1" / "align").mkdir(parents=True)
    for video in videos:
        (root / "s1" / video.name).symlink_to(video)
        align = GRID_S1 / "s1" / "align" / f"{video.stem}.align"
        (root / "s1" / "align" / align.name).symlink_to(align)
    return root


@pytest.mark.slow
def test_a_short_training_on_real_grid_faces_beats_the_mean_mel(
    grid_subset: Path, ray_local, tmp_path: Path
) -> None:
    rows, skips = scan("grid", str(grid_subset))
    assert len(rows) == CLIPS and not skips
    # GRID's hash split would hold out one or two of 24 clips; a fixed choice holds out four.
    rows = [
        dataclasses.replace(row, split="test" if n % HELD_OUT_EVERY == 0 else "train")
        for n, row in enumerate(sorted(rows, key=lambda r: r.id))
    ]
    manifest = str(tmp_path / "manifest.parquet")
    write_manifest(rows, manifest)
    features = str(tmp_path / "features")
    summary = preprocess(manifest, features, PreprocessConfig(shard_size=6))
    assert summary.features == CLIPS and not summary.errors  # dlib finds every real face

    # The one training loop in this process (Ray Train's start-up would be most of a run this
    # short; tests/test_train.py covers it). 500 steps: at 300 the ESTOI gap below was 0.048-0.062
    # from run to run (the clips' order through Ray Data varies), too close to its 0.05; at 500,
    # 0.104 (0.146 ± 0.033 against the mean mel's -0.001 ± 0.012), for ~100 s more.
    run = str(tmp_path / "run")
    cfg = TrainConfig(
        dataset=features, out=run, steps=500, batch_size=4, lr=4e-3, warmup_steps=30,
        time_mask=False, val_utterances=0, n_val_audio=0, val_every=500, ckpt_every=500,
    )  # fmt: skip
    trained = train(cfg, local=True)
    assert trained.step == 500

    results = str(tmp_path / "results")
    generate_split(features, "test", run, results, progress=False)
    means = summarize(score_results(results, asr=None, progress=False)).means
    l2s, floor = means[("test", "l2s")], means[("test", "mean_mel")]
    assert l2s["estoi"].n == CLIPS // HELD_OUT_EVERY
    # Lips, not a constant: the held-out sentences' envelopes follow the speech (ESTOI's 95 %
    # intervals apart, by at least 0.05), and the spectra come closer to the recordings' than the
    # training mean does.
    estoi, floor_estoi = l2s["estoi"], floor["estoi"]
    low, high = estoi.value - estoi.half_interval, floor_estoi.value + floor_estoi.half_interval
    assert low > high + 0.05, (l2s, floor)
    assert l2s["mcd"].value < floor["mcd"].value, (l2s, floor)
