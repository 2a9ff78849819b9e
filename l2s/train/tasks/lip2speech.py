"""The lip-to-speech model's part of training: build (resume weights before wrapping, optimizer
state after), batches, one step (mel L1 + L2 before and after the postnet, + CTC), validation and
checkpoints. DDP (gloo on CPU, NCCL on GPU) or DeepSpeed ZeRO. A text-conditioned model steps on
its transcripts with lip-reader-like errors injected (`l2s.train.text_noise`) and, for some clips,
no video (`video_dropout`); with a recognizer (`TrainConfig.recognizer`), what it hears in the
generated mel is scored against the transcript.

A worker keeps its shard of the train split in memory after the first epoch when the driver says
it fits (`config["cache"]`): every later epoch is then a reshuffle of what it holds, with no read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from l2s.infer.checkpoint import MODEL_FILE, read_model, resolve
from l2s.infer.recognizer import Recognizer
from l2s.infer.speakers import SpeakerTable
from l2s.models.grammar import Grammar
from l2s.models.lip2speech import Lip2Speech, count_parameters
from l2s.models.losses import lip2speech_loss
from l2s.models.text import decode_ids, encode_batch
from l2s.train import checkpoint as ckpt
from l2s.train.config import TrainConfig
from l2s.train.data import (
    Batch,
    Utterance,
    batches_of,
    utterances,
    val_batches,
    val_clips,
)
from l2s.train.logs import RunLog
from l2s.train.loop import Step, Task
from l2s.train.session import Session
from l2s.train.text_noise import noisy_text
from l2s.train.validation import validate


def learning_rate(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` down to `lr * min_lr_ratio` that
    ends with the budget: the last step, or the time budget when `time_fraction` of it is ahead."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    decay_steps = max(1, cfg.steps - 1 - cfg.warmup_steps)
    progress = min(1.0, max((step - cfg.warmup_steps) / decay_steps, time_fraction))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def summary_line(metrics: dict) -> str:
    keys = ("train/loss", "train/steps_per_s", "val/post_l1", "val/stoi_gl", "val/estoi_gl")
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


class Lip2SpeechTask(Task):
    name = "l2s.train"
    checkpoint_file = MODEL_FILE

    def __init__(self, config: dict, session: Session) -> None:
        cfg = self.cfg = TrainConfig.from_dict(config["train"])
        self.session = session
        rank, world, device = session.rank, session.world, session.device
        if device.type == "cpu":
            torch.set_num_threads(config["threads"])
        self.deepspeed = cfg.strategy == "deepspeed"
        # DeepSpeed holds bf16 weights and takes bf16 inputs; DDP keeps fp32 weights under autocast.
        self.dtype = torch.bfloat16 if self.deepspeed and cfg.bf16 else torch.float32
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.bf16 and not self.deepspeed
            else contextlib.nullcontext()
        )
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = Lip2Speech(cfg.model_config)
        if cfg.init is not None:
            self._start_from(model, cfg.init, rank)
        # This dataset's mel statistics (after `init`'s weights, whose came from its own data); a
        # resume restores its own.
        model.set_mel_stats(*(torch.tensor(v) for v in config["mel_stats"]))

        # ---- resume: weights before wrapping, optimizer state after -----------------------------
        progress = ckpt.Progress(world_size=world, strategy=cfg.strategy)
        with session.restored() as folder:
            if folder is not None:
                saved = read_model(folder)
                self._check_resumable(saved, rank)
                model.load_state_dict(saved["model"])
                progress = ckpt.Progress(**saved["progress"])
            # Optimizer moments only carry over to the same layout: ZeRO partitions them by world.
            same_layout = folder is not None and (progress.strategy, progress.world_size) == (
                cfg.strategy,
                world,
            )
            if rank == 0:
                print(
                    f"[l2s.train] {count_parameters(model):,} parameters, {world} worker(s) on {device.type}"
                )
                if folder is not None and not same_layout:
                    print(
                        f"[l2s.train] resuming a {progress.strategy} run on {progress.world_size} "
                        f"workers with {cfg.strategy} on {world}: weights restored, optimizer "
                        "moments start afresh"
                    )
            self.optimizer = _adamw(model, cfg, device)
            if self.deepspeed:
                from l2s.train import deepspeed as ds

                self.net = ds.initialize(model, self.optimizer, cfg, world)
                self.module = self.net.module
                if same_layout:
                    self.net.load_checkpoint(
                        str(folder / ckpt.DEEPSPEED_DIR),
                        tag=ckpt.DEEPSPEED_TAG,
                        load_lr_scheduler_states=False,
                    )
            else:
                self.net = session.prepare(model)  # to the device; DDP when world > 1
                self.module = model
                if same_layout:
                    state = torch.load(
                        folder / ckpt.TRAIN_STATE_FILE, map_location=device, weights_only=True
                    )
                    self.optimizer.load_state_dict(state)
        progress.world_size, progress.strategy = world, cfg.strategy
        self.progress = progress
        self.resumed_from = progress.step
        self.log = RunLog(cfg.out, progress.step) if rank == 0 else None

        self.speakers = SpeakerTable.from_dict(config["speakers"])
        self.bank = config["bank"]
        self.dataset_metadata = config["dataset_metadata"]
        self.audio_ids = set(config["audio_ids"])
        self.my_val_ids = set(config["val_ids"][rank::world])
        self.train_shard = session.shard("train")
        self.val_shard = session.shard("val") if config["val_ids"] else None
        self.cache: list[Utterance] | None = [] if config.get("cache") else None
        self.cached = False
        self.val_set: list[Batch] | None = None  # read at the first validation, then kept
        self.grammar = Grammar.from_dict(config["grammar"]) if config.get("grammar") else None
        self.noise_rng = np.random.default_rng([cfg.seed, rank, progress.step, 1])
        # Frozen and in eval mode: the generated speech learns to be heard, not the reverse.
        self.recognizer = None
        if cfg.recognizer is not None:
            self.recognizer = Recognizer.load(cfg.recognizer, str(device)).network
            self.recognizer.requires_grad_(False)
            if rank == 0:
                print(f"[l2s.train] the generated mel is read by the recognizer {cfg.recognizer}")

    def _start_from(self, model: Lip2Speech, init: str, rank: int) -> None:
        uri = resolve(init)
        saved = read_model(uri)
        if saved["model_config"] != self.cfg.model_config.to_dict():
            raise ValueError(
                f"init {uri} holds a model of another shape ({saved['model_config']}): give the "
                "same preset or model settings"
            )
        model.load_state_dict(saved["model"])
        if rank == 0:
            print(
                f"[l2s.train] starting from the weights of {uri} (step {saved['progress']['step']})"
            )

    def _check_resumable(self, saved: dict, rank: int) -> None:
        cfg = self.cfg
        if saved["model_config"] != cfg.model_config.to_dict():
            raise ValueError(
                f"{cfg.out} holds a model of another shape ({saved['model_config']}): "
                "give another out, or the same model settings"
            )
        if rank == 0:
            before = saved["train_config"]
            changed = {
                k: (before.get(k), v) for k, v in cfg.to_dict().items() if before.get(k) != v
            }
            note = f"; settings changed since: {changed}" if changed else ""
            print(f"[l2s.train] resuming from step {saved['progress']['step']}{note}")

    # ---- data ------------------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[Batch]:
        # A fresh shuffle per epoch and rank, reproducible from the seed.
        rng = np.random.default_rng([self.cfg.seed, self.session.rank, epoch])
        if self.cached:
            order = rng.permutation(len(self.cache))
            clips = (self.cache[i] for i in order)
        else:
            clips = self._read_epoch()
        return batches_of(clips, self.cfg, self.bank, rng)

    def _read_epoch(self) -> Iterator[Utterance]:
        rows = self.train_shard.iter_batches(
            batch_size=4 * self.cfg.batch_size, batch_format="numpy", prefetch_batches=2
        )
        for batch in rows:
            for utt in utterances(batch):
                if self.cache is not None:
                    self.cache.append(utt)
                yield utt
        self.cached = self.cache is not None

    def _validation_set(self) -> list[Batch] | None:
        if self.val_shard is not None and self.val_set is None:
            clips = val_clips(self.val_shard, self.cfg, self.my_val_ids)
            self.val_set = val_batches(clips, self.speakers, self.cfg.batch_size)
        return self.val_set

    # ---- steps -----------------------------------------------------------------------------------
    def learning_rate(self, step: int, time_fraction: float) -> float:
        return learning_rate(step, self.cfg, time_fraction)

    def step(self, batch: Batch, lr: float) -> Step:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        text = self._training_text(batch) if cfg.model_config.text_conditioning else ()
        batch = batch.to(self.session.device, self.dtype)
        extra = {"mel_BMF": batch.mel_BMF} if cfg.model_config.flow_head else {}
        if cfg.video_dropout > 0:  # modality dropout: these clips' decoders hear the text alone
            drawn_B = self.noise_rng.random(len(batch)) < cfg.video_dropout
            extra["hide_video_B"] = (text[1] > 0) & torch.from_numpy(drawn_B).to(text[1].device)
        with self.autocast:
            output = self.net(batch.video_BTHW, batch.lengths_B, batch.speaker_BD, *text, **extra)
        loss, parts = lip2speech_loss(
            output,
            batch.mel_BMF,
            batch.targets_BL,
            batch.target_lengths_B,
            cfg.loss,
            self.recognizer,
        )
        if "ctc" not in parts:
            # No transcript in this batch: the CTC head still joins the graph (zero gradient),
            # because DDP and ZeRO expect a gradient for every parameter on every rank.
            loss = loss + 0.0 * output.ctc_logits_BTV.sum()
        if self.deepspeed:
            self.net.backward(loss)
            self.net.step()
            grad_norm = self.net.get_global_grad_norm()
        else:
            loss.backward()
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        losses = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        if grad_norm is not None:
            losses["grad_norm"] = float(grad_norm)
        return Step(losses, len(batch), int(batch.lengths_B.sum()))

    def _training_text(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's transcripts, misread as a lip reader would (`text_noise`), on the device."""
        cfg = self.cfg
        texts = [
            noisy_text(
                decode_ids(ids_L[:n].tolist()),
                cfg.text_noise,
                cfg.text_dropout,
                self.grammar,
                self.noise_rng,
            )
            for ids_L, n in zip(batch.targets_BL, batch.target_lengths_B.tolist(), strict=True)
        ]
        text_BL, text_lengths_B = encode_batch(texts)
        device = self.session.device
        return text_BL.to(device), text_lengths_B.to(device)

    def validate(self, step: int, template: Batch) -> dict[str, float]:
        val_set = self._validation_set()
        if val_set is None:
            return {}
        metrics, examples = validate(
            self.module,
            val_set,
            self.audio_ids,
            self.session.device,
            self.dtype,
            self.autocast,
            template,
        )
        if self.log is not None:
            for example in examples[:1]:
                self.log.mel(step, f"val_mel/{example.id}", example.predicted_MF, example.target_MF)
                self.log.audio(step, f"val_audio/{example.id}/predicted", example.predicted_S)
                self.log.audio(step, f"val_audio/{example.id}/target_gl", example.reference_S)
        return metrics

    def save(self, folder: Path, metrics: dict, rank: int) -> bool:
        """DDP: rank 0 holds everything. DeepSpeed: every rank holds its optimizer partition."""
        if self.deepspeed:
            from l2s.train import deepspeed as ds

            self.net.save_checkpoint(str(folder / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG)
            state_dict = ds.full_state_dict(self.net)  # a collective: every rank takes part
        else:
            state_dict = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
            if rank == 0:
                torch.save(self.optimizer.state_dict(), folder / ckpt.TRAIN_STATE_FILE)
        if rank == 0:
            ckpt.write_model(
                folder,
                state_dict,
                self.cfg,
                self.speakers,
                self.progress,
                metrics,
                self.dataset_metadata,
                self.grammar,
            )
        return rank == 0 or self.deepspeed

    def summary_line(self, metrics: dict) -> str:
        return summary_line(metrics)


def _adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on biases and norm gains (nanoGPT's split): shrinking those only hurts.
    groups = [
        {
            "params": [p for p in model.parameters() if p.dim() >= 2],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
