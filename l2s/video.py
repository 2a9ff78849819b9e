"""Video: probe, decode at a fixed frame rate (by timestamps), write h264 + AAC, mux (PyAV / FFmpeg).

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


def probe(source: str | Path | BinaryIO) -> VideoInfo:
    name = getattr(source, "name", source)
    with _open(source) as container:
        if not container.streams.video:
            raise VideoError(f"{name}: no video stream")
        stream = container.streams.video[0]
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
        if not container.streams.video:
            raise VideoError(f"{name}: no video stream")
        stream = container.streams.video[0]
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
