"""`l2s dub` end to end on real components: real and synthetic clips, a corrupt file and an
audio-only file → dubbed mp4s (video stream copied, speech as the only audio track, streams of equal
duration), sidecars and a ledger; reruns do nothing; a job killed midway is finished by the next
run with every output exactly once; the same against an S3-compatible server on 127.0.0.1.

The model is the untrained `checkpoint` fixture: what it says is not judged here, only where it
goes and how.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from l2s import storage
from l2s.audio import load_audio, write_wav
from l2s.dub import LEDGER, DubConfig, dub, find_videos, read_ledger, run_dub
from l2s.video import VideoError, mux_audio

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "real"  # as in conftest.py
REAL = ("video-retalking__face_3.mp4", "video-retalking__face_5.mp4")


def _synthetic(corpus: Path, n: int) -> list[Path]:
    return sorted(corpus.glob("*/*/*.mp4"))[:n]


def _write_audio_only(path: Path, speech: Path) -> None:
    """An mp4 with an AAC track and no video stream, as a phone's voice memo is."""
    wav_S = load_audio(speech)[:32000]
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(wav_S[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _remux_video_only(source: Path, path: Path) -> None:
    """The video stream of `source`, copied into another container (the suffix picks it)."""
    with av.open(str(source)) as src, av.open(str(path), mode="w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


@pytest.fixture(scope="module")
def sources(
    tmp_path_factory: pytest.TempPathFactory,
    real_clips: list[Path],
    real_speech: Path,
    synth_corpus: Path,
) -> Path:
    """real/ two real clips; synth/ two synthetic clips and one as a video-only .mkv; broken/ a
    corrupt file and an audio-only mp4."""
    root = tmp_path_factory.mktemp("sources")
    for name in ("real", "synth", "broken"):
        (root / name).mkdir()
    for clip in real_clips:
        if clip.name in REAL:
            shutil.copy(clip, root / "real" / clip.name)
    synthetic = _synthetic(synth_corpus, 3)
    for clip in synthetic[:2]:
        shutil.copy(clip, root / "synth" / f"{clip.parent.name}_{clip.name}")
    _remux_video_only(synthetic[2], root / "synth" / "silent.mkv")
    (root / "broken" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(40_000))
    _write_audio_only(root / "broken" / "voice_memo.mp4", real_speech)
    return root


def _video_packets(path: Path) -> tuple[str, list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [bytes(p) for p in container.demux(stream) if p.size]


def check_dubbed(source: Path, dubbed: Path) -> None:
    """One video stream, copied from the source packet for packet, and one audio stream that
    lasts as long as the video, within a frame."""
    with av.open(str(dubbed)) as container:
        assert container.format.name.startswith("mov,mp4")
        assert [s.type for s in container.streams] == ["video", "audio"], dubbed
        video, audio = container.streams.video[0], container.streams.audio[0]
        frame = 1 / float(video.average_rate)
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
        assert audio.codec_context.name == "aac"
    assert abs(video_s - audio_s) <= frame, (
        f"{dubbed}: video {video_s:.3f} s, audio {audio_s:.3f} s"
    )
    assert _video_packets(dubbed) == _video_packets(source), f"{dubbed}: video not copied"


def _encode(path: Path, codec: str, n_frames: int = 30) -> None:
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n_frames):
            image = np.full((48, 64, 3), i * 8, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))


def test_mux_audio_copies_the_video_of_every_container(tmp_path: Path) -> None:
    """mov, mkv and webm (VP9) as their encoders write them, avi (MPEG-4 part 2), a real clip
    remuxed into Matroska (B-frames whose first packets carry no decoding time), a variable frame
    rate real clip; VP8, which mp4 cannot hold, is refused with the reason and leaves nothing."""
    wav = tmp_path / "speech.wav"
    write_wav(wav, np.sin(np.arange(16000 * 7) / 10).astype(np.float32) * 0.1)
    sources = []
    for name, codec in [("a.mov", "libx264"), ("b.mkv", "libx264"), ("c.webm", "libvpx-vp9"),
                        ("d.avi", "mpeg4")]:  # fmt: skip
        _encode(tmp_path / name, codec)
        sources.append(tmp_path / name)
    if FIXTURES.exists():
        _remux_video_only(FIXTURES / REAL[0], tmp_path / "real.mkv")
        sources += [tmp_path / "real.mkv", FIXTURES / "video-retalking__face_1.mp4"]
    for source in sources:
        mux_audio(str(source), str(wav), str(tmp_path / "out" / f"{source.name}.mp4"))
        check_dubbed(source, tmp_path / "out" / f"{source.name}.mp4")
    _encode(tmp_path / "e.webm", "libvpx")
    with pytest.raises(VideoError, match=r"e\.webm: cannot copy its vp8 video into an mp4"):
        mux_audio(str(tmp_path / "e.webm"), str(wav), str(tmp_path / "out" / "e.mp4"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{s.name}.mp4" for s in sources
    )


def test_which_files_are_sources(tmp_path: Path) -> None:
    """Video suffixes in any case, at any depth; not hidden files, not the outputs when DST lies
    inside SRC; of two sources with one output name, the .mp4 (the other is reported)."""
    names = ["a.mp4", "b/c.MOV", "b/d.webm", "e.avi", "f.mkv", "notes.txt", ".partial.mp4",
             "b/.x/g.mp4", "h.mov", "h.mp4", "out/old.mp4"]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    videos, conflicts = find_videos(str(tmp_path), str(tmp_path / "out"))
    assert [v.relative for v in videos] == [
        "a.mp4",
        "b/c.MOV",
        "b/d.webm",
        "e.avi",
        "f.mkv",
        "h.mp4",
    ]
    assert [v.output for v in videos][1:3] == ["b/c.mp4", "b/d.mp4"]
    assert conflicts == ["h.mov: its output h.mp4 is h.mp4's"]
    with pytest.raises(ValueError, match="must differ"):
        find_videos(str(tmp_path), str(tmp_path))
    with pytest.raises(FileNotFoundError):
        find_videos(str(tmp_path / "nothing"), str(tmp_path / "out"))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _ledger_names(relatives: list[str], status: str) -> set[str]:
    from l2s.dub import SourceVideo

    return {SourceVideo(uri="", relative=r).record(status) for r in relatives}


GOOD = {
    "real/video-retalking__face_3.mp4": "real/video-retalking__face_3",
    "real/video-retalking__face_5.mp4": "real/video-retalking__face_5",
    "synth/silent.mkv": "synth/silent",
}
BAD = {"broken/corrupt.mp4": "cannot open as a video", "broken/voice_memo.mp4": "no video stream"}


def test_dub_a_folder_then_rerun_does_nothing(
    sources: Path, checkpoint: str, ray_local, tmp_path: Path
) -> None:
    dst = tmp_path / "dubbed"
    # What a run killed while writing leaves (storage.atomic_write's temporaries): swept.
    for stale in ("real/.video-retalking__face_3.mp4", "synth/.silent.json"):
        (dst / f"{stale}.{'0' * 32}.tmp").parent.mkdir(parents=True, exist_ok=True)
        (dst / f"{stale}.{'0' * 32}.tmp").write_bytes(b"half")
    summary = dub(str(sources), str(dst), DubConfig(checkpoint=checkpoint))
    assert summary.swept == 2
    synthetic = sorted(str(p.relative_to(sources)) for p in (sources / "synth").glob("*.mp4"))
    good = {**GOOD, **{s: s.removesuffix(".mp4") for s in synthetic}}
    assert summary.done == len(good) and summary.lost == 0
    assert {r.source: r.stage for r in summary.failed} == dict.fromkeys(BAD, "decode")
    for record in summary.failed:
        assert BAD[record.source] in record.reason and not record.retry
        assert record.source in record.reason, "the reason names the file"

    for source, stem in good.items():
        check_dubbed(sources / source, dst / f"{stem}.mp4")
        sidecar = json.loads((dst / f"{stem}.json").read_text())
        assert sidecar["model"]["checkpoint"].startswith(checkpoint)
        assert sidecar["model"]["step"] == 0 and sidecar["model"]["model_config"]
        assert sidecar["voice"].startswith("average of") and sidecar["video_stream"] == "copied"
        assert sidecar["durations"]["video_s"] > 1 and sidecar["compute_seconds"] > 0
        assert isinstance(sidecar["text"], str)  # what the lips were read to say
        if source.endswith(".mkv"):
            assert sidecar["scores"] is None and "no audio track" in sidecar["scores_note"]
            assert sidecar["asr"] is None
        else:
            assert 0 <= sidecar["scores"]["stoi"] <= 1, sidecar["scores"]
            # WER against what the same recognizer hears in the source's own audio track.
            asr = sidecar["asr"]
            assert asr["recognizer"].endswith("grid-jsgf") and asr["source"]
            assert sidecar["scores"]["wer"] is not None or "wer: " in sidecar["scores_note"]
    expected = (
        {f"{stem}.{ext}" for stem in good.values() for ext in ("mp4", "json")}
        | _ledger_names(list(good), "done")
        | _ledger_names(list(BAD), "failed")
    )
    assert _files(dst) == expected, "outputs, sidecars and ledger records only"
    done, failed = read_ledger(str(dst))
    assert done.keys() == set(good) and failed.keys() == BAD.keys()

    stamps = {f: (dst / f).stat().st_mtime_ns for f in expected}
    again = dub(str(sources), str(dst), DubConfig(checkpoint=checkpoint))
    assert (again.done, again.failed, again.skipped_done) == (0, [], len(good))
    assert sorted(r.source for r in again.skipped_failed) == sorted(BAD)
    assert {f: (dst / f).stat().st_mtime_ns for f in expected} == stamps, "nothing rewritten"


def _kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL the job's process group and every process it started (Ray's raylet and workers
    may sit outside the group), then wait until none is left: a crash, as a node loss is."""
    tree = psutil.Process(job.pid).children(recursive=True)
    os.killpg(job.pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone with the group
            process.kill()
    job.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.05)


def _alive(process: psutil.Process) -> bool:
    """Still running; a zombie (killed, its parent gone, not yet reaped) runs nothing."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_job_is_finished_by_the_next_run_with_every_output_once(
    synth_corpus: Path, checkpoint: str, ray_local, tmp_path: Path, capsys
) -> None:
    src, dst = tmp_path / "silent", tmp_path / "dubbed"
    clips = _synthetic(synth_corpus, 4)
    relatives = [f"{c.parent.name}/{c.name}" for c in clips]
    for clip, relative in zip(clips, relatives, strict=True):
        (src / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, src / relative)
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "jobs/dub.py", str(src), str(dst), "--checkpoint", checkpoint]
    log = tmp_path / "job.log"
    with log.open("wb") as out:
        job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    done_dir = dst / LEDGER / "done"
    started = time.monotonic()
    deadline = started + 180
    while job.poll() is None and time.monotonic() < deadline:
        if done_dir.exists() and any(done_dir.glob("*.json")):
            break
        time.sleep(0.1)
    print(f"killed after {time.monotonic() - started:.1f} s")
    _kill_tree(job)
    print(f"left by the kill: {sorted(p.name for p in dst.rglob('.*'))}")
    finished = read_ledger(str(dst))[0]
    assert 0 < len(finished) < len(clips), (
        f"the kill landed after {len(finished)} videos; the job said:\n{log.read_text()[-3000:]}"
    )

    run_dub(str(src), str(dst), DubConfig(checkpoint=checkpoint))  # what `l2s dub` runs
    printed = capsys.readouterr().out
    print(f"rerun done after {time.monotonic() - started:.1f} s\n{printed}")
    table = {m[0]: int(m[1]) for m in re.findall(r"│ ([a-z ()]+?) +│ +(\d+) │", printed)}
    assert table["dubbed now"] == len(clips) - len(finished)
    assert table["done earlier (skipped)"] == len(finished)
    done, failed = read_ledger(str(dst))
    assert done.keys() == set(relatives) and failed == {}
    stems = [r.removesuffix(".mp4") for r in relatives]
    expected = {f"{s}.{ext}" for s in stems for ext in ("mp4", "json")} | _ledger_names(
        relatives, "done"
    )
    assert _files(dst) == expected, "every output exactly once, nothing temporary left"
    for relative, stem in zip(relatives, stems, strict=True):
        check_dubbed(src / relative, dst / f"{stem}.mp4")


