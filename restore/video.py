"""Video files as inputs: frames decoded with PyAV (FFmpeg) and restored one by one into an image sequence.

A frame's index is its position in presentation order, found from the packets' timestamps without decoding, so a
worker can decode just a chunk of frames: seek to the keyframe before the chunk, decode forward, keep the chunk.
Frames decode to RGB: 8-bit (rgb24) for 8-bit sources, 16-bit (rgb48) for deeper ones.

Each restored frame is written as one PNG or TIFF (through frames.encode_frame), which keeps the pixels the
restorer did not change exactly as decoded: no lossy re-encoding of the video can touch them.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from .frames import FrameError

@dataclass(frozen=True)
class VideoInfo:
    frames: int  # video frames in the file, counted from its packets
    fps: Fraction  # average frame rate
    codec: str  # decoder name: "h264", "ffv1", "mpeg4", ...
    width: int
    height: int
    bit_depth: int  # 8 or 16: the depth the frames decode to
    time_base: Fraction
    pts: tuple[int, ...]  # presentation timestamps in order; frame i has pts[i]


@dataclass
class VideoFrame:
    index: int  # position in presentation order, from 0
    pts: int | None
    pixels: np.ndarray  # (H, W, 3) uint8 or uint16, RGB


def _open(source: bytes | str | Path):
    import av

    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise FrameError(f"not a readable video ({error})") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({stream.type for stream in container.streams})) or "no streams"
        container.close()
        raise FrameError(f"no video stream in this file (it holds {kinds})")
    return container


def probe_video(source: bytes | str | Path) -> VideoInfo:
    """Frame count, rate, codec and timestamps of the first video stream: demuxing only, no decoding."""
    import av

    with _open(source) as container:
        stream = container.streams.video[0]
        try:
            pts = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None and packet.size)
        except av.FFmpegError as error:
            raise FrameError(f"corrupt or truncated video ({error})") from None
        if not pts:
            raise FrameError("no video frames found: the file is empty or truncated")
        _check_complete(stream, pts)
        context = stream.codec_context
        bits = av.VideoFormat(context.pix_fmt).components[0].bits if context.pix_fmt else 8
        return VideoInfo(frames=len(pts), fps=Fraction(stream.average_rate or stream.guessed_rate or 0),
                         codec=context.name, width=context.width, height=context.height,
                         bit_depth=8 if bits <= 8 else 16, time_base=Fraction(stream.time_base), pts=tuple(pts))


def _declared_end(stream) -> float | None:
    """Seconds at which the header says the video stream ends: its duration (MP4, MOV, AVI), or the DURATION tag
    Matroska muxers write per track; None where it says neither (the file's own duration may be an audio track's)."""
    if stream.duration:
        return float((stream.start_time or 0) * stream.time_base + stream.duration * stream.time_base)
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", (stream.metadata or {}).get("DURATION", "").strip())
    return int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3]) if match else None


def _check_complete(stream, pts: list[int]) -> None:
    """Refuse a video whose frames stop well before its header says they do: a file still being copied, or cut
    short. Read as it is, it would be restored as a shorter reel and recorded as done."""
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    promised = stream.frames or 0  # the index's frame count, where the container has one
    if promised and len(pts) < promised - max(2, promised // 100):
        raise FrameError(f"truncated video: its header promises {promised} frames, {len(pts)} found; a copy still "
                         "being written, or cut short. A complete copy replaces it (to restore the frames it holds, "
                         "re-mux it first, e.g. ffmpeg -i IN -c copy OUT)")
    end = _declared_end(stream)
    if end and fps:
        last = float(pts[-1] * stream.time_base) + 1 / fps  # the end of its last frame
        if last < end - max(2 / fps, end / 100):
            raise FrameError(f"truncated video: its header says it runs to {end:.2f} s, its frames stop at "
                             f"{last:.2f} s; a copy still being written, or cut short. A complete copy replaces it "
                             "(to restore the frames it holds, re-mux it first, e.g. ffmpeg -i IN -c copy OUT)")


def iter_video_frames(source: bytes | str | Path, start: int = 0, stop: int | None = None,
                      info: VideoInfo | None = None) -> Iterator[VideoFrame]:
    """Frames `start` to `stop` (exclusive) in order; seeks to the keyframe before `start` rather than decoding all.

    Pass the `info` from probe_video to save a second demux of the file.
    """
    import av

    info = info or probe_video(source)
    stop = info.frames if stop is None else min(stop, info.frames)
    if start >= stop:
        return
    index_of = {pts: index for index, pts in enumerate(info.pts)}
    rgb = "rgb24" if info.bit_depth == 8 else "rgb48le"
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(info.pts[start], stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                index = index_of.get(frame.pts)
                if index is None or index < start:
                    continue
                if index >= stop:
                    break
                yield VideoFrame(index=index, pts=frame.pts, pixels=frame.to_ndarray(format=rgb))
        except av.FFmpegError as error:
            raise FrameError(f"corrupt or truncated video ({error})") from None
