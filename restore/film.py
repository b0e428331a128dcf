"""DPX and OpenEXR film scans, read and written with OpenImageIO (the optional extra: pip install 'restore[film]').

Restorers work on integer images in the domain the model was trained in: display-referred pictures. Film scans are
log code values (DPX, Cineon printing density) or scene-linear floats (EXR). So a film frame holds two arrays:
  source  the samples exactly as stored: DPX code values (uint16, 0 .. 2**bits - 1) or EXR half/float;
  pixels  a uint16 display view of them, what the restorer sees: log or linear → linear light → the sRGB curve up
          to diffuse white, then a logarithmic shoulder that keeps highlights up to 2**SHOULDER_STOPS.
On encode, a view value the restorer left unchanged takes its source sample back; only changed values (inside the
mask) are converted back from the view. Unmasked pixels therefore round-trip bit-exactly, whatever the curve
rounds. A DPX whose transfer is neither log nor linear (video, user-defined) is already display-referred: its view
is the code value scaled to 16 bits.

Header metadata (timecode, frame position, key code, film and TV fields, user data, EXR attributes) is carried
in `header` and written back; provenance goes into `Software` plus the DPX user-data block or an EXR string
attribute. OpenImageIO reads and writes files only, so the bytes pass through a temporary file; the DPX header's
file-name field, where the writer puts that file's path, gets the input's back, so outputs are deterministic.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .frames import PROVENANCE_KEY, Frame, FrameError, check_pixel_limit

DPX_MAGIC = (b"SDPX", b"XPDS")  # big- and little-endian
EXR_MAGIC = b"v/1\x01"
# SMPTE 268M user data opens with a 32-byte user identification; ours marks the block as provenance.
USER_DATA_ID = PROVENANCE_KEY.encode().ljust(32, b"\0")
# Cineon printing density: 0.002 density per 10-bit code, negative gamma 0.6, reference black 95, white 685.
CINEON_BLACK, CINEON_WHITE, CINEON_SCALE = 95, 685, 0.002 / 0.6
VIEW_WHITE = 0.9  # view value of linear 1.0 (diffuse white); the rest of the range is the highlight shoulder
LOG_TOE = 0.02  # of the view of a log scan, below reference black: its codes under 95 (shadows, base, grain)
SHOULDER_STOPS = 6  # the shoulder holds highlights up to 2**6 = 64 times diffuse white; brighter clips (in the view)
# EXR compressions that lose nothing; any other (b44, dwaa, ...) is written as zip, since a lossy re-encode would
# change pixels outside the mask. pxr24 is lossless for half only.
LOSSLESS_EXR = ("none", "rle", "zips", "zip", "piz")
_DPX_NAME = slice(36, 136)  # the file header's image file name field (100 bytes)
_PIXEL_TYPES = {"uint16": "uint16", "float16": "half", "float32": "float"}  # numpy dtype → OpenImageIO type
# Attributes that describe the file layout or that we write ourselves: never copied from the input.
_SKIPPED = ("Software", PROVENANCE_KEY, "dpx:UserData", "compression", "dpx:EndOfLinePadding",
            "dpx:EndOfImagePadding", "openexr:chunkCount")


@dataclass
class FilmFrame(Frame):
    """A Frame whose `pixels` are a display view of `source`; `header` is what the writer needs to reproduce it."""

    source: np.ndarray | None = None  # (H, W, channels incl. alpha) as stored
    header: dict = field(default_factory=dict)  # bits, dtype, transfer, channels, compression, user data, attributes

    @property
    def bit_depth(self) -> int:
        return self.header["bits"]

    def columns(self) -> dict:
        """What a film frame adds to the pipeline's row: the header as JSON and the source samples as bytes."""
        return {"film_header": json.dumps(self.header, sort_keys=True), "film_source": self.source.tobytes()}

    @classmethod
    def from_columns(cls, frame: Frame, film_header: str, film_source: bytes) -> "FilmFrame":
        """Rebuild a film frame from a plain Frame (as a pipeline row carries it) and its two film columns."""
        header = json.loads(film_header)
        height, width = frame.pixels.shape[:2]
        source = np.frombuffer(film_source, np.dtype(header["dtype"])).reshape(height, width, len(header["channels"]))
        return cls(pixels=frame.pixels, alpha=frame.alpha, format=frame.format, mode=frame.mode, icc_profile=None,
                   exif=None, dpi=None, source=source, header=header)