def test_dub_between_buckets_on_an_s3_server(
    synth_corpus: Path, checkpoint: str, bucket: str, ray_local, tmp_path: Path
) -> None:
    fs, _ = storage.filesystem(bucket)
    clips = _synthetic(synth_corpus, 2)
    relatives = [f"day1/{c.parent.name}_{c.name}" for c in clips]
    for clip, relative in zip(clips, relatives, strict=True):
        fs.put_file(str(clip), f"{bucket}/silent/{relative}")
    storage.write_bytes(f"{bucket}/silent/day1/corrupt.mp4", b"\x00" * 4096)
    reference = f"{bucket}/voices/someone.mp4"  # a voice to speak in, read from the bucket too
    fs.put_file(str(_synthetic(synth_corpus, 3)[2]), reference)
    src, dst = f"{bucket}/silent", f"{bucket}/dubbed"
    cfg = DubConfig(checkpoint=checkpoint, reference_audio=reference)

    summary = dub(src, dst, cfg)
    assert summary.done == 2 and [r.source for r in summary.failed] == ["day1/corrupt.mp4"]
    keys = {u.removeprefix(dst + "/") for u in storage.list_files(dst)}
    stems = [r.removesuffix(".mp4") for r in relatives]
    assert keys == (
        {f"{s}.{ext}" for s in stems for ext in ("mp4", "json")}
        | _ledger_names(relatives, "done")
        | _ledger_names(["day1/corrupt.mp4"], "failed")
    )
    for clip, stem in zip(clips, stems, strict=True):
        local = tmp_path / f"{Path(stem).name}.mp4"
        local.write_bytes(storage.read_bytes(f"{dst}/{stem}.mp4"))
        check_dubbed(clip, local)
        sidecar = json.loads(storage.read_bytes(f"{dst}/{stem}.json"))
        assert sidecar["source"] == f"{src}/{stem}.mp4" and sidecar["output"] == f"{dst}/{stem}.mp4"
        assert sidecar["voice"] == f"reference {reference}"
    before = {k: hashlib.sha1(storage.read_bytes(f"{dst}/{k}")).hexdigest() for k in keys}

    again = dub(src, dst, DubConfig(checkpoint=checkpoint))
    assert (again.done, again.failed, again.skipped_done, len(again.skipped_failed)) == (
        0,
        [],
        2,
        1,
    )
    assert {k: hashlib.sha1(storage.read_bytes(f"{dst}/{k}")).hexdigest() for k in keys} == before

    # Replaced sources: a done one re-uploaded with new content, and a good video uploaded under
    # the failed one's name. Both are dubbed again; the untouched one is not.
    time.sleep(1.1)  # the S3 server keeps modification times in whole seconds
    fs.put_file(str(clips[1]), f"{src}/{relatives[0]}")
    fs.put_file(str(clips[0]), f"{src}/day1/corrupt.mp4")
    replaced = dub(src, dst, DubConfig(checkpoint=checkpoint))
    assert (replaced.changed, replaced.done, replaced.failed, replaced.skipped_done) == (
        2,
        2,
        [],
        1,
    )
    local = tmp_path / "replaced.mp4"
    local.write_bytes(storage.read_bytes(f"{dst}/{stems[0]}.mp4"))
    check_dubbed(clips[1], local)  # the new content's video, with new speech
    assert read_ledger(dst)[1] == {}  # the failure record went with the success
    settled = dub(src, dst, DubConfig(checkpoint=checkpoint))
    assert (settled.changed, settled.done, settled.skipped_done) == (0, 0, 3)


