"""Reading checkpoints: what inference needs to load a trained model, without Ray or DeepSpeed.

A checkpoint is a directory `checkpoint_<step>` in a run directory (Ray Train writes it there;
`l2s.train.checkpoint` says what goes in and writes it):
  model.pt         plain `Lip2Speech` fp32 state dict + the exact TrainConfig / ModelConfig, the
                   speaker table, the dataset's metadata, the training progress (nanoGPT's dict)
  vocoder.pt       a HiFi-GAN run's checkpoints hold this instead (`l2s.train.tasks.vocoder`)
  config.json      the same configs, progress and metrics as JSON, for people and tools
"""

from __future__ import annotations

import io
import json
import posixpath
import time
from pathlib import Path

import torch

from l2s import storage
from l2s.infer.speakers import SpeakerTable
from l2s.models.lip2speech import Lip2Speech, ModelConfig

MODEL_FILE = "model.pt"
VOCODER_FILE = (
    "vocoder.pt"  # a HiFi-GAN run's checkpoints hold this instead (train/tasks/vocoder.py)
)
CONFIG_FILE = "config.json"
PREFIX = "checkpoint_"
RAY_RECORD_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints
RECORD_REWRITE_S = 1.0  # how long a record that does not parse may be one Ray is rewriting


def read_model(folder: str | Path, file: str = MODEL_FILE) -> dict:
    """The checkpoint dict of a local checkpoint folder or a checkpoint URI (`file`: vocoder runs
    keep theirs in another file)."""
    uri = storage.join(str(folder), file)
    # weights_only: the file holds tensors and plain containers only, so nothing executes on load.
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def read_config(checkpoint: str) -> dict:
    """config.json of a checkpoint: its configs, progress and metrics (no weights loaded)."""
    return json.loads(storage.read_bytes(storage.join(checkpoint, CONFIG_FILE)))


def latest_checkpoint(run: str, file: str = MODEL_FILE) -> str | None:
    """The URI of the newest complete checkpoint (one holding `file`) in a run directory, or None.

    Complete means Ray Train has recorded it, when the run has Ray's record: a run killed while a
    checkpoint was being copied in leaves a folder that a rerun does not resume from (Ray resumes
    from its record), so nothing else may take it for the latest either; a record that is there
    but unreadable raises ValueError naming it.
    """
    fs, path = storage.filesystem(run)
    if not fs.exists(path):
        return None
    names = sorted(
        posixpath.basename(p.rstrip("/"))
        for p in fs.ls(path, detail=False)
        if posixpath.basename(p.rstrip("/")).startswith(PREFIX)
    )
    recorded = _recorded_by_ray(run)
    for name in reversed(names):
        uri = storage.join(storage.normalize(run), name)
        if (recorded is None or name in recorded) and storage.exists(storage.join(uri, file)):
            return uri
    return None


def _recorded_by_ray(run: str) -> set[str] | None:
    """The checkpoint folders Ray Train's record of the run lists; None when there is no record
    (a checkpoint written outside Ray Train, as `initial_checkpoint` does, or a plain folder of
    checkpoints).

    An unreadable record raises instead of counting as none: Ray refuses to resume from it too,
    and the newest folder could be one Ray never finished recording, the very case the record
    settles. Ray rewrites the record in place (truncate, then write), so a reader racing a live
    run can catch it empty or cut short: it is read again for a while before it counts as broken.
    """
    snapshot = storage.join(storage.normalize(run), RAY_RECORD_FILE)
    deadline = time.monotonic() + RECORD_REWRITE_S
    while True:
        try:
            data = storage.read_bytes(snapshot)
        except FileNotFoundError:
            return None
        try:
            return _record_names(data)
        except ValueError as e:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"{snapshot}: Ray Train's checkpoint record is unreadable ({e}); Ray cannot "
                    "resume this run from it either. Repair it, or delete it to take the newest "
                    "complete checkpoint folder as the latest"
                ) from e
        time.sleep(0.1)


def _record_names(data: bytes) -> set[str]:
    """The `checkpoint_dir_name`s of a Ray Train record; ValueError saying what is wrong."""
    try:
        record = json.loads(data)
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError alike
        raise ValueError(f"not JSON: {e}") from e
    results = record.get("checkpoint_results") if isinstance(record, dict) else None
    if not isinstance(results, list):
        raise ValueError("no list of checkpoint_results")
    names = [r.get("checkpoint_dir_name") if isinstance(r, dict) else None for r in results]
    if not all(isinstance(name, str) for name in names):
        raise ValueError("a checkpoint result without a checkpoint_dir_name")
    return set(names)


def resolve(uri: str, file: str = MODEL_FILE) -> str:
    """A checkpoint URI as given, or the latest checkpoint of a run directory."""
    if storage.exists(storage.join(uri, file)):
        return storage.normalize(uri)
    latest = latest_checkpoint(uri, file)
    if latest is None:
        raise FileNotFoundError(f"{uri}: neither a checkpoint nor a run directory with one")
    return latest


def load_model(uri: str, device: str | torch.device = "cpu") -> tuple[Lip2Speech, SpeakerTable]:
    """A trained model (eval mode, on `device`) and its speaker table, from a checkpoint or a run
    directory (its latest checkpoint), local or s3://."""
    saved = read_model(resolve(uri))
    model = Lip2Speech(ModelConfig.from_dict(saved["model_config"]))
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), SpeakerTable.from_dict(saved["speakers"])
