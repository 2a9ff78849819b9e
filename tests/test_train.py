"""Training (issue 4): the data path, the speaker rule, and real Ray Train runs on the toy dataset —
a killed DeepSpeed ZeRO-2 run (on CPU) that resumes from its checkpoint and learns.

The toy dataset (`l2s.train.toy`) has mels that follow the mouth opening in its ROIs, so a model
that learns lowers the validation mel error well below the mean-mel level it starts from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from l2s.infer.checkpoint import latest_checkpoint, read_config
from l2s.models.lip2speech import Lip2Speech, tiny
from l2s.train import TrainConfig, load_checkpoint, train
from l2s.train.data import bucket, collate, cut, index_dataset, utterances
from l2s.train.logs import read_metrics
from l2s.train.speakers import SpeakerBank
from l2s.train.tasks.lip2speech import learning_rate
from l2s.train.toy import ToyConfig, toy_rows, write_toy_features


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    write_toy_features(str(out), ToyConfig(speakers=3, utterances=16))
    return out


def test_index_reads_counts_speakers_and_mel_stats(toy: Path) -> None:
    index = index_dataset(str(toy), val_utterances=4, n_val_audio=2)
    assert index.counts == {"train": 36, "val": 6, "test": 6}
    assert index.speakers.speakers == ("toy00", "toy01", "toy02")
    assert len(index.val_ids) == 4 and set(index.audio_ids) <= set(index.val_ids)
    mels = [
        r.mel_MF() for r in toy_rows(ToyConfig(speakers=3, utterances=16)) if r.split == "train"
    ]
    frames_FM = np.concatenate([m.T for m in mels])
    np.testing.assert_allclose(index.mel_mean_M, frames_FM.mean(0), rtol=1e-4, atol=1e-4)


def test_a_clip_is_never_conditioned_on_its_own_audio() -> None:
    rng = np.random.default_rng(0)
    ids = [f"s/{i}" for i in range(5)]
    embeddings_ND = np.eye(5, 8, dtype=np.float32)
    bank = SpeakerBank.from_embeddings(ids, ["s"] * 5, embeddings_ND, per_speaker=5)
    for i, clip in enumerate(ids):
        for _ in range(20):
            assert not np.array_equal(bank.other("s", clip, rng), embeddings_ND[i])
    # A speaker with a single utterance gets the "no speaker" input, not its own embedding.
    lone = SpeakerBank.from_embeddings(["x/0"], ["x"], embeddings_ND[:1])
    assert not lone.other("x", "x/0", rng).any()


def test_bucketing_yields_every_clip_once_in_similar_lengths() -> None:
    rows = toy_rows(ToyConfig(speakers=2, utterances=24, min_frames=10, max_frames=80))
    batch = {
        "id": np.array([r.id for r in rows]),
        "speaker": np.array([r.speaker for r in rows]),
        "transcript": np.array([r.transcript for r in rows], dtype=object),
        "n_frames": np.array([r.n_frames for r in rows]),
        "roi": np.array([r.roi for r in rows], dtype=object),
        "mel": np.array([r.mel for r in rows], dtype=object),
    }
    rng = np.random.default_rng(0)
    clips = [cut(u, 50, rng) for u in utterances(batch)]
    assert max(c.n_frames for c in clips) == 50
    assert all(c.transcript == "" for c in clips if c.n_frames == 50 and c.mel_MF.shape[1] == 200)
    groups = list(bucket(clips, batch_size=4, max_frames=120, rng=rng, window_batches=4))
    assert sorted(c.id for g in groups for c in g) == sorted(r.id for r in rows)
    assert all(len(g) * max(c.n_frames for c in g) <= 120 for g in groups)
    padded = sum(len(g) * max(c.n_frames for c in g) for g in groups)
    assert padded < 1.25 * sum(c.n_frames for c in clips)  # similar lengths share a batch
    out = collate(groups[0], np.zeros((len(groups[0]), 256), np.float32), rng)
    assert out.video_BTHW.shape[-2:] == (88, 88)
    assert out.mel_BMF.shape[-1] == 4 * out.video_BTHW.shape[1]


def test_learning_rate_warms_up_then_decays_with_steps_or_time() -> None:
    cfg = TrainConfig(dataset="d", out="o", steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) < learning_rate(99, cfg) <= 1e-3
    assert learning_rate(100, cfg) == pytest.approx(1e-3)
    assert learning_rate(999, cfg) == pytest.approx(1e-4)
    assert learning_rate(200, cfg, time_fraction=1.0) == pytest.approx(1e-4)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == TrainConfig(
        **{**cfg.__dict__, "model": tiny()}
    )


def test_mel_stats_map_the_network_output_to_the_mel_contract() -> None:
    model = Lip2Speech(tiny()).eval()
    video_BTHW = torch.zeros(1, 6, 88, 88)
    before = model(video_BTHW).mel_post_BMF
    model.set_mel_stats(torch.full((80,), -5.0), torch.full((80,), 2.0))
    after = model(video_BTHW).mel_post_BMF
    torch.testing.assert_close(after, before * 2.0 - 5.0)
    assert "mel_mean_M" in model.state_dict()


def test_latest_checkpoint_is_one_ray_recorded(tmp_path: Path) -> None:
    """A folder copied in after Ray's last record (a run killed mid-checkpoint) is not the latest:
    a rerun resumes from Ray's record, and everything else must agree with it."""
    run = tmp_path / "run"
    for step in (20, 40):
        (run / f"checkpoint_{step:08d}").mkdir(parents=True)
        (run / f"checkpoint_{step:08d}" / "model.pt").write_bytes(b"x")
    assert latest_checkpoint(str(run)).endswith("checkpoint_00000040")  # no record: by the files
    record = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000020"}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(record))
    assert latest_checkpoint(str(run)).endswith("checkpoint_00000020")


