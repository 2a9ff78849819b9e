"""Corpus readers on small trees laid out as the real corpora are, with their real transcript formats."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from l2s.corpora import (
    READERS,
    EmptyCorpusError,
    Reader,
    Skip,
    read_manifest,
    scan,
    skip_counts,
    write_manifest,
    write_skips,
)
from l2s.corpora.grid import parse_align, seen_speaker_splits
from l2s.schema import ERROR_SCHEMA, ManifestRow
from l2s.video import probe, write_video


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real, tiny h264 mp4 (3 frames), written once and copied where needed."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames_THWC = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    write_video(path, frames_THWC)
    return path.read_bytes()


def put(path: Path, data: bytes | str = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def lrs_txt(words: str) -> str:
    """A transcript as LRS2/LRS3 write them: Text, Conf, blank line, word-timing table."""
    table = [
        f"{w} {0.1 + 0.3 * i:.2f} {0.35 + 0.3 * i:.2f} {6.5 + i % 3:.1f}"
        for i, w in enumerate(words.split())
    ]
    return "\n".join([f"Text:  {words}", "Conf:  4", "", "WORD START END ASDSCORE", *table]) + "\n"


def grid_align(words: str) -> str:
    """An .align file: `start end word` in 1/25000 s ticks, with leading/trailing silence and a pause."""
    lines, t = ["0 12250 sil"], 12250
    for i, w in enumerate(words.split()):
        lines.append(f"{t} {t + 5500} {w}")
        t += 5500
        if i == 1:
            lines.append(f"{t} {t + 750} sp")
            t += 750
    lines.append(f"{t} 74500 sil")
    return "\n".join(lines) + "\n"


def by_id(rows: list[ManifestRow]) -> dict[str, ManifestRow]:
    return {r.id: r for r in rows}


def reasons(skips: list[Skip]) -> dict[str, str]:
    """Skipped file name (below the corpus root) → reason."""
    return {
        s.path.split("/", 3)[-1] if "://" in s.path else Path(s.path).name: s.reason for s in skips
    }


# Builders: each writes a small corpus in its real layout; `video` is the bytes of every video.


def build_lrs3(root: Path, video: bytes) -> None:
    put(root / "trainval/0af00UcTOSc/00001.mp4", video)
    put(root / "trainval/0af00UcTOSc/00001.txt", lrs_txt("AND THAT'S WHAT WE DID"))
    put(root / "test/-2Qx_8yhbQc/00003.mp4", video)
    put(root / "test/-2Qx_8yhbQc/00003.txt", lrs_txt("THANK YOU"))
    # Pretrain numbers its clips independently of trainval: same speaker folder, same name.
    put(root / "pretrain/0af00UcTOSc/00001.mp4", video)
    put(root / "pretrain/0af00UcTOSc/00001.txt", lrs_txt("SO LET ME TELL YOU A STORY"))


def build_lrs2(root: Path, video: bytes) -> None:
    for key, words in [
        ("5535415699068794046/00001", "IT'S JUST GOING TO BE"),
        ("5535415699068794046/00002", "ABSOLUTELY WONDERFUL"),
        ("6330311066473698535/00011", "WE'LL SEE YOU LATER"),
    ]:
        put(root / f"main/{key}.mp4", video)
        put(root / f"main/{key}.txt", f"Text:  {words}\nConf:  4\n")
    put(root / "pretrain/5535415699068794046/00001.mp4", video)
    put(root / "pretrain/5535415699068794046/00001.txt", lrs_txt("IN THE GARDEN THIS WEEK"))
    put(root / "train.txt", "5535415699068794046/00001\n")
    put(root / "val.txt", "5535415699068794046/00002\n")
    put(root / "test.txt", "6330311066473698535/00011 NF\n")
    put(root / "pretrain.txt", "5535415699068794046/00001\n")


def build_lrw(root: Path, video: bytes) -> None:
    for split in ("train", "val", "test"):
        put(root / f"ABOUT/{split}/ABOUT_00001.mp4", video)
        put(root / f"ABOUT/{split}/ABOUT_00001.txt", "Text: ABOUT\nDuration: 0.53 seconds\n")
    put(root / "WOULD/train/WOULD_00007.mp4", video)
    put(root / "WOULD/train/WOULD_00007.txt", "Text: WOULD\nDuration: 0.29 seconds\n")


def build_grid(root: Path, video: bytes) -> None:
    # s1: videos beside an align/ folder in the speaker's folder (per-speaker tars).
    put(root / "s1/bbaf2n.mpg", video)
    put(root / "s1/align/bbaf2n.align", grid_align("bin blue at f two now"))
    # s2: videos under video/, alignments in a top-level align/<speaker>/ (other distributions).
    put(root / "s2/video/lgaz8p.mpg", video)
    put(root / "align/s2/lgaz8p.align", grid_align("lay green at z eight please"))


def build_folder(root: Path, video: bytes) -> None:
    put(root / "train/anna/take1.mp4", video)
    put(root / "train/anna/take1.txt", "hello there\n  general kenobi\n")
    put(root / "interviews/ben/part2.mov", video)
    put(root / "interviews/ben/part2.txt", lrs_txt("I WAS BORN IN LEEDS"))
    put(root / "interviews/ben/part3.mkv", video)
    put(root / "lobby.webm", video)


def build_synthetic(root: Path, video: bytes) -> None:
    for split, speaker, utt, words in [
        ("train", "spk000", "00000", "PLACE BLUE AT A ONE NOW"),
        ("val", "spk000", "00001", "SET RED BY B TWO SOON"),
        ("test", "spk001", "00000", "LAY GREEN IN C THREE AGAIN"),
        ("test_unseen_speakers", "spk009", "00000", "BIN WHITE WITH D FOUR PLEASE"),
    ]:
        put(root / split / speaker / f"{utt}.mp4", video)
        put(root / split / speaker / f"{utt}.txt", lrs_txt(words))
        put(root / split / speaker / f"{utt}.json", json.dumps({"speaker": speaker, "seed": 3}))


BUILDERS: dict[str, Callable[[Path, bytes], None]] = {
    "lrs3": build_lrs3,
    "lrs2": build_lrs2,
    "lrw": build_lrw,
    "grid": build_grid,
    "folder": build_folder,
    "synthetic": build_synthetic,
}


def test_every_registered_corpus_has_a_builder() -> None:
    assert set(READERS) == set(BUILDERS)


@pytest.mark.parametrize("corpus", sorted(BUILDERS))
def test_scan_never_opens_videos(corpus: str, tmp_path: Path, monkeypatch) -> None:
    """Zero-length placeholders scan like real videos, and nothing tries to decode them."""

    def no_decoding(*args, **kwargs):
        raise AssertionError("a corpus scan must not open videos")

    monkeypatch.setattr("av.open", no_decoding)
    BUILDERS[corpus](tmp_path, b"")
    rows, skips = scan(corpus, str(tmp_path))
    assert rows and not skips
    assert all(r.corpus == corpus and r.duration is None and r.start == 0.0 for r in rows)
    assert all(Path(r.video).exists() and Path(r.video).is_absolute() for r in rows)


def test_lrs3(tmp_path: Path, mp4: bytes) -> None:
    build_lrs3(tmp_path, mp4)
    rows, skips = scan("lrs3", str(tmp_path))
    assert skips == []
    got = by_id(rows)
    assert list(got) == sorted(got)
    assert got["0af00UcTOSc/00001"].split == "train"
    assert got["0af00UcTOSc/00001"].transcript == "AND THAT'S WHAT WE DID"
    assert got["0af00UcTOSc/00001"].speaker == "0af00UcTOSc"
    assert got["-2Qx_8yhbQc/00003"].split == "test"
    assert got["pretrain/0af00UcTOSc/00001"].split == "pretrain"
    assert got["pretrain/0af00UcTOSc/00001"].transcript == "SO LET ME TELL YOU A STORY"
    assert probe(got["-2Qx_8yhbQc/00003"].video).width == 16


def test_lrs3_skips_say_why(tmp_path: Path, mp4: bytes) -> None:
    build_lrs3(tmp_path, mp4)
    spk = tmp_path / "trainval/0af00UcTOSc"
    put(spk / "00002.mp4", mp4)  # no transcript
    put(tmp_path / "test/-2Qx_8yhbQc/00004.txt", lrs_txt("NO VIDEO HERE"))
    put(spk / "00005.mp4", mp4)
    put(spk / "00005.txt", "Conf:  4\n\nWORD START END ASDSCORE\n")  # no Text: line
    put(spk / "00006.mp4", mp4)
    put(spk / "00006.txt", b"Text:  \xff\xfe broken\n")  # not UTF-8
    put(tmp_path / "trainval/stray.mp4", mp4)  # not in a speaker folder
    put(tmp_path / "extra/0af00UcTOSc/00009.mp4", mp4)  # outside the corpus's folders: not read
    put(spk / "._00001.mp4", b"\x00\x05\x16\x07")  # macOS resource fork
    rows, skips = scan("lrs3", str(tmp_path))
    assert len(rows) == 3
    assert reasons(skips) == {
        "00002.mp4": "transcript missing",
        "00004.txt": "video missing",
        "00005.txt": "unparsable transcript",
        "00006.txt": "unreadable transcript",
        "stray.mp4": "unexpected location",
        "._00001.mp4": "hidden file",
    }
    assert all(s.detail for s in skips if s.reason != "hidden file")
    assert skip_counts(skips) == {
        "transcript missing": 1,
        "video missing": 1,
        "unparsable transcript": 1,
        "unreadable transcript": 1,
        "unexpected location": 1,
        "hidden file": 1,
    }


def test_lrs2(tmp_path: Path, mp4: bytes) -> None:
    build_lrs2(tmp_path, mp4)
    rows, skips = scan("lrs2", str(tmp_path))
    assert skips == []
    got = by_id(rows)
    assert {i: r.split for i, r in got.items()} == {
        "5535415699068794046/00001": "train",
        "5535415699068794046/00002": "val",
        "6330311066473698535/00011": "test",
        "pretrain/5535415699068794046/00001": "pretrain",
    }
    assert got["5535415699068794046/00001"].transcript == "IT'S JUST GOING TO BE"
    assert got["6330311066473698535/00011"].speaker == "6330311066473698535"


def test_lrs2_split_lists_decide(tmp_path: Path, mp4: bytes) -> None:
    build_lrs2(tmp_path, mp4)
    put(tmp_path / "main/6330311066473698535/00012.mp4", mp4)  # in no list
    put(tmp_path / "main/6330311066473698535/00012.txt", "Text:  UNLISTED\nConf:  4\n")
    put(tmp_path / "main/6330311066473698535/00013.mp4", mp4)  # in two lists
    put(tmp_path / "main/6330311066473698535/00013.txt", "Text:  TWICE\nConf:  4\n")
    put(tmp_path / "pretrain/6330311066473698535/00099.mp4", mp4)  # not in pretrain.txt
    put(tmp_path / "pretrain/6330311066473698535/00099.txt", lrs_txt("NOT LISTED"))
    put(tmp_path / "train.txt", "5535415699068794046/00001\n6330311066473698535/00013\n")
    put(
        tmp_path / "test.txt",
        "6330311066473698535/00011 NF\n6330311066473698535/00013 MV\n6330311066473698535/00077\n",
    )
    rows, skips = scan("lrs2", str(tmp_path))
    assert len(rows) == 4
    found = {(Path(s.path).parent.name + "/" + Path(s.path).name, s.reason) for s in skips}
    assert found == {
        ("6330311066473698535/00012.mp4", "not in any split list"),
        ("6330311066473698535/00013.mp4", "in two split lists"),
        ("6330311066473698535/00099.mp4", "not in any split list"),
        ("6330311066473698535/00077.mp4", "listed but missing"),
    }
    missing = next(s for s in skips if s.reason == "listed but missing")
    assert "test.txt" in missing.detail


def test_lrs2_without_lists_explains(tmp_path: Path, mp4: bytes) -> None:
    build_lrs2(tmp_path, mp4)
    for name in ("train", "val", "test", "pretrain"):
        (tmp_path / f"{name}.txt").unlink()
    rows, skips = scan("lrs2", str(tmp_path))
    assert [r.id for r in rows] == ["pretrain/5535415699068794046/00001"]
    assert {s.reason for s in skips} == {"not in any split list"}
    assert all("no train.txt, val.txt or test.txt" in s.detail for s in skips)


def test_lrs2_broken_split_list_is_reported(tmp_path: Path, mp4: bytes) -> None:
    build_lrs2(tmp_path, mp4)
    put(tmp_path / "val.txt", "5535415699068794046-00002\n")
    rows, skips = scan("lrs2", str(tmp_path))
    assert "5535415699068794046/00002" not in by_id(rows)
    assert reasons(skips) == {
        "val.txt": "unreadable split list",
        "00002.mp4": "not in any split list",
    }
    assert "line 1" in skips[0].detail


def test_lrw(tmp_path: Path, mp4: bytes) -> None:
    build_lrw(tmp_path, mp4)
    put(tmp_path / "ABOUT/train/ABOUT_00002.mp4", mp4)
    put(tmp_path / "ABOUT/train/ABOUT_00002.txt", "Text: WOULD\nDuration: 0.40 seconds\n")
    put(tmp_path / "ABOUT/train/clip.mp4", mp4)
    put(tmp_path / "ABOUT/ABOUT_00003.mp4", mp4)
    rows, skips = scan("lrw", str(tmp_path))
    got = by_id(rows)
    # Clip numbers restart in each split: the split is part of the id.
    assert set(got) == {
        "train/ABOUT_00001",
        "val/ABOUT_00001",
        "test/ABOUT_00001",
        "train/WOULD_00007",
    }
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert got["train/WOULD_00007"].transcript == "WOULD"
    # No speaker labels in LRW: each clip is its own pseudo-speaker.
    assert all(r.speaker == r.id for r in rows)
    assert reasons(skips) == {
        "ABOUT_00002.txt": "transcript disagrees with folder",
        "clip.mp4": "unexpected file name",
        "ABOUT_00003.mp4": "unexpected location",
    }


def test_grid(tmp_path: Path, mp4: bytes) -> None:
    build_grid(tmp_path, mp4)
    put(tmp_path / "s1/bwwa1s.mpg", mp4)  # alignment missing
    put(tmp_path / "s1/align/pbio7a.align", grid_align("place blue in o seven again"))  # no video
    put(tmp_path / "s1/sgac3n.mpg", mp4)
    put(tmp_path / "s1/align/sgac3n.align", "0 74500 sil\n")  # silence only
    put(tmp_path / "s1/sgac4s.mpg", mp4)
    put(tmp_path / "s1/align/sgac4s.align", "0 12250 sil\n12250 bin\n")  # malformed line
    rows, skips = scan("grid", str(tmp_path))
    got = by_id(rows)
    assert set(got) == {"s1/bbaf2n", "s2/lgaz8p"}
    assert got["s1/bbaf2n"].transcript == "BIN BLUE AT F TWO NOW"
    assert got["s2/lgaz8p"].transcript == "LAY GREEN AT Z EIGHT PLEASE"
    assert got["s2/lgaz8p"].speaker == "s2"
    assert reasons(skips) == {
        "bwwa1s.mpg": "transcript missing",
        "pbio7a.align": "video missing",
        "sgac3n.align": "unparsable transcript",
        "sgac4s.align": "unparsable transcript",
    }


def test_grid_align_drops_silence() -> None:
    align = "0 23750 sil\n23750 29500 bin\n29500 34000 blue\n34000 35500 sp\n35500 41000 at\n"
    align += "41000 47250 f\n47250 53000 two\n53000 61000 now\n61000 74500 sil\n"
    assert parse_align(align) == "BIN BLUE AT F TWO NOW"


def test_grid_seen_speaker_split_is_90_5_5_and_stable() -> None:
    names = [f"u{i:04d}" for i in range(1000)]
    split = seen_speaker_splits(names, "s1")
    assert Counter(split.values()) == {"train": 900, "val": 50, "test": 50}
    assert seen_speaker_splits(list(reversed(names)), "s1") == split
    assert seen_speaker_splits(names, "s2") != split  # each speaker draws its own split
    # A missing utterance moves at most the one utterance at each boundary.
    fewer = seen_speaker_splits(names[1:], "s1")
    assert sum(fewer[n] != split[n] for n in names[1:]) <= 2


def test_grid_split_assigned_per_speaker(tmp_path: Path) -> None:
    for i in range(40):
        put(tmp_path / f"s3/u{i:03d}.mpg")
        put(tmp_path / f"alignments/s3/u{i:03d}.align", grid_align("set red by b two soon"))
    rows, skips = scan("grid", str(tmp_path))
    assert not skips
    assert Counter(r.split for r in rows) == {"train": 36, "val": 2, "test": 2}


def test_folder(tmp_path: Path, mp4: bytes) -> None:
    build_folder(tmp_path, mp4)
    put(tmp_path / "interviews/ben/notes.txt", "call back on monday")  # no video
    put(tmp_path / "interviews/ben/part4.avi", mp4)
    put(tmp_path / "interviews/ben/part4.txt", "")  # empty: no transcript
    put(tmp_path / "interviews/ben/part5.mpg", mp4)
    put(tmp_path / "interviews/ben/part5.txt", b"\xff\xfe\x00garbage")
    put(tmp_path / "interviews/ben/part6.mp4", mp4)
    put(tmp_path / "interviews/ben/part6.mov", mp4)  # same utterance twice
    rows, skips = scan("folder", str(tmp_path))
    got = by_id(rows)
    assert got["train/anna/take1"].split == "train"
    assert got["train/anna/take1"].speaker == "anna"
    assert got["train/anna/take1"].transcript == "HELLO THERE GENERAL KENOBI"
    assert got["interviews/ben/part2"].split == "test"
    assert got["interviews/ben/part2"].transcript == "I WAS BORN IN LEEDS"
    assert got["interviews/ben/part3"].transcript is None
    assert got["interviews/ben/part4"].transcript is None
    assert got["lobby"].speaker == "lobby"
    assert got["interviews/ben/part6"].video.endswith("part6.mov")  # suffixes sort .mov < .mp4
    assert reasons(skips) == {
        "notes.txt": "video missing",
        "part5.txt": "unreadable transcript",
        "part6.mp4": "second video for one utterance",
    }


def test_synthetic(tmp_path: Path, mp4: bytes) -> None:
    build_synthetic(tmp_path, mp4)
    rows, skips = scan("synthetic", str(tmp_path))
    assert skips == []  # the .json sidecars are the generator's, not the reader's
    got = by_id(rows)
    assert {i: r.split for i, r in got.items()} == {
        "spk000/00000": "train",
        "spk000/00001": "val",
        "spk001/00000": "test",
        "spk009/00000": "test_unseen_speakers",
    }
    assert got["spk009/00000"].transcript == "BIN WHITE WITH D FOUR PLEASE"
    assert {r.corpus for r in rows} == {"synthetic"}


def test_synthetic_reads_what_the_generator_writes(synth_corpus: Path) -> None:
    """The reader against the real generator (the session's shared corpus): ids, splits and
    transcripts agree with the generator's own sidecars."""
    rows, skips = scan("synthetic", str(synth_corpus))
    assert skips == []
    assert {r.split for r in rows} == {"train", "val", "test", "test_unseen_speakers"}
    for row in rows:
        sidecar = json.loads(Path(row.video).with_suffix(".json").read_text())
        assert (row.id, row.speaker, row.split) == (
            sidecar["id"],
            sidecar["speaker"],
            sidecar["split"],
        )
        assert row.transcript == " ".join(sidecar["text"].split())


def test_empty_corpus_is_an_error_naming_the_root(tmp_path: Path) -> None:
    with pytest.raises(EmptyCorpusError, match=str(tmp_path)):
        scan("lrs3", str(tmp_path))
    put(tmp_path / "trainval/spk/00001.mp4")
    with pytest.raises(EmptyCorpusError, match=r"skipped 1 files \(1 transcript missing\)"):
        scan("lrs3", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan("grid", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown corpus"):
        scan("timit", str(tmp_path))


def test_scan_skips_repeated_ids(tmp_path: Path, monkeypatch) -> None:
    def read(root: str) -> Iterator[ManifestRow | Skip]:
        for video in ("a.mp4", "b.mp4"):
            yield ManifestRow(id="x/1", speaker="x", split="test", video=video, corpus="fake")

    monkeypatch.setitem(READERS, "fake", Reader(name="fake", layout="-", read=read))
    rows, skips = scan("fake", str(tmp_path))
    assert [r.video for r in rows] == ["a.mp4"]
    assert [(s.path, s.reason) for s in skips] == [("b.mp4", "duplicate id")]


def test_manifest_round_trip(tmp_path: Path, mp4: bytes) -> None:
    build_synthetic(tmp_path / "corpus", mp4)
    rows, _ = scan("synthetic", str(tmp_path / "corpus"))
    rows.append(
        ManifestRow(
            id="x/2",
            speaker="x",
            split="test",
            video="v.mp4",
            corpus="folder",
            start=1.5,
            duration=2.0,
        )
    )
    uri = str(tmp_path / "out/manifests/synthetic.parquet")
    write_manifest(rows, uri)
    assert read_manifest(uri) == rows
    assert [p.name for p in (tmp_path / "out/manifests").iterdir()] == ["synthetic.parquet"]
    with pytest.raises(ValueError, match="empty manifest"):
        write_manifest([], uri)
    with pytest.raises(ValueError, match="unique"):
        write_manifest([rows[0], rows[0]], uri)
    assert read_manifest(uri) == rows  # a refused write leaves the old manifest in place


def test_read_manifest_rejects_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": ["a"]}), path)
    with pytest.raises(ValueError, match="not an l2s manifest"):
        read_manifest(str(path))


def test_skips_are_stored_as_an_error_table(tmp_path: Path) -> None:
    skips = [Skip(path="/c/a.mp4", reason="transcript missing", detail="no .txt beside it")]
    write_skips(skips, str(tmp_path / "skips.parquet"))
    table = pq.read_table(tmp_path / "skips.parquet")
    assert table.schema.equals(ERROR_SCHEMA)
    assert table.to_pylist() == [
        {
            "id": "/c/a.mp4",
            "video": "/c/a.mp4",
            "stage": "scan",
            "reason": "transcript missing: no .txt beside it",
        }
    ]
