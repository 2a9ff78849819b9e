"""Speaker embeddings for training, chosen so that no audio of the target utterance ever enters
the model (see `l2s.models.lip2speech`).

- `SpeakerTable` (`l2s.infer.speakers`): each training speaker's mean embedding over its
  train-split utterances; validation uses it, and every checkpoint stores it for generation.
- `SpeakerBank`: a bounded sample of train-split embeddings per speaker. A training clip is
  conditioned on another utterance of its speaker, drawn afresh each time it is seen, which varies
  the voice reference as a user-supplied reference clip would at generation time.

Shapes: N utterances, K bank entries per speaker, D embedding size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


class SpeakerBank:
    """Up to `per_speaker` train-split (id, embedding) pairs per speaker, to draw references from."""

    def __init__(self, ids: dict[str, list[str]], embeddings: dict[str, np.ndarray]) -> None:
        self.ids = ids
        self.embeddings = embeddings
        self.dim = next(iter(embeddings.values())).shape[1] if embeddings else 0

    @classmethod
    def from_embeddings(
        cls,
        ids_N: Sequence[str],
        speakers_N: Sequence[str],
        embeddings_ND: np.ndarray,
        per_speaker: int = 16,
        seed: int = 0,
    ) -> SpeakerBank:
        rows: dict[str, list[int]] = defaultdict(list)
        for n, speaker in enumerate(speakers_N):
            rows[speaker].append(n)
        rng = np.random.default_rng(seed)
        ids, embeddings = {}, {}
        for speaker in sorted(rows):
            chosen = rows[speaker]
            if len(chosen) > per_speaker:
                chosen = sorted(rng.choice(chosen, size=per_speaker, replace=False).tolist())
            ids[speaker] = [ids_N[n] for n in chosen]
            embeddings[speaker] = np.asarray(embeddings_ND[chosen], dtype=np.float32)
        return cls(ids, embeddings)

    def other(self, speaker: str, utterance_id: str, rng: np.random.Generator) -> np.ndarray:
        """The embedding of a random other utterance of `speaker`; zeros (the model's "no speaker"
        input) when the bank holds none."""
        candidates = [k for k, i in enumerate(self.ids.get(speaker, ())) if i != utterance_id]
        if not candidates:
            return np.zeros(self.dim, dtype=np.float32)
        return self.embeddings[speaker][candidates[rng.integers(len(candidates))]]
