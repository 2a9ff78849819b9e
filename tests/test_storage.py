"""Storage on local paths and on a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from l2s import storage
from l2s.corpora import read_manifest, scan, write_manifest
from l2s.schema import ManifestRow


def rows() -> list[ManifestRow]:
    return [
        ManifestRow(
            id="spk0/00000",
            speaker="spk0",
            split="train",
            video="s3://b/v.mp4",
            corpus="synthetic",
            transcript="SET RED",
        ),
        ManifestRow(
            id="spk1/00000",
            speaker="spk1",
            split="test",
            video="s3://b/w.mp4",
            corpus="synthetic",
            start=0.4,
            duration=2.5,
        ),
    ]


def test_local_round_trip(tmp_path: Path) -> None:
    root = str(tmp_path / "data")
    storage.write_bytes(storage.join(root, "a/clip.MP4"), b"video")
    storage.write_bytes(storage.join(root, "a/clip.txt"), b"Text:  HI\n")
    storage.write_bytes(storage.join(root, "b/notes.md"), b"#")
    assert storage.list_files(root, [".mp4", ".txt"]) == [
        f"{root}/a/clip.MP4",
        f"{root}/a/clip.txt",
    ]
    assert storage.list_files(root) == [
        f"{root}/a/clip.MP4",
        f"{root}/a/clip.txt",
        f"{root}/b/notes.md",
    ]
    assert storage.read_bytes(f"{root}/a/clip.txt") == b"Text:  HI\n"
    assert storage.exists(root) and not storage.exists(f"{root}/zz")
    read = storage.read_many([f"{root}/a/clip.txt", f"{root}/missing.txt"])
    assert read[f"{root}/a/clip.txt"] == b"Text:  HI\n"
    assert isinstance(read[f"{root}/missing.txt"], FileNotFoundError)
    with storage.open_uri(f"{root}/c/d/stream.txt", "w") as f:  # parents are created
        f.write("x")
    assert (tmp_path / "data/c/d/stream.txt").read_text() == "x"


def test_list_files_follows_symlinked_folders(tmp_path: Path) -> None:
    storage.write_bytes(str(tmp_path / "elsewhere/spk/00001.mp4"), b"")
    (tmp_path / "corpus/test").mkdir(parents=True)
    (tmp_path / "corpus/test/spk").symlink_to(tmp_path / "elsewhere/spk")
    assert storage.list_files(str(tmp_path / "corpus")) == [f"{tmp_path}/corpus/test/spk/00001.mp4"]


def test_uris_keep_their_form(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("rel/dir/") == f"{tmp_path}/rel/dir"
    assert storage.normalize(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    assert storage.normalize("s3://bucket/key/") == "s3://bucket/key"
    assert storage.join("s3://bucket/", "a", "/b/") == "s3://bucket/a/b"
    assert storage.join("/data", "lrs3", "test") == "/data/lrs3/test"
    assert storage.is_local("rel") and not storage.is_local("s3://bucket/key")


def test_endpoint_from_env(monkeypatch) -> None:
    monkeypatch.delenv("L2S_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert storage.s3_endpoint() == "http://127.0.0.1:1"
    monkeypatch.setenv("L2S_S3_ENDPOINT", "http://127.0.0.1:2")
    assert storage.s3_endpoint() == "http://127.0.0.1:2"
    fs, path = storage.filesystem("s3://bucket/key")
    assert (fs.endpoint_url, path) == ("http://127.0.0.1:2", "bucket/key")


def test_local_atomic_write_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out/manifest.parquet"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError), storage.atomic_write(str(target)) as f:
        f.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.parquet"]  # no temp file left
    with pytest.raises(ValueError, match="modes"):
        storage.atomic_write(str(target), "ab").__enter__()


def test_s3_round_trip(bucket: str) -> None:
    root = storage.join(bucket, "corpus")
    storage.write_bytes(storage.join(root, "test/spk/00001.mp4"), b"\x00video")
    storage.write_bytes(storage.join(root, "test/spk/00001.txt"), b"Text:  HELLO\n")
    with storage.open_uri(storage.join(root, "test/spk/00002.txt"), "wb") as f:
        f.write(b"Text:  STREAMED\n")
    assert storage.list_files(root, [".mp4"]) == [f"{bucket}/corpus/test/spk/00001.mp4"]
    assert len(storage.list_files(root)) == 3
    assert storage.exists(root) and storage.exists(f"{root}/test/spk/00001.mp4")
    assert not storage.exists(f"{root}/test/spk/00009.mp4")
    with storage.open_uri(f"{root}/test/spk/00002.txt") as f:
        assert f.read() == b"Text:  STREAMED\n"
    read = storage.read_many([f"{root}/test/spk/00001.txt", f"{root}/nope.txt"])
    assert read[f"{root}/test/spk/00001.txt"] == b"Text:  HELLO\n"
    assert isinstance(read[f"{root}/nope.txt"], FileNotFoundError)


def test_s3_failed_write_leaves_no_object(bucket: str) -> None:
    uri = storage.join(bucket, "manifests/m.parquet")
    with pytest.raises(RuntimeError), storage.atomic_write(uri) as f:
        f.write(b"partial")
        raise RuntimeError("interrupted")
    assert not storage.exists(uri)


def test_s3_manifest_parquet(bucket: str) -> None:
    uri = storage.join(bucket, "manifests/synthetic.parquet")
    write_manifest(rows(), uri)
    assert read_manifest(uri) == rows()
    # The native pyarrow filesystem reads the same object (the fast path for large scans).
    arrow_fs, path = storage.arrow_filesystem(uri)
    assert pq.read_table(path, filesystem=arrow_fs).column("id").to_pylist() == [
        "spk0/00000",
        "spk1/00000",
    ]


def test_s3_corpus_scan(bucket: str) -> None:
    root = storage.join(bucket, "lrs3")
    for key, words in [("trainval/spkA/00001", "GOOD MORNING"), ("test/spkB/00002", "GOOD NIGHT")]:
        storage.write_bytes(storage.join(root, f"{key}.mp4"), b"")
        storage.write_bytes(
            storage.join(root, f"{key}.txt"), f"Text:  {words}\nConf:  3\n".encode()
        )
    storage.write_bytes(storage.join(root, "test/spkB/00003.mp4"), b"")
    found, skips = scan("lrs3", root)
    assert [(r.id, r.split, r.video, r.transcript) for r in found] == [
        ("spkA/00001", "train", f"{root}/trainval/spkA/00001.mp4", "GOOD MORNING"),
        ("spkB/00002", "test", f"{root}/test/spkB/00002.mp4", "GOOD NIGHT"),
    ]
    assert [(s.path, s.reason) for s in skips] == [
        (f"{root}/test/spkB/00003.mp4", "transcript missing")
    ]
