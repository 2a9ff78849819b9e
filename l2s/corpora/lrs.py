"""The LRS-family tree, shared by LRS2, LRS3 and the synthetic corpus:
`<root>/<folder>/<speaker>/<utt>.mp4` with `<utt>.txt` beside it, whose first line is
`Text:  SOME WORDS`. Each corpus only says which folders count and how a folder maps to a split.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from l2s.corpora.common import (
    Skip,
    Utterance,
    collect,
    load_transcripts,
    parse_lrs_text,
    transcript_skip,
)
from l2s.schema import ManifestRow

Placement = tuple[str, str]
"""(split, id) of an utterance."""


def read_tree(
    root: str,
    *,
    corpus: str,
    folders: Collection[str],
    place: Callable[[Utterance], Placement | Skip],
) -> Iterator[ManifestRow | Skip]:
    """Rows for every `<folder>/<speaker>/<utt>` with a video and a transcript. `place` gives the
    split and id of each utterance found in a known folder, complete or not (or a Skip, e.g. when
    a split list leaves it out)."""
    utterances, skips = collect(root, ".txt", (".mp4",), folders=folders)
    yield from skips
    expected = f"<root>/{{{','.join(sorted(folders))}}}/<speaker>/<utt>.mp4"
    placed: list[tuple[Utterance, str, str, Placement]] = []  # (utt, video, transcript, placement)
    for utt in utterances:
        if len(utt.parts) != 3 or utt.parts[0] not in folders:
            path = utt.video or utt.transcript or ""
            yield Skip(path=path, reason="unexpected location", detail=f"expected {expected}")
        elif isinstance(placement := place(utt), Skip):
            yield placement
        elif utt.video is None:
            yield Skip(
                path=utt.transcript or "", reason="video missing", detail="no .mp4 beside it"
            )
        elif utt.transcript is None:
            yield Skip(path=utt.video, reason="transcript missing", detail="no .txt beside it")
        else:
            placed.append((utt, utt.video, utt.transcript, placement))
    transcripts = load_transcripts((p[2] for p in placed), parse_lrs_text)
    for utt, video, transcript_uri, (split, utt_id) in placed:
        transcript = transcripts[transcript_uri]
        if isinstance(transcript, Exception):
            yield transcript_skip(transcript_uri, transcript)
            continue
        yield ManifestRow(
            id=utt_id,
            speaker=utt.parts[1],
            split=split,
            video=video,
            corpus=corpus,
            transcript=transcript,
        )
