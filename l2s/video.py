"""Video: probe, decode at a fixed frame rate (by timestamps), write h264 + AAC, mux new audio in
(PyAV / FFmpeg).

Frames are RGB uint8, shape frames_THWC. Decoding follows presentation timestamps, never
"frame index ÷ nominal fps": variable-frame-rate clips (phone footage, some fixtures) stay in sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from l2s import storage
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
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        return VideoInfo(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate),
            duration=duration,
            codec=stream.codec_context.name,
            has_audio=bool(container.streams.audio),
        )


def iter_frames(
    source: str | Path | BinaryIO, fps: int = VIDEO.fps, gray: bool = False
) -> Iterator[np.ndarray]:
    """Yield frames resampled to `fps`: output frame k shows the source frame nearest to k / fps.

    Streams (constant memory), so hour-long inputs are fine for callers that consume lazily.
    """
    name = getattr(source, "name", source)
    fmt = "gray" if gray else "rgb24"
    with _open(source) as container:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        step = 1.0 / fps
        first_time: float | None = None
        previous: tuple[float, np.ndarray] | None = None
        k = 0
        frame_gap = 1.0 / float(stream.average_rate or fps)
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                if first_time is None:
                    first_time = frame.time
                t = frame.time - first_time
                # PyAV may return rows padded for alignment; dlib and cv2 need contiguous arrays.
                image = np.ascontiguousarray(frame.to_ndarray(format=fmt))
                if previous is not None:
                    frame_gap = max(t - previous[0], 1e-6)
                    while k * step < (previous[0] + t) / 2:
                        yield previous[1]
                        k += 1
                previous = (t, image)
        except av.error.FFmpegError as e:
            raise VideoError(f"{name}: video decode failed at {k / fps:.2f} s ({e})") from e
        if previous is None:
            raise VideoError(f"{name}: video stream has no decodable frames")
        end = previous[0] + frame_gap
        while k * step < end - step / 2:
            yield previous[1]
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
        audio = None if audio_S is None else _aac_stream(out, sample_rate)
        for image in frames_THWC:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            _encode_audio(out, audio, audio_S, sample_rate)
    os.replace(tmp, path)


def _aac_stream(out: av.container.OutputContainer, sample_rate: int) -> av.audio.AudioStream:
    audio = out.add_stream("aac", rate=sample_rate, layout="mono")
    audio.codec_context.flags |= av.codec.context.Flags.bitexact
    return audio


def _encode_audio(
    out: av.container.OutputContainer,
    stream: av.audio.AudioStream,
    audio_S: np.ndarray,
    sample_rate: int,
) -> None:
    """Encode a whole mono signal from time 0 (PyAV cuts it into codec frames) and flush."""
    samples = np.clip(np.asarray(audio_S, dtype=np.float32), -1, 1)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def mux_audio(
    video_in: str | Path,
    audio_S: np.ndarray,
    out: str,
    sample_rate: int = AUDIO.sample_rate,
) -> None:
    """`video_in` with `audio_S` as its only audio track, as an mp4 at `out` (local or s3://).

    The video stream is copied packet for packet, never re-encoded: no quality is lost and it
    costs no decoding. The audio (AAC, mono) is cut or padded with silence to the video stream's
    duration, so the two streams end together. Other streams of the input (its own audio,
    subtitles) are left out. Written whole or not at all (`storage.atomic_write`).
    """
    name = str(video_in)
    seconds = _video_seconds(video_in)
    n_samples = round(seconds * sample_rate)
    audio_S = np.asarray(audio_S, dtype=np.float32)[:n_samples]
    audio_S = np.pad(audio_S, (0, n_samples - len(audio_S)))
    with _open(video_in) as source, storage.atomic_write(out) as f:
        video_in_stream = _video_stream(source, name)
        try:
            with av.open(f, mode="w", format="mp4") as container:
                video = container.add_stream_from_template(video_in_stream)
                audio = _aac_stream(container, sample_rate)
                # The audio goes first: the muxer holds packets back to interleave them by time,
                # and holding the (small) audio costs far less memory than holding the video.
                _encode_audio(container, audio, audio_S, sample_rate)
                for packet in source.demux(video_in_stream):
                    if packet.size == 0:  # the demuxer's empty flush packet
                        continue
                    packet.stream = video
                    container.mux(packet)
        except (av.error.FFmpegError, ValueError) as e:
            codec = video_in_stream.codec_context.name
            raise VideoError(f"{name}: cannot copy its {codec} video stream into mp4 ({e})") from e


def _video_seconds(source: str | Path) -> float:
    """Duration of the first video stream: as the container states it, else from its packets
    (live-recorded WebM states none)."""
    name = str(source)
    with _open(source) as container:
        stream = _video_stream(container, name)
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        start, end = None, None
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            start = packet.pts if start is None else min(start, packet.pts)
            end = max(end or packet.pts, packet.pts + (packet.duration or 0))
        if start is None or stream.time_base is None:
            raise VideoError(f"{name}: video stream has no packets")
        return float((end - start) * stream.time_base)
