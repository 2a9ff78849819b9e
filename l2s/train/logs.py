"""What rank 0 writes into the run directory beside the checkpoints: TensorBoard events
(`tensorboard/`: scalars, mel images, audio) and `metrics.jsonl` (one JSON line per report).

A run directory on s3:// gets both from a local folder, uploaded after every report: TensorBoard
writes local files, and object stores cannot append.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from l2s import storage
from l2s.config import AUDIO
from l2s.plots import mel_pair

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(run: str) -> list[dict]:
    """The reports of a run so far, oldest first ([] when there are none)."""
    uri = storage.join(storage.normalize(run), METRICS_FILE)
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line]


class RunLog:
    """TensorBoard + metrics.jsonl for one attempt of a run, resuming after `step`: what an earlier
    attempt logged beyond it (steps redone now) is dropped."""

    def __init__(self, run: str, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = storage.normalize(run)
        self.history = [m for m in read_metrics(self.run) if m["step"] <= step]
        self.remote = not storage.is_local(self.run)
        if self.remote:
            self._tmp = tempfile.TemporaryDirectory(prefix="l2s-tensorboard-")
            self.tensorboard_dir = self._tmp.name
        else:
            self.tensorboard_dir = os.path.join(self.run, TENSORBOARD_DIR)
        # purge_step: TensorBoard hides events an earlier attempt wrote after the resumed step.
        self.writer = SummaryWriter(self.tensorboard_dir, purge_step=step + 1 if step else None)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def report_scalars(self, step: int, metrics: dict) -> None:
        """The `train/…` and `val/…` entries of a report as TensorBoard scalars."""
        for prefix in ("train", "val"):
            values = {
                k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(prefix + "/")
            }
            self.scalars(step, values, prefix)

    def mel(self, step: int, tag: str, predicted_MF: np.ndarray, target_MF: np.ndarray) -> None:
        figure = mel_pair(target_MF, predicted_MF, ("target", "predicted"), size=(8, 5))
        self.writer.add_figure(tag, figure, step)  # closes the figure

    def image(self, step: int, tag: str, image_HW: np.ndarray) -> None:
        """A grayscale uint8 image (e.g. real frames above re-drawn ones)."""
        self.writer.add_image(tag, image_HW, step, dataformats="HW")

    def audio(self, step: int, tag: str, wav_S: np.ndarray) -> None:
        peak = max(float(np.abs(wav_S).max()), 1e-6)
        self.writer.add_audio(
            tag, (wav_S / peak * 0.9)[None, :], step, sample_rate=AUDIO.sample_rate
        )

    def record(self, metrics: dict) -> None:
        """Append one report to metrics.jsonl and make everything visible in the run directory."""
        self.history.append(metrics)
        lines = "".join(json.dumps(m) + "\n" for m in self.history)
        storage.write_bytes(storage.join(self.run, METRICS_FILE), lines.encode())
        self.flush()

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            fs, path = storage.filesystem(storage.join(self.run, TENSORBOARD_DIR))
            fs.put(self.tensorboard_dir + "/", path + "/", recursive=True)

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.remote:
            self._tmp.cleanup()