@pytest.mark.parametrize(
    "record, problem",
    [
        ("", "not JSON"),
        ('{"checkpoint_results": [{"checkpoint_dir_name": "checkp', "not JSON"),
        ("[]", "no list of checkpoint_results"),
        ('{"checkpoint_results": {"checkpoint_dir_name": "x"}}', "no list of checkpoint_results"),
        ('{"checkpoint_results": [{"metrics": {}}]}', "without a checkpoint_dir_name"),
    ],
    ids=["empty", "truncated", "a list", "results not a list", "result without a name"],
)
def test_latest_checkpoint_refuses_an_unreadable_ray_record(
    tmp_path: Path, record: str, problem: str
) -> None:
    """An unreadable record is not a missing one: falling back to the newest folder would take a
    checkpoint Ray may never have finished recording, which is what the record is there to prevent."""
    run = tmp_path / "run"
    (run / "checkpoint_00000020").mkdir(parents=True)
    (run / "checkpoint_00000020" / "model.pt").write_bytes(b"x")
    (run / "checkpoint_manager_snapshot.json").write_text(record)
    with pytest.raises(ValueError, match=f"checkpoint_manager_snapshot.json: .*{problem}"):
        latest_checkpoint(str(run))


def test_latest_checkpoint_reads_a_record_being_rewritten(tmp_path: Path) -> None:
    """Ray rewrites its record in place (truncate, then write): a reader that catches it empty
    reads it again rather than failing a run that is fine."""
    run = tmp_path / "run"
    for step in (20, 40):
        (run / f"checkpoint_{step:08d}").mkdir(parents=True)
        (run / f"checkpoint_{step:08d}" / "model.pt").write_bytes(b"x")
    snapshot = run / "checkpoint_manager_snapshot.json"
    snapshot.write_text("")
    record = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_00000020"}]}
    writer = threading.Timer(0.2, lambda: snapshot.write_text(json.dumps(record)))
    writer.start()
    try:
        assert latest_checkpoint(str(run)).endswith("checkpoint_00000020")
    finally:
        writer.join()


