"""LRS2-BBC: `<root>/main/<speaker>/<utt>.mp4` + `<utt>.txt`, `<root>/pretrain/<speaker>/<utt>...`,
and split lists `<root>/{train,val,test,pretrain}.txt`.

Transcripts use the LRS `Text:` format. Each list line names one utterance as `<speaker>/<utt>`;
test.txt may add a tag after a space (`NF`, `MV`), which is ignored. The lists decide the split of
every main/ utterance; one that no list names is skipped, since guessing its split could leak test
clips into training. pretrain.txt, when present, is authoritative for pretrain/ too; without it
every pretrain/ utterance is pretrain. A listed utterance with no video is reported as a skip.

Ids are `<speaker>/<utt>` for main/ and `pretrain/<speaker>/<utt>` for pretrain/, whose folders
are numbered independently of main/'s.
"""

from __future__ import annotations

from collections.abc import Iterator

from l2s import storage
from l2s.corpora.common import Skip, TranscriptError, Utterance, load_transcripts
from l2s.corpora.lrs import Placement, read_tree
from l2s.schema import ManifestRow

NAME = "lrs2"
LAYOUT = (
    "<root>/{main,pretrain}/<speaker>/<utt>.mp4 + <utt>.txt ('Text:  WORDS'), "
    "split lists <root>/{train,val,test,pretrain}.txt"
)
MAIN_LISTS = ("train", "val", "test")


def _parse_list(text: str) -> list[str]:
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key = line.split()[0]
        if len(key.split("/")) != 2:
            raise TranscriptError(f"line {number}: expected '<speaker>/<utt>', got {line!r}")
        keys.append(key)
    return keys


def read(root: str) -> Iterator[ManifestRow | Skip]:
    root = storage.normalize(root)
    # Each list is named after the split it assigns, so a list's name is its split.
    list_uris = {name: storage.join(root, f"{name}.txt") for name in (*MAIN_LISTS, "pretrain")}
    loaded = load_transcripts(list_uris.values(), _parse_list)
    lists: dict[str, list[str]] = {}
    for name, uri in list_uris.items():
        result = loaded[uri]
        if isinstance(result, FileNotFoundError):
            continue
        if isinstance(result, Exception):
            yield Skip(path=uri, reason="unreadable split list", detail=str(result))
        else:
            lists[name] = result

    # (folder, "<speaker>/<utt>") → split; a key in two lists is ambiguous and skipped.
    listed: dict[tuple[str, str], str] = {}
    conflicts: dict[tuple[str, str], str] = {}
    for split, keys in lists.items():
        folder = "pretrain" if split == "pretrain" else "main"
        for key in keys:
            if listed.get((folder, key), split) != split:
                conflicts[folder, key] = f"in {listed[folder, key]}.txt and {split}.txt"
            listed.setdefault((folder, key), split)
    have_main_lists = any(name in lists for name in MAIN_LISTS)
    have_pretrain_list = "pretrain" in lists
    seen: set[tuple[str, str]] = set()

    def place(utt: Utterance) -> Placement | Skip:
        folder, speaker, name = utt.parts
        key = (folder, f"{speaker}/{name}")
        seen.add(key)
        path = utt.video or utt.transcript or ""
        if key in conflicts:
            return Skip(path=path, reason="in two split lists", detail=conflicts[key])
        if key in listed:
            split = listed[key]
        elif folder == "pretrain" and not have_pretrain_list:
            split = "pretrain"
        elif folder == "pretrain":
            return Skip(
                path=path, reason="not in any split list", detail="absent from pretrain.txt"
            )
        else:
            detail = (
                "absent from train.txt, val.txt and test.txt"
                if have_main_lists
                else f"no train.txt, val.txt or test.txt in {root}"
            )
            return Skip(path=path, reason="not in any split list", detail=detail)
        prefix = "pretrain/" if folder == "pretrain" else ""
        return split, f"{prefix}{key[1]}"

    yield from read_tree(root, corpus=NAME, folders=("main", "pretrain"), place=place)
    for (folder, key), split in sorted(listed.items()):
        if (folder, key) not in seen:
            yield Skip(
                path=storage.join(root, folder, f"{key}.mp4"),
                reason="listed but missing",
                detail=f"named in {split}.txt; no video or transcript found",
            )
