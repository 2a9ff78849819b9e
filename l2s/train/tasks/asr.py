"""The speech recognizer's part of training (`l2s train-asr`), run by the one loop (`loop.fit`):
CTC on the recordings' log-mels (SpecAugment in training), validation by WER / CER of the val
clips read with the run's grammar (and greedily), checkpoints (DDP; rank 0 writes):

  asr.pt        the network (fp32, mel statistics included) + its AsrConfig, the exact
                AsrTrainConfig, the grammar, the progress and the dataset's metadata: all
                inference needs (`l2s.infer.recognizer`)
  train_state.pt  the optimizer
  config.json   the configs, progress and metrics as JSON
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from l2s.evaluate.metrics import cer, wer
from l2s.infer.checkpoint import ASR_FILE, CONFIG_FILE, read_model
from l2s.models.asr import SpeechRecognizer
from l2s.models.grammar import Grammar, greedy, read_text
from l2s.models.lip2speech import count_parameters
from l2s.models.losses import ctc_loss
from l2s.train.asr import (
    AsrTrainConfig,
    MelBatch,
    clips_of,
    collate,
    mel_batches,
    spec_augment,
    summary_line,
)
from l2s.train.checkpoint import TRAIN_STATE_FILE, Progress
from l2s.train.logs import RunLog
from l2s.train.loop import Step, Task
from l2s.train.session import Session
from l2s.train.tasks.lip2speech import learning_rate


class AsrTask(Task):
    name = "l2s.asr"
    checkpoint_file = ASR_FILE

    def __init__(self, config: dict, session: Session) -> None:
        cfg = self.cfg = AsrTrainConfig.from_dict(config["train"])
        self.session = session
        rank, world, device = session.rank, session.world, session.device
        if device.type == "cpu":
            torch.set_num_threads(config["threads"])
        torch.manual_seed(cfg.seed)
        self.model = SpeechRecognizer(cfg.model_config)
        self.model.set_mel_stats(*(torch.tensor(v) for v in config["mel_stats"]))
        progress = Progress(world_size=world)
        state = None
        with session.restored() as folder:
            if folder is not None:
                saved = read_model(folder, ASR_FILE)
                if saved["model_config"] != cfg.model_config.to_dict():
                    raise ValueError(
                        f"{cfg.out} holds a recognizer of another shape ({saved['model_config']}): "
                        "give another out, or the same preset"
                    )
                self.model.load_state_dict(saved["model"])
                progress = Progress(**saved["progress"])
                if saved["progress"]["world_size"] == world:
                    state = torch.load(
                        folder / TRAIN_STATE_FILE, map_location=device, weights_only=True
                    )
                if rank == 0:
                    print(f"[l2s.asr] resuming from step {progress.step}")
        progress.world_size = world
        if rank == 0:
            print(
                f"[l2s.asr] {count_parameters(self.model):,} parameters, {world} worker(s) on {device.type}"
            )
        self.net = session.prepare(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
        )
        if state is not None:
            self.optimizer.load_state_dict(state)
        self.progress = progress
        self.resumed_from = progress.step
        self.log = RunLog(cfg.out, progress.step) if rank == 0 else None
        self.grammar = Grammar.from_dict(config["grammar"]) if config.get("grammar") else None
        self.val_clips = config["val_clips"][rank::world]
        self.dataset_metadata = config["dataset_metadata"]
        self.shard = session.shard("train")
        self.augment_rng = np.random.default_rng([cfg.seed, rank, progress.step, 2])

    def batches(self, epoch: int) -> Iterator[MelBatch]:
        rng = np.random.default_rng([self.cfg.seed, self.session.rank, epoch])
        rows = self.shard.iter_batches(batch_size=4 * self.cfg.batch_size, batch_format="numpy")
        clips = (clip for batch in rows for clip in clips_of(batch))
        return mel_batches(clips, self.cfg.batch_size, rng)

    def learning_rate(self, step: int, time_fraction: float) -> float:
        return learning_rate(step, self.cfg, time_fraction)

    def step(self, batch: MelBatch, lr: float) -> Step:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(self.session.device)
        mel_BMF = self.model.normalize(batch.mel_BMF)
        if cfg.spec_augment:
            mel_BMF = spec_augment(mel_BMF, batch.mel_lengths_B, self.augment_rng)
        logits_BTV, lengths_B = self.net(mel_BMF, batch.mel_lengths_B, normalized=True)
        loss = ctc_loss(logits_BTV, lengths_B, batch.targets_BL, batch.target_lengths_B)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        losses = {"ctc": float(loss.detach()), "grad_norm": float(grad_norm)}
        return Step(losses, len(batch), int(batch.mel_lengths_B.sum()))

    @torch.no_grad()
    def validate(self, step: int, template: MelBatch) -> dict[str, float]:
        """CTC loss and pooled WER / CER over all ranks' val clips (grammar and greedy reading)."""
        import torch.distributed as dist

        model, device = self.model, self.session.device
        was_training = model.training
        model.eval()
        sums = np.zeros(
            7
        )  # ctc·clips, clips, words, word errors, chars, char errors, greedy errors
        for i in range(0, len(self.val_clips), self.cfg.batch_size):
            batch = collate(self.val_clips[i : i + self.cfg.batch_size]).to(device)
            logits_BTV, lengths_B = model(batch.mel_BMF, batch.mel_lengths_B)
            loss = ctc_loss(logits_BTV, lengths_B, batch.targets_BL, batch.target_lengths_B)
            log_probs_BTV = logits_BTV.float().log_softmax(-1).cpu().numpy()
            for b, text in enumerate(batch.transcripts):
                log_probs_TV = log_probs_BTV[b, : int(lengths_B[b])]
                words, chars = len(text.split()), len(text)
                heard = read_text(log_probs_TV, self.grammar)
                sums += [
                    float(loss),
                    1,
                    words,
                    wer(text, heard) * words,
                    chars,
                    cer(text, heard) * chars,
                    wer(text, greedy(log_probs_TV)) * words,
                ]
        totals_K = torch.tensor(sums, dtype=torch.float64, device=device)
        dist.all_reduce(totals_K)
        ctc, clips, words, word_errors, chars, char_errors, greedy_errors = totals_K.tolist()
        model.train(was_training)
        if not clips:
            return {}
        return {
            "val/ctc": ctc / clips,
            "val/wer": word_errors / words,
            "val/cer": char_errors / chars,
            "val/wer_greedy": greedy_errors / words,
        }

    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        if rank != 0:
            return False
        configs = {
            "train_config": self.cfg.to_dict(),
            "model_config": self.cfg.model_config.to_dict(),
            "grammar": None if self.grammar is None else self.grammar.to_dict(),
            "progress": asdict(self.progress),
            "dataset": self.dataset_metadata,
        }
        state_dict = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"model": state_dict, **configs}, folder / ASR_FILE)
        torch.save(self.optimizer.state_dict(), folder / TRAIN_STATE_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({**configs, "metrics": metrics}, indent=2))
        return True

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)