def _train_command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "l2s.cli", "train", str(dataset), "--out", str(out),
        "--batch-size", "6", "--warmup-steps", "10", "--lr", "3e-3", "--val-every", "20",
        "--ckpt-every", "20", "--workers", "2", "--seed", "1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_killed_deepspeed_run_resumes_learns_and_its_checkpoint_loads_without_ray(
    toy: Path, tmp_path: Path
) -> None:
    """One 2-worker DeepSpeed ZeRO-2 run through the CLI, SIGKILLed after its first checkpoint
    (every rank's partition of the optimizer state in it): the rerun resumes from that
    checkpoint, reports no step twice, and ends with a validation mel error well below where it
    began; the final checkpoint loads without Ray or DeepSpeed, in fp32, with the training mel
    statistics and the speakers. (One run serves the strategy, learning and resume checks:
    each Ray Train start costs half a minute of CI. DDP on Ray Train runs in
    tests/test_cluster.py, resuming after a lost node, and in CI's `l2s demo --quick`.)"""
    out = tmp_path / "run"
    command = _train_command(toy, out, "--steps", "60", "--strategy", "deepspeed")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(str(out)) is None:
            assert first.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver, its local Ray and the workers
        first.wait()
    checkpoint = latest_checkpoint(str(out))
    killed_at = read_config(checkpoint)["progress"]["step"]
    assert 20 <= killed_at < 60
    partitions = list((Path(checkpoint) / "deepspeed").rglob("*optim_states.pt"))
    assert len(partitions) == 2, partitions

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = read_metrics(str(out))
    assert history[-1]["step"] == 60
    assert history[-1]["resumed_from"] == killed_at
    steps = [m["step"] for m in history]
    assert steps == sorted(set(steps))  # no step reported twice after the resume
    val = [m["val/post_l1"] for m in history if "val/post_l1" in m]
    assert val[-1] < 0.7 * val[0], val

    model, cfg, speakers = load_checkpoint(str(out))
    assert (cfg.steps, cfg.workers, cfg.lr, cfg.seed) == (60, 2, 3e-3, 1)
    assert (cfg.strategy, cfg.zero_stage) == ("deepspeed", 2)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert speakers.speakers == ("toy00", "toy01", "toy02")
    assert list((out / "tensorboard").iterdir())
    assert not model.training and model.mel_std_M.min() > 0  # training mel statistics came along


def test_the_same_loop_trains_in_a_plain_process_and_resumes(toy: Path, tmp_path: Path) -> None:
    """`train(..., local=True)`: the loop Ray Train runs, in this process without Ray (what
    benchmarks/train.py measures Ray against). It checkpoints into the run directory, resumes,
    and learns."""
    base = dict(
        dataset=str(toy), out=str(tmp_path / "plain"), batch_size=6, warmup_steps=5, lr=3e-3,
        val_every=15, ckpt_every=15, keep_checkpoints=2,
    )  # fmt: skip
    first = train(TrainConfig(**base, steps=30), local=True)
    assert first.step == 30 and first.checkpoint.endswith("checkpoint_00000030")
    second = train(TrainConfig(**base, steps=60), local=True)
    assert second.step == 60
    history = read_metrics(base["out"])
    assert [m["step"] for m in history] == [15, 30, 45, 60]
    assert history[-1]["resumed_from"] == 30
    assert history[-1]["val/post_l1"] < 0.8 * history[0]["val/post_l1"]
    kept = sorted(p.name for p in Path(base["out"]).glob("checkpoint_*"))
    assert kept == ["checkpoint_00000045", "checkpoint_00000060"]  # keep_checkpoints
    model, cfg, _ = load_checkpoint(base["out"])
    assert cfg.steps == 60 and not model.training