def test_dub_with_given_speech_redraws_the_lips_and_waits_for_missing_speech(
    ray_local, real_speech: Path, tmp_path: Path
) -> None:
    import torch
    from conftest import GRID_S1

    from l2s.infer.checkpoint import LIPSYNC_FILE
    from l2s.models.lipgen import LipGenConfig, LipGenerator

    clips = sorted((GRID_S1 / "s1").glob("*.mp4"))[:2]
    if len(clips) < 2:
        pytest.skip(f"GRID s1 clips not found under {GRID_S1}")
    src, speech_dir = tmp_path / "src", tmp_path / "speech"
    (src / "take").mkdir(parents=True)
    (speech_dir / "take").mkdir(parents=True)
    shutil.copy(clips[0], src / "take" / "one.mp4")
    shutil.copy(clips[1], src / "two.mp4")
    shutil.copy(real_speech, speech_dir / "take" / "one.wav")
    generator = tmp_path / "lips" / "checkpoint_00000000"
    generator.mkdir(parents=True)
    cfg = LipGenConfig(width=4, audio_width=4)
    state = LipGenerator(cfg).state_dict()
    torch.save({"model": state, "model_config": cfg.to_dict()}, generator / LIPSYNC_FILE)
    (generator / "config.json").write_text(
        json.dumps({"progress": {"step": 0}, "model_config": cfg.to_dict(), "train_config": {}})
    )
    dst = tmp_path / "dubbed"
    given = DubConfig(speech_dir=str(speech_dir), lipsync=str(generator.parent))
    summary = dub(str(src), str(dst), given)
    assert summary.done == 1 and [(r.source, r.stage, r.retry) for r in summary.failed] == [
        ("two.mp4", "speech", True)
    ]
    assert "two{.wav" in summary.failed[0].reason
    out = dst / "take" / "one.mp4"
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert (
            abs(float(video.duration * video.time_base) - float(audio.duration * audio.time_base))
            < 0.05
        )
    sidecar = json.loads((dst / "take" / "one.json").read_text())
    assert sidecar["speech"].endswith("take/one.wav") and "lips re-drawn" in sidecar["video_stream"]
    # The speech arrives later: the next run does that video, and only it.
    shutil.copy(real_speech, speech_dir / "two.wav")
    again = dub(str(src), str(dst), given)
    assert (again.done, again.failed, again.skipped_done) == (1, [], 1)
    with pytest.raises(ValueError, match="go together"):
        DubConfig(speech_dir=str(speech_dir))
    with pytest.raises(ValueError, match="not both"):
        DubConfig(checkpoint="x", speech_dir=str(speech_dir), lipsync="y")
