"""Checkpoints: what one holds and writing it (`l2s.infer.checkpoint` reads them back).

A checkpoint is a directory `checkpoint_<step>` in the run directory (Ray Train writes it there):
  model.pt         plain `Lip2Speech` fp32 state dict + the exact TrainConfig / ModelConfig, the
                   speaker table, the grammar its lips are read with, the dataset's metadata, the
                   training progress (nanoGPT's dict)
  config.json      the same configs, progress and metrics as JSON, for people and tools
  train_state.pt   DDP runs: the optimizer state
  deepspeed/       DeepSpeed runs: the engine's own checkpoint (ZeRO-partitioned optimizer state),
                   one file per rank, merged into this directory by Ray Train
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from l2s.infer.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    PREFIX,
    load_model,
    read_config,
    resolve,
)
from l2s.infer.speakers import SpeakerTable
from l2s.models.grammar import Grammar
from l2s.models.lip2speech import Lip2Speech
from l2s.train.config import TrainConfig

TRAIN_STATE_FILE = "train_state.pt"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"


@dataclass
class Progress:
    """How far a run has got; training continues from here on resume."""

    step: int = 0
    epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0  # wall time of all attempts so far (the time budget counts this)
    world_size: int = 1
    strategy: str = "ddp"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def write_model(
    folder: Path,
    state_dict: dict[str, torch.Tensor],
    cfg: TrainConfig,
    speakers: SpeakerTable,
    progress: Progress,
    metrics: dict,
    dataset_metadata: dict,
    grammar: Grammar | None = None,
) -> None:
    """model.pt and config.json into a local folder (rank 0 only)."""
    configs = {
        "train_config": cfg.to_dict(),
        "model_config": cfg.model_config.to_dict(),
        "grammar": None if grammar is None else grammar.to_dict(),
        "progress": asdict(progress),
        "dataset": dataset_metadata,
    }
    torch.save(
        {"model": state_dict, "speakers": speakers.to_dict(), **configs}, folder / MODEL_FILE
    )
    (folder / CONFIG_FILE).write_text(json.dumps({**configs, "metrics": metrics}, indent=2))


def load_checkpoint(
    uri: str, device: str | torch.device = "cpu"
) -> tuple[Lip2Speech, TrainConfig, SpeakerTable]:
    """A trained model (eval mode, on `device`), its exact TrainConfig and its speaker table, from
    a checkpoint or a run directory (its latest checkpoint), local or s3://."""
    uri = resolve(uri)
    model, speakers = load_model(uri, device)
    return model, TrainConfig.from_dict(read_config(uri)["train_config"]), speakers