@pytest.mark.gpu
def test_deepspeed_zero2_bf16_on_a_gpu(toy: Path, tmp_path: Path, ray_local) -> None:
    cfg = TrainConfig(
        dataset=str(toy), out=str(tmp_path / "gpu"), preset="base", steps=20, batch_size=8,
        warmup_steps=2, val_every=10, ckpt_every=10, gpus_per_node=1, strategy="deepspeed",
    )  # fmt: skip
    assert cfg.bf16
    summary = train(cfg)
    assert summary.step == 20
    history = read_metrics(cfg.out)
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    model, _, _ = load_checkpoint(summary.checkpoint)
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights, not bf16 copies


def test_a_text_conditioned_flow_model_trains_on_noisy_text_and_loads_with_its_grammar(
    toy: Path, tmp_path: Path
) -> None:
    import dataclasses

    from l2s.infer.model import SpeechModel
    from l2s.train.toy import WORDS

    sizes = dataclasses.replace(tiny(), text_conditioning=True, flow_head=True)
    cfg = TrainConfig(
        dataset=str(toy), out=str(tmp_path / "texted"), model=sizes, grammar="lexicon",
        text_noise=0.3, video_dropout=0.5, steps=12, batch_size=6, warmup_steps=2, val_every=12,
        ckpt_every=12,
    )  # fmt: skip
    summary = train(cfg, local=True)
    assert summary.step == 12 and summary.metrics["train/flow"] > 0
    model = SpeechModel.load(summary.run)
    assert model.network.text_attention is not None and model.network.flow is not None
    with pytest.raises(ValueError, match=r"video_dropout .* text-conditioned"):
        TrainConfig(dataset=str(toy), out=str(tmp_path / "plain"), video_dropout=0.5)
    assert model.grammar.repeat and set(model.grammar.slots[0]) <= set(WORDS)


def test_train_asr_resumes_and_its_recognizer_scores_speech(toy: Path, tmp_path: Path) -> None:
    from l2s.evaluate.asr import ASRError, load_recognizer
    from l2s.infer.recognizer import Recognizer
    from l2s.train.asr import AsrTrainConfig, train_asr

    base = dict(
        dataset=str(toy), out=str(tmp_path / "asr"), batch_size=8, warmup_steps=2, val_every=5,
        ckpt_every=5, n_val=4,
    )  # fmt: skip
    first = train_asr(AsrTrainConfig(**base, steps=5), local=True)
    assert first.checkpoint.endswith("checkpoint_00000005") and "val/wer" in first.metrics
    second = train_asr(AsrTrainConfig(**base, steps=10), local=True)
    assert second.step == 10 and second.metrics["resumed_from"] == 5
    recognizer = load_recognizer(base["out"])
    assert isinstance(recognizer, Recognizer) and recognizer.step == 10
    assert recognizer.name == "l2s-asr/asr@10/greedy"  # toy transcripts are no GRID sentences
    heard = recognizer.transcribe(np.random.default_rng(0).normal(0, 0.1, 16000))
    assert set(heard) <= set(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")

    # The recognizer, frozen, reads the lip-to-speech model's generated mel in its training: the
    # run names the exact checkpoint, and its loss is logged beside the others.
    cfg = TrainConfig(
        dataset=str(toy), out=str(tmp_path / "heard"), recognizer=base["out"], steps=4,
        batch_size=6, warmup_steps=1, val_every=4, ckpt_every=4,
    )  # fmt: skip
    summary = train(cfg, local=True)
    assert summary.metrics["train/asr"] > 0
    _, saved_cfg, _ = load_checkpoint(summary.checkpoint)
    assert saved_cfg.recognizer.endswith("asr/checkpoint_00000010")
    with pytest.raises(FileNotFoundError, match="nothing"):
        train(dataclasses.replace(cfg, recognizer=str(tmp_path / "nothing")), local=True)
    with pytest.raises(ASRError, match="neither grid, open nor a recognizer"):
        load_recognizer(str(tmp_path / "nothing"))