def is_film(data: bytes) -> bool:
    return data[:4] in DPX_MAGIC or data[:4] == EXR_MAGIC


def _oiio():
    try:
        import OpenImageIO
    except ImportError:
        raise FrameError("DPX and EXR need OpenImageIO: install the film extra, pip install 'restore[film]'") from None
    return OpenImageIO


# ---------------------------------------------------------------------------------------------------- views

def _linear_to_view(linear: np.ndarray) -> np.ndarray:
    """Scene-linear light to the uint16 display view: sRGB curve to 1.0, log shoulder above; NaN and negatives → 0."""
    top = 2.0 ** SHOULDER_STOPS
    linear = np.clip(np.nan_to_num(linear.astype(np.float64), nan=0.0, posinf=top, neginf=0.0), 0.0, top)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    shoulder = VIEW_WHITE + (1 - VIEW_WHITE) * np.log2(np.maximum(linear, 1.0)) / SHOULDER_STOPS
    return np.round(np.where(linear <= 1.0, VIEW_WHITE * srgb, shoulder) * 65535).astype(np.uint16)


def _view_to_linear(view: np.ndarray) -> np.ndarray:
    value = view.astype(np.float64) / 65535
    srgb = np.minimum(value / VIEW_WHITE, 1.0)
    low = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    high = 2.0 ** ((np.maximum(value, VIEW_WHITE) - VIEW_WHITE) / (1 - VIEW_WHITE) * SHOULDER_STOPS)
    return np.where(value <= VIEW_WHITE, low, high)


def _cineon_black() -> float:
    return 10 ** ((CINEON_BLACK - CINEON_WHITE) * CINEON_SCALE)


def _log_to_linear(code10: np.ndarray) -> np.ndarray:
    black = _cineon_black()
    return (10 ** ((code10 - CINEON_WHITE) * CINEON_SCALE) - black) / (1 - black)


def _linear_to_log(linear: np.ndarray) -> np.ndarray:
    black = _cineon_black()
    return CINEON_WHITE + np.log10(np.maximum(linear * (1 - black) + black, 1e-12)) / CINEON_SCALE


def _log_floor() -> float:
    """The light of code 0: negative, as every code under reference black is."""
    return float(_log_to_linear(np.float64(0.0)))


def _log_linear_to_view(linear: np.ndarray) -> np.ndarray:
    """A log scan's light to the view: from reference black up as any other, and the negative light of the codes
    under it onto the view's first LOG_TOE, so a fill in deep shadows can reach them."""
    above = _linear_to_view(linear).astype(np.float64) / 65535
    value = np.where(linear >= 0, LOG_TOE + (1 - LOG_TOE) * above, LOG_TOE * (1 - linear / _log_floor()))
    return np.round(np.clip(value, 0, 1) * 65535).astype(np.uint16)


def _view_to_log_linear(view: np.ndarray) -> np.ndarray:
    value = view.astype(np.float64) / 65535
    above = _view_to_linear(np.maximum(value - LOG_TOE, 0) / (1 - LOG_TOE) * 65535)
    return np.where(value >= LOG_TOE, above, _log_floor() * (1 - value / LOG_TOE))


