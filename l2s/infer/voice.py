"""The voice a clip is spoken in: a speaker embedding, never one from the clip's own audio (the
mistake of Kim et al.'s test-time embedding).

- `split_speakers` (batch generation over a split): a speaker seen in training takes its
  train-split mean embedding from the checkpoint; an unseen one the mean over its *other*
  utterances in the split (leave-one-out), as a user's reference clip would give; with neither,
  the model's "no speaker" input.
- `voice` (one video: `speak`, the endpoint, dubbing): a reference recording, a training speaker
  by name, or else the average of the training speakers.

Letters in shape names: D embedding size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from l2s.audio import load_audio
from l2s.config import AUDIO
from l2s.infer import SpeakError
from l2s.infer.model import SpeechModel
from l2s.infer.speakers import SpeakerTable


def split_speakers(
    clips: Sequence[dict], table: SpeakerTable
) -> dict[str, tuple[np.ndarray | None, str]]:
    """Per clip id (clips: dicts with id, speaker, speaker_embedding): the embedding to condition
    on and where it came from ("train mean", "other utterances (k)" or "none"); never the clip's
    own embedding."""
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for clip in clips:
        by_speaker[clip["speaker"]].append(clip)
    chosen: dict[str, tuple[np.ndarray | None, str]] = {}
    for speaker, group in by_speaker.items():
        mean_D = table.embedding(speaker)
        for clip in group:
            if mean_D is not None:
                chosen[clip["id"]] = (mean_D, "train mean")
                continue
            others = [
                np.asarray(c["speaker_embedding"], np.float32)
                for c in group
                if c["id"] != clip["id"]
            ]
            others = [e for e in others if e.size]
            if others:
                chosen[clip["id"]] = (np.mean(others, axis=0), f"other utterances ({len(others)})")
            else:
                chosen[clip["id"]] = (None, "none")
    return chosen


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
