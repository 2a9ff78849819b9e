"""LRW (Lip Reading in the Wild): `<root>/<WORD>/{train,val,test}/<WORD>_<5 digits>.mp4` + `.txt`.

Each clip is 29 frames (1.16 s) with the word near its middle; the .txt reads `Text: WORD` then
`Duration: 0.53 seconds` (the word's own length). The transcript is the word; the row covers the
whole clip, as lip-to-speech work on LRW uses it, so `Duration:` is not needed.

Ids are `<split>/<WORD>_<nnnnn>`: clip numbers restart in every split folder.

Speaker: LRW publishes no speaker labels. Each clip gets its own pseudo-speaker, equal to its id,
so that nothing downstream (speaker-level statistics, unseen-speaker checks) treats two clips as
the same person; speaker conditioning on LRW must come from the speaker embedding alone.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

from l2s.corpora.common import Skip, collect, load_transcripts, parse_lrs_text, transcript_skip
from l2s.schema import ManifestRow

NAME = "lrw"
LAYOUT = "<root>/<WORD>/{train,val,test}/<WORD>_<nnnnn>.mp4 + .txt ('Text: WORD')"
SPLITS = ("train", "val", "test")
_CLIP_NAME = re.compile(r"^(?P<word>[A-Z']+)_\d{5}$")


def read(root: str) -> Iterator[ManifestRow | Skip]:
    utterances, skips = collect(root, ".txt", (".mp4",))
    yield from skips
    placed: list[tuple[str, str, str, str]] = []  # (video, transcript, split, word)
    for utt in utterances:
        path = utt.video or utt.transcript or ""
        match = _CLIP_NAME.match(utt.parts[-1])
        if len(utt.parts) != 3 or utt.parts[1] not in SPLITS:
            yield Skip(path=path, reason="unexpected location", detail=f"expected {LAYOUT}")
        elif match is None or match["word"] != utt.parts[0]:
            yield Skip(path=path, reason="unexpected file name", detail="expected <WORD>_<nnnnn>")
        elif utt.video is None:
            yield Skip(path=path, reason="video missing", detail="no .mp4 beside it")
        elif utt.transcript is None:
            yield Skip(path=path, reason="transcript missing", detail="no .txt beside it")
        else:
            placed.append((utt.video, utt.transcript, utt.parts[1], utt.parts[0]))
    transcripts = load_transcripts((p[1] for p in placed), parse_lrs_text)
    for video, transcript_uri, split, folder_word in placed:
        word = transcripts[transcript_uri]
        clip_id = f"{split}/{posixpath.splitext(posixpath.basename(video))[0]}"
        if isinstance(word, Exception):
            yield transcript_skip(transcript_uri, word)
        elif word != folder_word:
            yield Skip(
                path=transcript_uri,
                reason="transcript disagrees with folder",
                detail=f"'Text: {word}' in the folder of {folder_word}",
            )
        else:
            yield ManifestRow(
                id=clip_id,
                speaker=clip_id,
                split=split,
                video=video,
                corpus=NAME,
                transcript=word,
            )