def to_view(samples: np.ndarray, header: dict) -> np.ndarray:
    """Source samples (colour channels) → the uint16 view the restorer works on. Integer samples are looked up in
    a table of every code's view: a frame is taken to its view several times (to mask, restore, write and picture
    it), and the curves below cost seconds per frame in float64 on a 24-megapixel scan."""
    if samples.dtype == np.uint16:
        return _view_table(header["bits"], header["transfer"], header["dtype"])[samples]
    return _computed_view(samples, header)


@functools.cache
def _view_table(bits: int, transfer: str, dtype: str) -> np.ndarray:
    """`_computed_view` of every uint16 code, for a header's curve."""
    return _computed_view(np.arange(65536, dtype=np.uint16), {"bits": bits, "transfer": transfer, "dtype": dtype})


def _computed_view(samples: np.ndarray, header: dict) -> np.ndarray:
    top = 2 ** header["bits"] - 1
    transfer = header["transfer"]
    if transfer == "display":
        return np.round(samples.astype(np.float64) * (65535 / top)).astype(np.uint16)
    if transfer == "log":
        return _log_linear_to_view(_log_to_linear(samples.astype(np.float64) * (1023 / top)))
    if header["dtype"] == "uint16":  # linear DPX
        return _linear_to_view(samples.astype(np.float64) / top)
    return _linear_to_view(samples)  # EXR


def from_view(view: np.ndarray, header: dict) -> np.ndarray:
    """The inverse of to_view, for the values a restorer changed; exact only where the curve is one-to-one."""
    transfer = header["transfer"]
    if header["dtype"] != "uint16":  # EXR
        return _view_to_linear(view).astype(header["dtype"])
    top = 2 ** header["bits"] - 1
    if transfer == "display":
        codes = view.astype(np.float64) * (top / 65535)
    elif transfer == "log":
        codes = _linear_to_log(_view_to_log_linear(view)) * (top / 1023)
    else:
        codes = _view_to_linear(view) * top
    return np.clip(np.round(codes), 0, top).astype(np.uint16)


def restore_codes(codes: np.ndarray, before: np.ndarray, after: np.ndarray, header: dict) -> np.ndarray:
    """`codes` with the changes a restorer made to their view (`before`, `to_view(codes)`, became `after`):
    unchanged view values keep their exact code."""
    changed = after != before
    out = codes.copy()
    out[changed] = from_view(after[changed], header)
    return out


def composite(frame: FilmFrame, pixels: np.ndarray) -> np.ndarray:
    """Source samples with the restorer's changes: unchanged view values keep their exact source sample."""
    colours = pixels.shape[2]
    samples = frame.source.copy()
    original = frame.source[..., :colours]
    samples[..., :colours] = restore_codes(original, to_view(original, frame.header), pixels, frame.header)
    return samples


# A log scan in a 16-bit PNG or TIFF (a job's `transfer: log`): printing density codes scaled to 16 bits.
LOG_SCAN = {"bits": 16, "transfer": "log", "dtype": "uint16"}


# ---------------------------------------------------------------------------------------------------- decode

@contextmanager
def _opened(data: bytes):
    """An OpenImageIO ImageInput on the bytes (through a temporary file), and the kind, "DPX" or "EXR"."""
    oiio = _oiio()
    kind = "DPX" if data[:4] in DPX_MAGIC else "EXR"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"frame.{kind.lower()}")
        with open(path, "wb") as file:
            file.write(data)
        image = oiio.ImageInput.open(path)
        if image is None:
            raise FrameError(f"corrupt, truncated or unsupported {kind} ({_oiio_error(oiio.geterror())})")
        try:
            yield image, kind
        finally:
            image.close()


