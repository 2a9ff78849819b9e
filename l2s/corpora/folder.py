"""Any tree of videos (.mp4 .mov .mkv .avi .webm .mpg), e.g. a media team's footage.

- id: the path below the root without its suffix (`interviews/anna/take1`), unique by construction.
- speaker: the name of the folder holding the video; a video directly under the root (or directly
  under a split folder) is its own speaker, named by its file name.
- split: the first folder when it is a split name (`train/`, `val/`, `test/`,
  `test_unseen_speakers/`, `pretrain/`), else `test` — footage without a split is for inference.
- transcript: an optional same-named .txt, either LRS-style (`Text:  WORDS`) or plain text.
  A video without one is a row without a transcript; an empty .txt is the same. A .txt that cannot
  be read or parsed skips its video rather than silently dropping the text the user supplied.
"""

from __future__ import annotations

from collections.abc import Iterator

from l2s.corpora.common import (
    Skip,
    collect,
    load_transcripts,
    lrs_text_line,
    normalize_transcript,
    parse_lrs_text,
    transcript_skip,
)
from l2s.schema import SPLITS, ManifestRow

NAME = "folder"
LAYOUT = "<root>/[<split>/]…/<speaker>/<name>.{mp4,mov,mkv,avi,webm,mpg} + optional <name>.txt"
DEFAULT_SPLIT = "test"


def parse_text(text: str) -> str | None:
    """LRS-style when the file has a `Text:` line, else the whole file; None when empty."""
    if lrs_text_line(text) is not None:
        return parse_lrs_text(text)
    return normalize_transcript(text) or None


def read(root: str) -> Iterator[ManifestRow | Skip]:
    utterances, skips = collect(root, ".txt")
    yield from skips
    transcripts = load_transcripts(
        (u.transcript for u in utterances if u.video and u.transcript), parse_text
    )
    for utt in utterances:
        if utt.video is None:
            yield Skip(
                path=utt.transcript or "", reason="video missing", detail="no video beside it"
            )
            continue
        transcript = transcripts[utt.transcript] if utt.transcript else None
        if isinstance(transcript, Exception):
            yield transcript_skip(utt.transcript or "", transcript)
            continue
        has_split = len(utt.parts) > 1 and utt.parts[0] in SPLITS
        below_split = utt.parts[1:] if has_split else utt.parts
        yield ManifestRow(
            id="/".join(utt.parts),
            speaker=below_split[-2] if len(below_split) > 1 else below_split[-1],
            split=utt.parts[0] if has_split else DEFAULT_SPLIT,
            video=utt.video,
            corpus=NAME,
            transcript=transcript,
        )
