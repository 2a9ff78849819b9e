"""The l2s synthetic corpus, written in LRS3's layout:
`<root>/<split>/<speaker>/<utt>.mp4` + `<utt>.txt` (LRS3 `Text:` format) + `<utt>.json` sidecar,
with split folders `train`, `val`, `test` and `test_unseen_speakers`.

Ids are `<speaker>/<utt>` as in LRS3, so an id does not change if the generator moves an
utterance to another split. The .json sidecar is the generator's own record and is not read here.
"""

from __future__ import annotations

from collections.abc import Iterator

from l2s.corpora.common import Skip, Utterance
from l2s.corpora.lrs import Placement, read_tree
from l2s.schema import ManifestRow

NAME = "synthetic"
LAYOUT = (
    "<root>/{train,val,test,test_unseen_speakers}/<speaker>/<utt>.mp4 + <utt>.txt ('Text:  WORDS')"
)
SPLIT_FOLDERS = ("train", "val", "test", "test_unseen_speakers")


def _place(utt: Utterance) -> Placement:
    split, speaker, name = utt.parts
    return split, f"{speaker}/{name}"


def read(root: str) -> Iterator[ManifestRow | Skip]:
    return read_tree(root, corpus=NAME, folders=SPLIT_FOLDERS, place=_place)