def decode_film(data: bytes, max_pixels: int) -> FilmFrame:
    """A DPX or EXR file's bytes → a FilmFrame; raises FrameError with the reason for anything it cannot hold."""
    with _opened(data) as (image, kind):
        spec = image.spec()
        _check_layout(kind, spec, max_pixels)
        pixel_type = "uint16" if kind == "DPX" else str(spec.format)
        raw = image.read_image(pixel_type)
        error = image.geterror()
        if raw is None or error:
            raise FrameError(f"corrupt or truncated {kind} ({_oiio_error(error)})")
    raw = raw.reshape(spec.height, spec.width, spec.nchannels)
    attributes = {a.name: a.value for a in spec.extra_attribs}
    if kind == "DPX":
        bits = int(attributes.get("oiio:BitsPerSample", 16))
        source = raw >> (16 - bits)  # OpenImageIO widens b-bit codes to 16 bits by replicating the top bits
        transfer = {"Printing density": "log", "Logarithmic": "log", "Linear": "linear"}.get(
            attributes.get("dpx:Transfer"), "display")
    else:
        bits, source, transfer = (16 if pixel_type == "half" else 32), raw, "linear"
    channels = list(spec.channelnames)
    user_data = attributes.get("dpx:UserData")
    header = {
        "format": kind, "bits": bits, "dtype": str(source.dtype), "transfer": transfer, "channels": channels,
        "compression": attributes.get("compression"),
        "file_name": data[_DPX_NAME].hex() if kind == "DPX" else None,
        "big_endian": kind == "DPX" and data[:4] == b"SDPX",  # many scanners write big-endian DPX: the output keeps it
        "user_data": None if user_data is None else bytes(np.asarray(user_data, np.uint8)).hex(),
        "attributes": [[a.name, str(a.type), _plain(a.value)] for a in spec.extra_attribs
                       if not a.name.startswith("oiio:") and a.name not in _SKIPPED],
    }
    colours = 1 if len(channels) <= 2 else 3
    alpha = None
    if len(channels) in (2, 4):  # carried untouched in `source`; this view of it is for previews and masks
        alpha = _alpha_view(source[..., colours], header)
    mode = ("L" if colours == 1 else "RGB") + ("A" if alpha is not None else "") + f";{bits if kind == 'DPX' else pixel_type}"
    return FilmFrame(pixels=np.ascontiguousarray(to_view(source[..., :colours], header)), alpha=alpha, format=kind,
                     mode=mode, icc_profile=None, exif=None, dpi=None, source=np.ascontiguousarray(source),
                     header=header)


def _alpha_view(alpha: np.ndarray, header: dict) -> np.ndarray:
    """Coverage as uint16: DPX codes scaled to 16 bits, EXR 0..1 floats scaled to 0..65535."""
    if header["format"] == "DPX":
        return to_view(alpha, {**header, "transfer": "display"})
    return np.round(np.clip(np.nan_to_num(alpha.astype(np.float64)), 0, 1) * 65535).astype(np.uint16)


def _check_layout(kind: str, spec, max_pixels: int) -> None:
    check_pixel_limit(spec.width, spec.height, max_pixels)
    images = spec.get_int_attribute("oiio:subimages", 1)
    if images > 1:
        raise FrameError(f"{kind} with {images} images (parts or elements): only single-image files are supported")
    names = tuple(spec.channelnames)
    if not (names in (("R", "G", "B"), ("R", "G", "B", "A")) or len(names) == 1 or (len(names) == 2 and names[1] == "A")):
        raise FrameError(f"{kind} with channels {', '.join(names)}: only R,G,B[,A] or one channel [+A] are supported")
    if kind == "EXR" and str(spec.format) not in ("half", "float"):
        raise FrameError(f"EXR samples of type {spec.format} are not supported (half or float)")


def _oiio_error(message: str) -> str:
    """OpenImageIO's message without the temporary file's path."""
    return " ".join(line.split("): ", 1)[-1] for line in message.strip().splitlines()[:2]) or "unreadable header"


