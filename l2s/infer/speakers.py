"""The speaker table a checkpoint carries: each training speaker's mean embedding over its
train-split utterances. Val and test clips of a seen speaker are spoken in it (their own audio is
never in the train split), and generation for a named speaker needs no reference audio.

Shapes: N utterances, S speakers, D embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _unit(x_ND: np.ndarray) -> np.ndarray:
    norm_N1 = np.linalg.norm(x_ND, axis=-1, keepdims=True)
    return (x_ND / np.maximum(norm_N1, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class SpeakerTable:
    """Mean (re-normalised to unit length) train-split embedding per speaker, and how many
    utterances went into it; `encoder` is the speaker encoder named by the dataset's metadata."""

    speakers: tuple[str, ...]
    mean_SD: np.ndarray
    counts: tuple[int, ...]
    encoder: dict | None = None

    def __post_init__(self) -> None:
        if self.mean_SD.shape[0] != len(self.speakers) or len(self.counts) != len(self.speakers):
            raise ValueError("speakers, mean_SD rows and counts must have the same length")

    @property
    def dim(self) -> int:
        return int(self.mean_SD.shape[1])

    @classmethod
    def from_embeddings(
        cls, speakers_N: Sequence[str], embeddings_ND: np.ndarray, encoder: dict | None = None
    ) -> SpeakerTable:
        names = sorted(set(speakers_N))
        row = {name: i for i, name in enumerate(names)}
        index_N = np.array([row[s] for s in speakers_N], dtype=np.int64)
        sums_SD = np.zeros((len(names), embeddings_ND.shape[1]), dtype=np.float64)
        np.add.at(sums_SD, index_N, embeddings_ND)
        counts = np.bincount(index_N, minlength=len(names))
        return cls(tuple(names), _unit(sums_SD), tuple(int(c) for c in counts), encoder)

    def embedding(self, speaker: str) -> np.ndarray | None:
        """The speaker's mean embedding, or None for a speaker absent from the train split."""
        try:
            return self.mean_SD[self.speakers.index(speaker)]
        except ValueError:
            return None

    def to_dict(self) -> dict:
        return {
            "speakers": list(self.speakers),
            "mean": self.mean_SD.tolist(),
            "counts": list(self.counts),
            "encoder": self.encoder,
        }

    @classmethod
    def from_dict(cls, values: dict) -> SpeakerTable:
        mean_SD = np.asarray(values["mean"], dtype=np.float32).reshape(len(values["speakers"]), -1)
        return cls(
            tuple(values["speakers"]), mean_SD, tuple(values["counts"]), values.get("encoder")
        )
