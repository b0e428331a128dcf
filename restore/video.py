"""Video files as inputs: frames decoded with PyAV (FFmpeg), restored one by one, and re-encoded losslessly.

A frame's index is its position in presentation order, found from the packets' timestamps without decoding, so a
worker can decode just a chunk of frames: seek to the keyframe before the chunk, decode forward, keep the chunk.
Frames decode to RGB: 8-bit (rgb24) for 8-bit sources, 16-bit (rgb48) for deeper ones.

Re-encoding keeps the pixels the restorer did not change exactly as decoded, so it must be lossless in RGB:
H.264 inputs become lossless H.264 RGB (libx264rgb, qp 0), everything else FFV1, the archival lossless codec.
A lossy family (MPEG-4, ProRes, MJPEG) is never re-encoded lossily. The container is Matroska, the one that carries
arbitrary tags, where the provenance goes; it is muxed bit-exact (no random ids, no dates), so reruns are
byte-identical. An image sequence (one PNG or TIFF per frame, through frames.encode_frame) is the other output.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .frames import FrameError

# Lossless encoders by input codec family: (encoder, pixel format for 8-bit, for 16-bit, options).
_LOSSLESS = {"h264": ("libx264rgb", "rgb24", None, {"qp": "0", "preset": "veryfast"})}
_FFV1 = ("ffv1", "bgr0", "gbrp16le", {"level": "3"})


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
        context = stream.codec_context
        bits = av.VideoFormat(context.pix_fmt).components[0].bits if context.pix_fmt else 8
        return VideoInfo(frames=len(pts), fps=Fraction(stream.average_rate or stream.guessed_rate or 0),
                         codec=context.name, width=context.width, height=context.height,
                         bit_depth=8 if bits <= 8 else 16, time_base=Fraction(stream.time_base), pts=tuple(pts))


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


def encode_video(frames: Iterable[VideoFrame], info: VideoInfo, text: dict[str, str] | None = None) -> bytes:
    """Matroska with the frames (in the order given, at their own timestamps) losslessly encoded, and `text` as tags."""
    import av

    encoder, pix_fmt8, pix_fmt16, options = _LOSSLESS.get(info.codec, _FFV1)
    if info.bit_depth == 16 and pix_fmt16 is None:
        encoder, pix_fmt8, pix_fmt16, options = _FFV1
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska", options={"fflags": "+bitexact"}) as container:
        for key in sorted(text or {}):
            container.metadata[key] = text[key]
        stream = container.add_stream(encoder, rate=info.fps)
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = pix_fmt8 if info.bit_depth == 8 else pix_fmt16
        stream.time_base = info.time_base
        stream.options = dict(options)
        count = 0
        for frame in frames:
            if frame.pixels.shape != (info.height, info.width, 3):
                raise FrameError(f"frame {frame.index} is {frame.pixels.shape}, the video is {info.width}x{info.height}")
            picture = av.VideoFrame.from_ndarray(frame.pixels, format="rgb24" if info.bit_depth == 8 else "rgb48le")
            picture.pts, picture.time_base = frame.pts, info.time_base
            container.mux(stream.encode(picture))
            count += 1
        container.mux(stream.encode())
    if not count:
        raise FrameError("no frames to encode")
    return buffer.getvalue()


def read_video_provenance(source: bytes | str | Path) -> dict[str, str] | None:
    """The container tags written by encode_video, under their own names (Matroska stores tag names upper-case)."""
    with _open(source) as container:
        tags = {key.lower(): value for key, value in container.metadata.items()}
    text = {name: tags[name.lower()] for name in ("Software", "restore:provenance") if name.lower() in tags}
    return text or None