def _plain(value):
    """An attribute value as JSON: tuples and arrays become lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------------- encode

def encode_film(frame: Frame, pixels: np.ndarray, fmt: str, text: dict[str, str] | None = None) -> bytes:
    """Write restored view `pixels` back into the frame's own format, with its header and the provenance `text`."""
    if not isinstance(frame, FilmFrame) or frame.header["format"] != fmt.upper():
        raise FrameError(f"{fmt} output needs a {fmt.upper()} input (this frame is {frame.format}): "
                         "write it as png or tiff")
    oiio = _oiio()
    header = frame.header
    samples = composite(frame, pixels)
    height, width, channels = samples.shape
    spec = oiio.ImageSpec(width, height, channels, _PIXEL_TYPES[header["dtype"]])
    spec.channelnames = tuple(header["channels"])
    if header["channels"][-1] == "A":
        spec.alpha_channel = channels - 1
    for name, kind, value in header["attributes"]:
        spec.attribute(name, oiio.TypeDesc(kind), tuple(value) if isinstance(value, list) else value)
    user_data = bytes.fromhex(header["user_data"]) if header["user_data"] else b""
    if header["format"] == "DPX":
        spec.attribute("oiio:BitsPerSample", header["bits"])
        spec.attribute("oiio:Endian", "big" if header.get("big_endian") else "little")  # older rows: little
        top = 2 ** header["bits"] - 1
        samples = np.round(samples.astype(np.float64) * (65535 / top)).astype(np.uint16)  # the writer keeps the top bits
        if text and PROVENANCE_KEY in text:
            user_data = USER_DATA_ID + text[PROVENANCE_KEY].encode() + b"\0" + _foreign_user_data(user_data)
    else:
        spec.attribute("compression", _lossless_compression(header["compression"], header["dtype"]))
        if not any(name == "DateTime" for name, _, _ in header["attributes"]):
            spec.attribute("DateTime", "")  # otherwise the writer stamps the current time and reruns differ
        if text and PROVENANCE_KEY in text:
            spec.attribute(PROVENANCE_KEY, text[PROVENANCE_KEY])
    if user_data:
        spec.attribute("dpx:UserData", oiio.TypeDesc(f"uint8[{len(user_data)}]"), np.frombuffer(user_data, np.uint8))
    if text and "Software" in text:
        spec.attribute("Software", text["Software"])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"frame.{header['format'].lower()}")
        output = oiio.ImageOutput.create(path)
        if output is None or not output.open(path, spec) or not output.write_image(np.ascontiguousarray(samples)):
            error = output.geterror() if output is not None else oiio.geterror()
            raise FrameError(f"could not write the {header['format']} ({_oiio_error(error)})")
        output.close()
        with open(path, "rb") as file:
            written = file.read()
    if header["format"] == "DPX":  # the writer puts its temporary path there: restore the input's file name
        written = written[:_DPX_NAME.start] + bytes.fromhex(header["file_name"]) + written[_DPX_NAME.stop:]
    return written


def _lossless_compression(compression: str | None, dtype: str) -> str:
    name = (compression or "zip").split(":")[0]
    return name if name in LOSSLESS_EXR or (name == "pxr24" and dtype == "float16") else "zip"


def _foreign_user_data(user_data: bytes) -> bytes:
    """The input's own DPX user data, without a provenance block of ours from an earlier restoration."""
    if user_data.startswith(USER_DATA_ID):
        return user_data[32:].partition(b"\0")[2]
    return user_data


def read_film_provenance(data: bytes) -> dict[str, str] | None:
    """Software and restore:provenance from a DPX or EXR header (no pixels decoded), or None when there are none."""
    with _opened(data) as (image, _):
        attributes = {a.name: a.value for a in image.spec().extra_attribs}
    text = {name: attributes[name] for name in ("Software", PROVENANCE_KEY) if isinstance(attributes.get(name), str)}
    block = attributes.get("dpx:UserData")
    if block is not None and bytes(np.asarray(block, np.uint8)).startswith(USER_DATA_ID):
        text[PROVENANCE_KEY] = bytes(np.asarray(block, np.uint8))[32:].partition(b"\0")[0].decode()
    return text or None
