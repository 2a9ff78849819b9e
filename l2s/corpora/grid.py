"""GRID: 34 speakers × 1000 sentences of the form "PUT RED AT G NINE NOW", 3 s at 25 fps.

Layouts found in the wild, all accepted (speaker folders are `s<N>`):
  videos      `<root>/s1/<utt>.mpg` (the "video normal" zips), `<root>/s1/video/<utt>.mpg`,
              `<root>/s1/video/mpg_6000/<utt>.mpg` (the high-quality tars)
  alignments  `<root>/s1/align/<utt>.align` (per-speaker tars), `<root>/align/s1/<utt>.align`,
              `<root>/alignments/s1/<utt>.align` (the Zenodo alignments.zip)

An .align file has one `start end word` line per word, in ticks of 1/25000 s (1000 ticks per
25 fps video frame, so a 75-frame clip ends near 75000). `sil` (silence) and `sp` (short pause)
are not words and are dropped; the rest, upper-cased, is the transcript.

Splits: GRID has no official split. This is the common "seen speakers" protocol: within each
speaker, utterances are ordered by a hash of (seed, speaker, utterance) and the first 5 % are test,
the next 5 % val and the rest train (90/5/5, e.g. 900/50/50 of 1000). The order depends only on
names, so the split is the same on every machine and a missing file moves at most a few others.
Unseen-speaker protocols hold out whole speakers; build them from the `speaker` column.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterator

from l2s import storage
from l2s.corpora.common import (
    Skip,
    TranscriptError,
    load_transcripts,
    normalize_transcript,
    transcript_skip,
)
from l2s.schema import ManifestRow

NAME = "grid"
LAYOUT = (
    "<root>/s<N>/[video/]<utt>.mpg + <root>/s<N>/align/<utt>.align or <root>/align/s<N>/<utt>.align"
)
VIDEO_SUFFIXES = (".mpg", ".mp4")
VIDEO_FOLDERS = ((), ("video",), ("video", "mpg_6000"))
ALIGN_FOLDERS = ("align", "alignments")
SILENCE = frozenset({"sil", "sp"})
SPLIT_SEED = "l2s-grid-seen-speakers-v1"
VAL_FRACTION = 0.05
TEST_FRACTION = 0.05
_SPEAKER = re.compile(r"^s\d+$")


def parse_align(text: str) -> str:
    """The transcript of an .align file: its words in order, without `sil` and `sp`."""
    words = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise TranscriptError(f"line {number}: expected 'start end word', got {line!r}")
        if int(fields[1]) < int(fields[0]):
            raise TranscriptError(f"line {number}: ends before it starts: {line!r}")
        if fields[2].lower() not in SILENCE:
            words.append(fields[2])
    if not words:
        raise TranscriptError("no words besides silence")
    return normalize_transcript(" ".join(words))


def seen_speaker_splits(names: list[str], speaker: str) -> dict[str, str]:
    """Split one speaker's utterance names 90/5/5 into train/val/test, deterministically."""

    def rank(name: str) -> str:
        return hashlib.sha256(f"{SPLIT_SEED}/{speaker}/{name}".encode()).hexdigest()

    ordered = sorted(names, key=rank)
    n_test = int(len(ordered) * TEST_FRACTION + 0.5)
    n_val = int(len(ordered) * VAL_FRACTION + 0.5)
    return {
        name: "test" if i < n_test else "val" if i < n_test + n_val else "train"
        for i, name in enumerate(ordered)
    }


def _classify(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(kind, speaker, utt) for a file in a known place, kind being "video" or "align"."""
    stem, suffix = posixpath.splitext(parts[-1])
    if suffix.lower() == ".align":
        if len(parts) == 3 and parts[1] == "align" and _SPEAKER.match(parts[0]):
            return "align", parts[0], stem
        if len(parts) == 3 and parts[0] in ALIGN_FOLDERS and _SPEAKER.match(parts[1]):
            return "align", parts[1], stem
        return None
    if _SPEAKER.match(parts[0]) and parts[1:-1] in VIDEO_FOLDERS:
        return "video", parts[0], stem
    return None


def read(root: str) -> Iterator[ManifestRow | Skip]:
    root = storage.normalize(root)
    videos: dict[tuple[str, str], str] = {}
    aligns: dict[tuple[str, str], str] = {}
    for uri in storage.list_files(root, (*VIDEO_SUFFIXES, ".align")):
        parts = tuple(uri[len(root) + 1 :].split("/"))
        found = _classify(parts)
        if found is None:
            yield Skip(path=uri, reason="unexpected location", detail=f"expected {LAYOUT}")
            continue
        kind, speaker, name = found
        table = videos if kind == "video" else aligns
        if (speaker, name) in table:
            yield Skip(
                path=uri,
                reason=f"second {kind} for one utterance",
                detail=f"kept {table[speaker, name]}",
            )
        else:
            table[speaker, name] = uri
    for key, uri in aligns.items():
        if key not in videos:
            yield Skip(path=uri, reason="video missing", detail=f"no video for {key[0]}/{key[1]}")
    complete = []
    for key, uri in videos.items():
        if key in aligns:
            complete.append(key)
        else:
            yield Skip(path=uri, reason="transcript missing", detail="no .align file for it")

    transcripts = load_transcripts((aligns[key] for key in complete), parse_align)
    usable: dict[str, dict[str, str]] = {}  # speaker → utterance → transcript
    for key in complete:
        transcript = transcripts[aligns[key]]
        if isinstance(transcript, Exception):
            yield transcript_skip(aligns[key], transcript)
        else:
            usable.setdefault(key[0], {})[key[1]] = transcript
    for speaker, by_name in sorted(usable.items()):
        for name, split in sorted(seen_speaker_splits(list(by_name), speaker).items()):
            yield ManifestRow(
                id=f"{speaker}/{name}",
                speaker=speaker,
                split=split,
                video=videos[speaker, name],
                corpus=NAME,
                transcript=by_name[name],
            )
