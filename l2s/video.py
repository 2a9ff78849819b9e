"""Video: probe, decode at a fixed frame rate (by timestamps), write h264 + AAC, mux (PyAV / FFmpeg).

Frames are RGB uint8, shape frames_THWC. Decoding follows presentation timestamps, never
"frame index ÷ nominal fps": variable-frame-rate clips (phone footage, some fixtures) stay in sync.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import librosa
import numpy as np

from l2s import storage
from l2s.audio import load_audio
from l2s.config import AUDIO, VIDEO


class VideoError(ValueError):
    """A file is not a usable video; the message names the file and the problem."""


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float
    codec: str
    has_audio: bool


def _open(source: str | Path | BinaryIO) -> av.container.InputContainer:
    name = getattr(source, "name", source)
    if isinstance(source, str | Path) and os.path.exists(source) and os.path.getsize(source) == 0:
        raise VideoError(f"{name}: file is empty (0 bytes)")
    try:
        return av.open(str(source) if isinstance(source, Path) else source)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{name}: cannot open as a video ({e})") from e


def _video_stream(container: av.container.InputContainer, name: object) -> av.video.VideoStream:
    """The first video stream, if FFmpeg has a decoder for it."""
    if not container.streams.video:
        raise VideoError(f"{name}: no video stream")
    stream = container.streams.video[0]
    # A stream whose codec FFmpeg does not know has no codec context; decoding it crashes
    # the process (a segfault, not an exception), so it must be refused before any decode.
    if stream.codec_context is None:
        raise VideoError(f"{name}: unsupported video codec (FFmpeg has no decoder for it)")
    return stream


def probe(source: str | Path | BinaryIO) -> VideoInfo:
    name = getattr(source, "name", source)
    with _open(source) as container:
        stream = _video_stream(container, name)
        rate = stream.average_rate or stream.base_rate or Fraction(0)
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            duration=_stated_seconds(container, stream),
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
        )


def _stated_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The duration the file states for `stream` (else for the whole container; 0 if neither)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) with the long side brought down to `max_side` (never up; None: as is)."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def iter_frames(
    source: str | Path | BinaryIO,
    fps: int = VIDEO.fps,
    gray: bool = False,
    max_side: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> Iterator[np.ndarray]:
    """Yield frames resampled to `fps`: output frame k shows the source frame nearest to
    start + k / fps (seconds from the first frame), for round(duration · fps) frames when a
    `duration` is given (fewer where the video ends sooner), else to the end.

    `max_side` downscales (area average) frames whose long side is larger, inside FFmpeg's scaler
    as each frame is converted to RGB: half the CPU of converting at full size and resizing after
    (0.17 against 0.36 CPU-s for 3 s of 844² h264; `benchmarks/serve.py` prints it). A source
    frame is converted only when it is shown, so frames the resampling drops, and frames before
    `start`, cost no conversion (they are still decoded: no seek, so a segment shows exactly the
    frames the whole clip shows at its times). Streams (constant memory), so hour-long inputs are
    fine for callers that consume lazily.
    """
    name = getattr(source, "name", source)
    fmt = "gray" if gray else "rgb24"
    size: tuple[int, int] | None = None  # fixed by the first frame, so every frame has one size
    wanted = None if duration is None else round(duration * fps)

    def convert(frame: av.VideoFrame) -> np.ndarray:
        nonlocal size
        size = size or scaled_size(frame.width, frame.height, max_side)
        image = frame.to_ndarray(format=fmt, width=size[0], height=size[1], interpolation="AREA")
        # PyAV may return rows padded for alignment; dlib and cv2 need contiguous arrays.
        return np.ascontiguousarray(image)

    with _open(source) as container:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        step = 1.0 / fps
        first_time: float | None = None
        previous: tuple[float, av.VideoFrame] | None = None
        shown: np.ndarray | None = None  # `previous`, converted once it is first shown
        k = 0
        frame_gap = 1.0 / float(stream.average_rate or fps)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if first_time is None:
                    first_time = frame.time
                t = frame.time - first_time
                if previous is not None:
                    frame_gap = max(t - previous[0], 1e-6)
                    while start + k * step < (previous[0] + t) / 2:
                        if k == wanted:
                            return
                        shown = convert(previous[1]) if shown is None else shown
                        yield shown
                        k += 1
                previous, shown = (t, frame), None
        except av.error.FFmpegError as e:
            raise VideoError(f"{name}: video decode failed at {start + k / fps:.2f} s ({e})") from e
        if previous is None:
            raise VideoError(f"{name}: video stream has no decodable frames")
        end = previous[0] + frame_gap
        while start + k * step < end - step / 2 and k != wanted:
            shown = convert(previous[1]) if shown is None else shown
            yield shown
            k += 1


def read_frames(
    source: str | Path | BinaryIO, fps: int = VIDEO.fps, gray: bool = False
) -> np.ndarray:
    """All frames at `fps` as frames_THWC (or frames_THW when gray)."""
    frames = list(iter_frames(source, fps=fps, gray=gray))
    return np.stack(frames)


def write_video(
    path: str | Path,
    frames_THWC: np.ndarray,
    fps: int = VIDEO.fps,
    audio_S: np.ndarray | None = None,
    sample_rate: int = AUDIO.sample_rate,
    crf: int = 20,
) -> None:
    """Write an h264 (yuv420p) mp4, with an AAC mono track when `audio_S` is given.

    Bit-exact flags make the same input give the same bytes (the synthetic corpus relies on it).
    Written to a temporary name first, so a complete file or none stands at `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    height, width = frames_THWC.shape[1:3]
    with av.open(str(tmp), mode="w", format="mp4", options={"fflags": "+bitexact"}) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        video.codec_context.flags |= av.codec.context.Flags.bitexact
        audio = None
        if audio_S is not None:
            audio = out.add_stream("aac", rate=sample_rate, layout="mono")
            audio.codec_context.flags |= av.codec.context.Flags.bitexact
        for image in frames_THWC:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            samples = np.clip(np.asarray(audio_S, dtype=np.float32), -1, 1)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = 0
            out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    os.replace(tmp, path)


# Dubbed tracks are AAC at 48 kHz, the rate of video production; AAC's frame of 1024 samples is
# then 21 ms, under one video frame, so the audio never outlasts the video by a frame.
MUX_SAMPLE_RATE = 48000


def mux_audio(
    video: str, speech: str | np.ndarray, out: str, sample_rate: int = AUDIO.sample_rate
) -> None:
    """`video`'s first video stream, copied packet for packet (not re-encoded), with `speech` (a
    wav file, or samples at `sample_rate`) as the only audio track (AAC, mono) → an mp4 at `out`
    (local or s3://), written whole or not at all.

    The audio starts at the first video frame (speech sample 0 belongs to that frame) and is cut,
    or padded with silence, to the duration the video stream states, so both streams end together.
    """
    if isinstance(speech, np.ndarray):
        speech_S = librosa.resample(
            speech.astype(np.float32), orig_sr=sample_rate, target_sr=MUX_SAMPLE_RATE
        )
    else:
        speech_S = load_audio(speech, MUX_SAMPLE_RATE)
    with _open(video) as source:
        stream_in = _video_stream(source, video)
        start = float(stream_in.start_time * stream_in.time_base) if stream_in.start_time else 0.0
        n_samples = round(_stated_seconds(source, stream_in) * MUX_SAMPLE_RATE)
        if n_samples:
            speech_S = np.pad(speech_S[:n_samples], (0, max(0, n_samples - len(speech_S))))
        codec = stream_in.codec_context.name
        frame_ticks = round(1 / float(stream_in.average_rate or VIDEO.fps) / stream_in.time_base)
        try:
            with storage.atomic_write(out) as f, av.open(f, mode="w", format="mp4") as dest:
                stream_out = dest.add_stream_from_template(stream_in)
                audio_packets = deque(_aac_packets(dest, speech_S, start))
                for packet in _timed(source.demux(stream_in), frame_ticks):
                    # Interleaved by time, as players read them.
                    while audio_packets and _seconds(audio_packets[0]) <= _seconds(packet):
                        dest.mux(audio_packets.popleft())
                    packet.stream = stream_out
                    dest.mux(packet)
                dest.mux(list(audio_packets))
        except (av.error.FFmpegError, ValueError) as e:  # ValueError: a codec mp4 cannot hold
            raise VideoError(f"{video}: cannot copy its {codec} video into an mp4 ({e})") from e


def _timed(packets: Iterator[av.Packet], frame_ticks: int) -> Iterator[av.Packet]:
    """The demuxed packets with the timing mp4 needs, which Matroska and WebM often leave out:
    a duration on every packet (else the copied stream ends a frame early), and a decoding time
    on the leading packets of a stream with B-frames (counted back, a frame each, from the first
    packet that has one). The demuxer's empty end-of-stream packet is dropped."""
    held: list[av.Packet] = []
    for packet in packets:
        if not packet.size:
            continue
        packet.duration = packet.duration or frame_ticks
        if packet.dts is None:
            held.append(packet)
            continue
        for k, early in enumerate(held):
            early.dts = packet.dts - (len(held) - k) * frame_ticks
        yield from held
        held = []
        yield packet
    for early in held:  # no decoding time anywhere: no B-frames, so it is the presentation time
        early.dts = early.pts
    yield from held


def _aac_packets(
    dest: av.container.OutputContainer, speech_S: np.ndarray, start: float
) -> list[av.Packet]:
    audio = dest.add_stream("aac", rate=MUX_SAMPLE_RATE, layout="mono")
    frame = av.AudioFrame.from_ndarray(
        np.clip(speech_S, -1, 1).astype(np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = MUX_SAMPLE_RATE
    frame.pts = round(start * MUX_SAMPLE_RATE)
    return [*audio.encode(frame), *audio.encode(None)]


def _seconds(packet: av.Packet) -> float:
    return float(packet.dts * packet.time_base)
