"""What every corpus reader shares: the skip record, one listing of a corpus tree grouped into
utterances, bulk transcript reading, and the LRS `Text:` transcript format.

Readers never open videos: a scan lists the tree once and reads only the small transcript files,
so it stays fast on 100k-file corpora and on object stores. Durations are left to preprocessing.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from l2s import storage

T = TypeVar("T")

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg")


@dataclass(frozen=True, kw_only=True)
class Skip:
    """A file a reader did not turn into a manifest row. `reason` is a short fixed phrase (so skips
    can be counted by it); `detail` says what exactly was wrong with this file."""

    path: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class TranscriptError(ValueError):
    """A transcript (or split-list) file exists but cannot be understood."""


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """The files of one utterance in a corpus tree: those sharing a path minus the suffix."""

    parts: tuple[str, ...]  # path below the corpus root, without suffix, split on '/'
    video: str | None  # URI
    transcript: str | None  # URI of the transcript file (.txt, .align, ...)


def collect(
    root: str,
    transcript_suffix: str,
    video_suffixes: Iterable[str] = VIDEO_SUFFIXES,
    folders: Iterable[str] | None = None,
) -> tuple[list[Utterance], list[Skip]]:
    """List `root` once and group videos with their same-named transcripts. With `folders`, only
    those top-level folders are listed (one listing each): the rest of `root` is not the corpus
    (LRS2 keeps its split lists beside main/, say), so it is neither read nor reported.

    Hidden files (a leading '.', e.g. macOS `._clip.mp4` forks or partial downloads) are skipped
    with a reason rather than passed on as videos that would fail to decode later.
    """
    root = storage.normalize(root)
    video_suffixes = tuple(s.lower() for s in video_suffixes)
    tops = [root] if folders is None else [storage.join(root, f) for f in sorted(folders)]
    files = [
        f for top in tops for f in storage.list_files(top, (*video_suffixes, transcript_suffix))
    ]
    videos: dict[tuple[str, ...], str] = {}
    transcripts: dict[tuple[str, ...], str] = {}
    skips: list[Skip] = []
    for uri in files:
        parts = tuple(uri[len(root) + 1 :].split("/"))
        if any(p.startswith(".") for p in parts):
            skips.append(Skip(path=uri, reason="hidden file"))
            continue
        stem, suffix = posixpath.splitext(parts[-1])
        key = (*parts[:-1], stem)
        if suffix.lower() == transcript_suffix:
            transcripts[key] = uri
        elif key in videos:
            skips.append(
                Skip(
                    path=uri, reason="second video for one utterance", detail=f"kept {videos[key]}"
                )
            )
        else:
            videos[key] = uri
    keys = sorted(videos.keys() | transcripts.keys())
    return [
        Utterance(parts=k, video=videos.get(k), transcript=transcripts.get(k)) for k in keys
    ], skips


def load_transcripts(
    uris: Iterable[str], parse: Callable[[str], T]
) -> dict[str, T | OSError | ValueError]:
    """Read transcript files (UTF-8, BOM tolerated) and parse each; a file that cannot be read,
    decoded or parsed maps to its error, for the reader to turn into a Skip."""
    out: dict[str, T | OSError | ValueError] = {}
    for uri, data in storage.read_many(uris).items():
        if isinstance(data, OSError):
            out[uri] = data
            continue
        try:
            out[uri] = parse(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, TranscriptError) as e:
            out[uri] = e
    return out


def normalize_transcript(text: str) -> str:
    """One spelling for all corpora: upper case (as LRS3 writes it), single spaces."""
    return " ".join(text.split()).upper()


_TEXT_LINE = re.compile(r"^\s*Text:(.*)$", re.MULTILINE)


def lrs_text_line(text: str) -> str | None:
    """The words after `Text:` in an LRS-style file (normalized), or None without such a line."""
    match = _TEXT_LINE.search(text)
    return None if match is None else normalize_transcript(match.group(1))


def parse_lrs_text(text: str) -> str:
    """The transcript from an LRS2/LRS3/LRW-style file, whose first field is `Text:  SOME WORDS`
    (followed by `Conf:` and a word-timing table in LRS2/3, by `Duration:` in LRW)."""
    words = lrs_text_line(text)
    if words is None:
        raise TranscriptError("no 'Text:' line")
    if not words:
        raise TranscriptError("empty 'Text:' line")
    return words


def transcript_skip(path: str, error: Exception) -> Skip:
    """The skip for a transcript file that could not be read or parsed."""
    reason = (
        "unparsable transcript" if isinstance(error, TranscriptError) else "unreadable transcript"
    )
    return Skip(path=path, reason=reason, detail=str(error) or type(error).__name__)
