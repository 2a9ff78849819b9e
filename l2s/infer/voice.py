"""The voice a clip is spoken in: a speaker embedding, never one from the clip's own audio (the
mistake of Kim et al.'s test-time embedding).

- `SplitVoices` (batch generation over a split): a speaker seen in training takes its
  train-split mean embedding from the checkpoint; an unseen one the mean over its *other*
  utterances in the split (leave-one-out), as a user's reference clip would give; with neither,
  the model's "no speaker" input. It holds a sum and a count per speaker, not a vector per clip,
  so a split of any size takes the same memory; `split_speakers` gives every clip's at once.
- `voice` (one video: `speak`, the endpoint, dubbing): a reference recording, a training speaker
  by name, or else the average of the training speakers.

Letters in shape names: D embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l2s.audio import load_audio
from l2s.config import AUDIO
from l2s.infer import SpeakError
from l2s.infer.model import SpeechModel
from l2s.infer.speakers import SpeakerTable


class SplitVoices:
    """The voice of every clip of a split, from per-speaker sums (see the module doc).

    Built once on the driver from the split's (speaker, speaker_embedding) columns, a batch at a
    time; sent to the workers, which ask `of(clip)` with the clip's speaker and embedding."""

    def __init__(self, table: SpeakerTable) -> None:
        self.table = table
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, speakers: Sequence[str], embeddings: Sequence) -> SplitVoices:
        """Count clips of the split (their speakers and embeddings; an empty embedding is none)."""
        for speaker, embedding in zip(speakers, embeddings, strict=True):
            speaker = str(speaker)
            if self.table.embedding(speaker) is not None:
                continue
            embedding_D = np.asarray(embedding, np.float64)
            if embedding_D.size:
                self.sums[speaker] = self.sums.get(speaker, 0.0) + embedding_D
                self.counts[speaker] = self.counts.get(speaker, 0) + 1
        return self

    def of(self, speaker: str, embedding) -> tuple[np.ndarray | None, str]:
        """The embedding to condition a clip on (its speaker and its own embedding, which is
        taken out of the speaker's sum), and where it came from."""
        mean_D = self.table.embedding(str(speaker))
        if mean_D is not None:
            return mean_D, "train mean"
        own_D = np.asarray(embedding, np.float64)
        others = self.counts.get(str(speaker), 0) - (1 if own_D.size else 0)
        if others < 1:
            return None, "none"
        total_D = self.sums[str(speaker)] - (own_D if own_D.size else 0.0)
        return (total_D / others).astype(np.float32), f"other utterances ({others})"


def split_speakers(
    clips: Sequence[dict], table: SpeakerTable
) -> dict[str, tuple[np.ndarray | None, str]]:
    """Per clip id (clips: dicts with id, speaker, speaker_embedding): the embedding to condition
    on and where it came from ("train mean", "other utterances (k)" or "none"); never the clip's
    own embedding."""
    voices = SplitVoices(table).add(
        [c["speaker"] for c in clips], [c["speaker_embedding"] for c in clips]
    )
    return {c["id"]: voices.of(c["speaker"], c["speaker_embedding"]) for c in clips}


def voice(
    model: SpeechModel, reference_audio: str | None, speaker: str | None
) -> tuple[np.ndarray | None, str]:
    """The speaker embedding to condition on, and a description of where it came from."""
    if reference_audio is not None and speaker is not None:
        raise SpeakError("give a reference recording or a speaker name, not both")
    if reference_audio is not None:
        from l2s.speaker import SpeakerEncoder

        encoder = SpeakerEncoder()
        encoder.setup()
        return encoder.embed(
            load_audio(reference_audio), AUDIO.sample_rate
        ), f"reference {reference_audio}"
    if speaker is not None:
        embedding = model.speaker(speaker)
        if embedding is None:
            known = ", ".join(model.speakers.speakers)
            raise SpeakError(f"speaker {speaker!r} is not one the model was trained on ({known})")
        return embedding, f"training speaker {speaker}"
    mean_D = model.speakers.mean_SD.mean(axis=0)
    return mean_D, f"average of {len(model.speakers.speakers)} training speakers"
