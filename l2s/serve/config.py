"""What the HTTP service is configured by, and how it refuses a request.

`ServeConfig` is flat on purpose: `serve run l2s.serve.app:build_app checkpoint=... max_seconds=30`
and a `serve build` YAML pass its fields as plain `key=value` arguments.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any


class Rejected(ValueError):
    """A request the service refuses: the HTTP status and the reason the client is told.

    Raised in any deployment; Ray carries it to the ingress with both attributes intact
    (they are its `args`, so it pickles), where it becomes `{"detail": reason}`.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    checkpoint: str
    # Limits on what a client may send. Larger uploads are refused before they are read,
    # longer videos before they are decoded (and while decoding, for containers that state
    # no duration); the long side bounds decoding cost per frame (1920: 1080p).
    max_upload_mb: float = 100.0
    max_seconds: float = 60.0
    max_side: int = 1920
    # Dynamic batching of the model (`@serve.batch`): up to this many model windows (and then
    # vocoder runs) in one pass, waiting at most `batch_wait_s` for a batch to fill.
    # max_batch_size 1 turns batching off.
    max_batch_size: int = 8
    batch_wait_s: float = 0.02
    # The ingress replicas, which preprocess (decode + face tracking, CPU-bound, one clip at a
    # time per replica), autoscale between these replica counts on the requests in work.
    min_preprocess_replicas: int = 1
    max_preprocess_replicas: int = 2
    preprocess_cpus: float = 1.0
    model_replicas: int = 1
    # The model replica mostly waits for batches to fill; half a CPU leaves a 2-core machine
    # room for one ingress replica.
    model_cpus: float = 0.5
    # GPUs per model replica; None: one when the Ray cluster (or this machine) has a GPU.
    model_gpus: float | None = None
    # The vocoder (an `l2s.infer.vocoder` spec): None is Griffin-Lim; a HiFi-GAN run or checkpoint
    # runs on the model replica's device, its batches in one forward pass.
    vocoder: str | None = None
    # A lip generator (l2s train-lipsync): POST /v1/lipsync re-draws a video's lips to uploaded
    # speech. None: that route answers 404. Its replica tracks, re-draws and re-encodes a whole
    # video per request, so it takes a CPU of its own.
    lipsync: str | None = None
    lipsync_cpus: float = 1.0

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("a checkpoint (run directory or checkpoint folder) is required")
        if min(self.max_upload_mb, self.max_seconds, self.batch_wait_s + 1) <= 0:
            raise ValueError("max_upload_mb and max_seconds must be > 0, batch_wait_s >= 0")
        if self.max_side < 64:
            raise ValueError(f"max_side must be at least 64 px, got {self.max_side}")
        if self.max_batch_size < 1 or self.model_replicas < 1:
            raise ValueError("max_batch_size and model_replicas must be at least 1")
        if not 1 <= self.min_preprocess_replicas <= self.max_preprocess_replicas:
            raise ValueError(
                "need 1 <= min_preprocess_replicas <= max_preprocess_replicas, got "
                f"{self.min_preprocess_replicas} and {self.max_preprocess_replicas}"
            )
        if min(self.preprocess_cpus, self.model_cpus, self.lipsync_cpus, self.model_gpus or 0) < 0:
            raise ValueError("CPU and GPU counts cannot be negative")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeConfig:
        """From `serve run` / `serve build` arguments, which arrive as strings from a command line
        and typed from YAML: each is converted to its field's type; unknown names are an error."""
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown argument(s) {unknown}; known: {sorted(known)}")
        return cls(**{name: _convert(value, hints[name]) for name, value in args.items()})


def _convert(value: Any, hint: Any) -> Any:
    """`value` as the field type `hint` (str, int, float, or one of them | None)."""
    optional = type(None) in typing.get_args(hint)
    if optional and (value is None or str(value).lower() in ("", "none", "null")):
        return None
    target = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    return target(value)
