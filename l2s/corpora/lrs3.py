"""LRS3-TED: `<root>/{pretrain,trainval,test}/<speaker>/<utt>.mp4` + `<utt>.txt`.

The .txt starts with `Text:  SOME WORDS` (upper case), then `Conf:`, a blank line and a
`WORD START END ASDSCORE` table; only the `Text:` line is used.

Splits: `trainval` → train, `test` → test, `pretrain` → pretrain. LRS3 publishes no validation set;
papers carve one out of trainval themselves, so the whole of trainval is `train` here and a
validation subset is the training job's choice, not the manifest's.

Ids are `<speaker>/<utt>` (the speaker folder is a TED video id). Pretrain ids are
`pretrain/<speaker>/<utt>`: pretrain and trainval share speaker folders and number their clips
independently, so the same `<speaker>/<utt>` can name two different clips.
"""

from __future__ import annotations

from collections.abc import Iterator

from l2s.corpora.common import Skip, Utterance
from l2s.corpora.lrs import Placement, read_tree
from l2s.schema import ManifestRow

NAME = "lrs3"
LAYOUT = "<root>/{pretrain,trainval,test}/<speaker>/<utt>.mp4 + <utt>.txt ('Text:  WORDS')"
SPLIT_OF_FOLDER = {"trainval": "train", "test": "test", "pretrain": "pretrain"}


def _place(utt: Utterance) -> Placement:
    folder, speaker, name = utt.parts
    prefix = "pretrain/" if folder == "pretrain" else ""
    return SPLIT_OF_FOLDER[folder], f"{prefix}{speaker}/{name}"


def read(root: str) -> Iterator[ManifestRow | Skip]:
    return read_tree(root, corpus=NAME, folders=SPLIT_OF_FOLDER.keys(), place=_place)
