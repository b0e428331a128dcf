"""Frames in and out: bytes <-> pixels, keeping size, channels, bit depth, alpha, ICC profile, EXIF, XMP, IPTC,
PNG text and DPI.

Pillow identifies every file, reads its header and metadata, and decodes what it can hold exactly. Two cases go
to other libraries: 16-bit colour PNG (Pillow holds 16-bit colour only as 8-bit) goes through OpenCV, and TIFF
pixels come from tifffile, because Pillow and OpenCV both rotate TIFFs by their Orientation tag while loading.
Pixels are always returned as stored: EXIF orientation is kept in the metadata, never applied, so a viewer rotates
the output exactly as it rotated the original.

Decisions: palette images are expanded to RGB(A) and written as such (restored pixels need not fit the palette);
1-bit images become 8-bit grayscale (0/255; their fills are thresholded to stay so); CMYK is refused (a faithful
conversion needs colour management, and a silent one would change every pixel); animated GIF/PNG/WebP are refused
rather than cut to their first frame; a multi-page TIFF keeps its first page when the others are smaller
(previews) and is refused when another page is as large (a second image, which a single output cannot hold);
16-bit grayscale with alpha is refused (no library here writes it as PNG).

Infrared: film scanners write RGBI TIFFs, RGB plus an infrared sample marked as ExtraSamples 0 ("unspecified";
1 and 2 mean alpha). Dust and scratches block infrared while dyes do not, so that plane is a damage map, not
colour and not transparency: it is kept apart in `Frame.infrared`, never restored, written back unchanged by
TIFF outputs and dropped by every other format (the manifest's `infrared` column says which).
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import tifffile
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .spec import DEFAULT_MAX_PIXELS, JPEG_QUALITY

# Our max_pixels check (a job's `max_pixels`, by default DEFAULT_MAX_PIXELS) runs on the header before any
# decoding; Pillow's global check would refuse large scans even when a job raises max_pixels, so it is switched off.
Image.MAX_IMAGE_PIXELS = None

PROVENANCE_KEY = "restore:provenance"  # the text field of every output that links it to its manifest row
OUTPUT_FORMATS = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg", "dpx": ".dpx", "exr": ".exr"}  # dpx/exr: film.py
_FORMAT_ALIASES = {"tif": "tiff", "jpg": "jpeg"}
# stored with outputs, so a browser shows them (an S3 static site, the report's links) instead of downloading them
CONTENT_TYPES = {"png": "image/png", "tiff": "image/tiff", "jpeg": "image/jpeg", "dpx": "image/x-dpx",
                 "exr": "image/x-exr"}
_INPUT_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")  # no plugin that runs external programs (EPS)
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, either byte order
_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "TIFF",
          b"MM\x00+": "TIFF", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WEBP"}
ZLIB_LEVEL = 1  # PNG and TIFF deflate level: encoding is often the pipeline's bottleneck; 1 is ~3x faster than 6, ~5% bigger
# Descriptive IFD0 tags a TIFF output carries over from EXIF (Orientation above all, so viewers rotate alike):
# Orientation, ImageDescription, Make, Model, Software, DateTime, Artist, Copyright, DocumentName, PageName,
# HostComputer, with their TIFF types (SHORT or ASCII). They describe the original (its caption, its scanner's
# software), so our provenance goes into tags of their own, which archive tools read as processing history.
_TIFF_EXIF_TAGS = {274: "H", 270: "s", 271: "s", 272: "s", 305: "s", 306: "s", 315: "s", 33432: "s", 269: "s",
                   285: "s", 316: "s"}
_IMAGE_DESCRIPTION = 270
# Where a TIFF output holds each provenance field: ProcessingSoftware (tag 11: the software that processed the
# image) and ImageHistory (TIFF/EP tag 37395: a record of what has been done to the image)
TIFF_PROVENANCE_TAGS = {"Software": 11, PROVENANCE_KEY: 37395}
_EXIF_IFDS = (0x8769, 0x8825)  # Exif and GPS sub-IFDs
_XMP_TAG, _IPTC_TAG = 700, 33723
_PNG_XMP_KEY = "XML:com.adobe.xmp"  # the iTXt keyword of an XMP packet in a PNG
TEXT_TO_COMPRESS = 1024  # PNG text longer than this is written compressed (iTXt with zlib)
_JPEG_XMP_MAX = 65_504  # bytes of XMP one JPEG APP1 segment holds (65,533 less the namespace)
# IPTC-NAA (captions, bylines, credits, keywords, as picture desks and cataloguers write them): in a JPEG, image
# resource 0x0404 of a Photoshop APP13 segment; in a PNG, the text chunk ExifTool and ImageMagick use, holding
# those resources in hex; in a TIFF, tag 33723
_IPTC_RESOURCE = 0x0404
_PHOTOSHOP = b"Photoshop 3.0\x00"
_PNG_IPTC_KEY = "Raw profile type iptc"
_JPEG_SEGMENT_MAX = 65_533  # bytes one JPEG segment holds after its length


class FrameError(Exception):
    """A frame that cannot be decoded or encoded; the message says why in words a user can act on."""


@dataclass
class Frame:
    pixels: np.ndarray  # (H, W, C), C in {1, 3}, uint8 or uint16: colour channels only
    alpha: np.ndarray | None  # (H, W), same dtype as pixels; carried through untouched
    format: str  # source format: "PNG", "JPEG", "TIFF", ...
    mode: str  # Pillow-style mode of the source: "L", "I;16", "RGB", "RGB;16", "RGBA", "LA", "P", "1", ...
    icc_profile: bytes | None
    exif: bytes | None  # "Exif\0\0" + TIFF-structured EXIF, as in a JPEG APP1 segment
    dpi: tuple[float, float] | None = None
    resolution_per_cm: bool = False  # a TIFF that states its resolution per centimetre (dpi is per inch all the same)
    infrared: np.ndarray | None = None  # (H, W), same dtype as pixels: an RGBI scan's infrared plane
    # Rights and descriptions archives keep (creator, rights, accession numbers), written back where the output
    # format holds them: XMP by PNG, TIFF and JPEG; IPTC by TIFF; PNG text chunks (Title, Author, ...) by PNG
    xmp: bytes | None = None
    iptc: bytes | None = None  # the IPTC-NAA record: a TIFF's tag 33723, a JPEG's or PNG's Photoshop resource
    png_text: dict[str, str] | None = None
    orientation: int = 1  # EXIF/TIFF Orientation: how viewers turn the stored pixels to show them (1: as stored)
    # a grey or bilevel TIFF stored white-is-zero (MinIsWhite), as microfilm and some negative scanners write it:
    # pixels are decoded as shown, and a TIFF output stores them so again, sample for sample
    min_is_white: bool = False
    # A PNG's colour-space chunks (gAMA, cHRM, sRGB) and significant bits (sBIT), whole, in their order: without
    # them a colour-managed viewer shows a gamma-1.8 master as if it were sRGB. Also a 16-bit grey PNG's
    # transparent grey (tRNS), which no alpha channel here holds
    png_colour: bytes | None = None
    # A TIFF's compression, as tifffile names it ("none", "lzw", "packbits", "adobe_deflate", "ccitt_t6", ...): a
    # TIFF output keeps the lossless ones it can write, as collections' policies name them (uncompressed, LZW)
    tiff_compression: str | None = None

    @property
    def premultiplied(self) -> bool:
        """Colour stored multiplied by alpha (a TIFF's associated alpha), written back marked as such."""
        return self.mode.startswith(("RGBa", "La"))

    @property
    def bit_depth(self) -> int:
        """Of the samples as stored: a bilevel scan's are 1 bit (held as 0 and 255 here), and written so."""
        return 16 if self.pixels.dtype == np.uint16 else 1 if self.mode == "1" else 8


def extension_for(fmt: str) -> str:
    """The file extension for an output format: ".png", ".tif", ".jpg", ".dpx" or ".exr"."""
    return OUTPUT_FORMATS[_format_name(fmt)]


def _format_name(fmt: str) -> str:
    name = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if name not in OUTPUT_FORMATS:
        raise FrameError(f"unknown output format {fmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    return name


# ---------------------------------------------------------------------------------------------------- decode


def check_pixel_limit(width: int, height: int, max_pixels: int, what: str = "image") -> None:
    """Raise FrameError for a picture over the job's decompression-bomb limit, from its header's size."""
    if width * height > max_pixels:
        size = lambda n: f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n:,} pixels"  # noqa: E731 - small limits too
        raise FrameError(f"{what} is {width}x{height} = {size(width * height)}, over the limit of {size(max_pixels)} "
                         "(raise max_pixels in the spec)")


def decode_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Frame:
    """Decode an image file's bytes; raises FrameError with a readable reason for anything it cannot hold."""
    from .film import decode_film, is_film  # film scans: OpenImageIO, an optional extra

    if is_film(data):
        return decode_film(data, max_pixels)
    try:
        image = _open(data)
    except FrameError:
        if data.startswith(TIFF_MAGICS):  # layouts Pillow cannot open (uncompressed planar, float): tifffile alone
            return _decode_tiff_alone(data, max_pixels)
        raise
    width, height = image.size
    check_pixel_limit(width, height, max_pixels)
    if image.mode == "CMYK":
        raise FrameError("CMYK images are not supported: convert to RGB with a colour-managed tool first")
    infrared, late_text, min_is_white = None, {}, False
    try:
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "TIFF":
            raise FrameError(f"animated {image.format} with {frames} frames: split it into single frames first")
        if image.format == "TIFF":
            exif = _tiff_exif(image)
            mode, pixels, alpha, infrared, min_is_white = _decode_tiff(data)
        else:
            exif = image.info.get("exif") or None
            if exif and not exif.startswith(b"Exif\x00\x00"):  # PNG eXIf and WebP carry it without the header
                exif = b"Exif\x00\x00" + exif
            if image.format == "PNG" and data[24] == 16 and data[25] in (2, 4, 6):  # IHDR: 16-bit, has colour/alpha
                mode, pixels, alpha = _decode_png16(data, data[25], (height, width))
                late_text = _png_text_after_image(data)  # Pillow reads those chunks only when it decodes
            else:
                mode, pixels, alpha = _decode_pillow(image)
    except FrameError:
        raise
    except Exception as e:  # Pillow, tifffile and zlib raise a dozen types on corrupt input
        raise FrameError(f"corrupt or truncated {image.format}: {e}") from None
    info = {**image.info, **late_text}
    dpi = _jpeg_dpi(info, image.getexif()) if image.format == "JPEG" else info.get("dpi")
    if image.format == "TIFF":
        iptc = _tiff_iptc(data)
    elif image.format == "PNG":
        iptc = _png_iptc(info.get(_PNG_IPTC_KEY))
    else:
        iptc = _jpeg_iptc(data) if image.format == "JPEG" else None
    kept_apart = (_PNG_XMP_KEY, _PNG_IPTC_KEY) if iptc else (_PNG_XMP_KEY,)  # IPTC this cannot read stays text
    png_text = {key: str(value) for key, value in info.items()
                if image.format == "PNG" and isinstance(value, str) and key not in kept_apart}
    xmp = info.get("xmp") or (info[_PNG_XMP_KEY].encode() if _PNG_XMP_KEY in info else None)
    return Frame(
        pixels=pixels,
        alpha=alpha,
        format=image.format,
        mode=mode,
        icc_profile=image.info.get("icc_profile") or None,
        exif=exif,
        dpi=_plausible_dpi(dpi),
        resolution_per_cm=image.format == "TIFF" and image.tag_v2.get(296) == 3,
        infrared=infrared,
        xmp=xmp or None,
        iptc=iptc or None,
        png_colour=_png_colour_chunks(data, keyed=mode == "I;16") if image.format == "PNG" else None,
        orientation=_exif_orientation(exif),
        png_text=png_text or None,
        min_is_white=min_is_white,
        tiff_compression=_compression_name(image.tag_v2.get(259, 1)) if image.format == "TIFF" else None,
    )


def _compression_name(code) -> str:
    """A TIFF Compression tag's value as tifffile names it ("lzw"), or its number for one tifffile does not know."""
    try:
        return tifffile.COMPRESSION(int(code)).name.lower()
    except (TypeError, ValueError):
        return f"compression {code}"


def decode_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, displayed: bool = False,
                inverted: bool = False) -> np.ndarray:
    """(H, W) bool: a pixel is masked where it shows (its alpha, if it has one, is marked) and its brightest colour
    channel is marked among the pixels shown (`_marked`); on a transparent layer painted in one colour, wherever it
    is painted, whatever the colour (black is an editor's default brush). `displayed`: as a viewer shows the file,
    turned by its own EXIF orientation, if it has one; `inverted`: the mask marks in black on white (an editor's
    layer mask), so what is marked is darker.

    So black-and-white masks (0 and 255, or 0 and 1 as a program saves them), coloured strokes, strokes painted on
    a transparent layer, anti-aliased strokes and masks saved as JPEG all work.
    """
    frame = decode_frame(data, max_pixels)
    levels = frame.pixels.max(axis=2)
    shown = None if frame.alpha is None else _marked(frame.alpha)
    colours = levels if shown is None else levels[shown]
    if shown is not None and not shown.all() and colours.size \
            and int(colours.max()) - int(colours.min()) < np.iinfo(levels.dtype).max / 8:
        mask = shown  # one colour painted on a transparent layer: the paint is the mask
    else:
        if inverted:  # darkness is the mark, measured down from the brightest shown (what is hidden may wrap)
            levels = colours.max(initial=0) - levels
        mask = _marked(levels, shown)
        if shown is not None:
            mask &= shown
    return as_displayed(mask, frame.orientation) if displayed else mask


def _marked(levels: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Where a mask's levels reach 1/8 of its brightest (among the pixels `among` holds: what a transparent layer
    hides does not count). An exact mask keeps every pixel it marks, an anti-aliased stroke nearly all its rim; a
    mask saved as JPEG loses the faint ringing around its strokes, which marked two thirds more pixels than were
    painted (`test_a_mask_saved_as_jpeg_marks_what_was_painted_not_the_ringing_around_it`), and so repainted clean
    ones."""
    brightest = int((levels if among is None else levels[among]).max(initial=0))
    return levels >= max(1, brightest / 8)


def _open(data: bytes) -> Image.Image:
    if not data:
        raise FrameError("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data), formats=_INPUT_FORMATS)
    except Exception as e:
        reason = "unrecognised header" if isinstance(e, UnidentifiedImageError) else str(e)
        for magic, kind in _MAGIC.items():
            if data.startswith(magic):
                raise FrameError(f"corrupt, truncated or unsupported {kind} ({reason})") from None
        raise FrameError(f"not an image (starts with {data[:16]!r})") from None


def _split_alpha(array: np.ndarray, colour: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, colour[+1]) -> pixels (H, W, colour) and alpha (H, W) or None, both contiguous."""
    if array.ndim == 2:
        array = array[..., None]
    alpha = np.ascontiguousarray(array[..., colour]) if array.shape[2] > colour else None
    return np.ascontiguousarray(array[..., :colour]), alpha


def _decode_pillow(image: Image.Image) -> tuple[str, np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode.startswith("I;16"):
        return "I;16", np.asarray(image).astype(np.uint16)[..., None], None  # I;16B etc. to native byte order
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in image.info:  # a PNG tRNS colour key becomes real alpha,
        image = image.convert("LA" if mode == "L" else "RGBA")  # which the output keeps: clear stays clear
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        raise FrameError(f"unsupported image mode {mode} (8/16-bit grayscale or RGB, with or without alpha)")
    array = np.asarray(image)
    return (mode, *_split_alpha(array, 1 if image.mode in ("L", "LA") else 3))


def _decode_png16(data: bytes, colour_type: int, shape: tuple[int, int]) -> tuple[str, np.ndarray, np.ndarray | None]:
    if colour_type == 4:
        raise FrameError("16-bit grayscale with alpha is not supported: drop the alpha or use 8 bits")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.shape[:2] != shape:
        raise FrameError("corrupt or truncated PNG (16-bit colour data could not be decoded)")
    if array.shape[2] == 4:
        return "RGBA;16", np.ascontiguousarray(array[..., 2::-1]), np.ascontiguousarray(array[..., 3])
    return "RGB;16", np.ascontiguousarray(array[..., ::-1]), None  # OpenCV stores BGR


def _decode_tiff_alone(data: bytes, max_pixels: int) -> Frame:
    """A TIFF that Pillow cannot open, read with tifffile only: pixels, ICC profile and resolution (no EXIF)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            check_pixel_limit(page.imagewidth, page.imagelength, max_pixels)
            tags = {tag.code: tag.value for tag in page.tags.values()}
        mode, pixels, alpha, infrared, min_is_white = _decode_tiff(data)
    except FrameError:
        raise
    except Exception as e:  # tifffile raises many types on corrupt input
        raise FrameError(f"corrupt or truncated TIFF: {e}") from None
    dpi, per_cm = None, tags.get(296, 2) == 3
    if 282 in tags and 283 in tags and tags.get(296, 2) in (2, 3):  # X/YResolution in inches or centimetres
        per_inch = 2.54 if per_cm else 1.0
        dpi = _plausible_dpi([float(n) / float(d) * per_inch if d else 0.0 for n, d in (tags[282], tags[283])])
    return Frame(pixels=pixels, alpha=alpha, format="TIFF", mode=mode, icc_profile=tags.get(34675) or None,
                 exif=None, dpi=dpi, resolution_per_cm=per_cm, infrared=infrared, xmp=_tag_bytes(tags, _XMP_TAG),
                 iptc=_iptc_record(tags), orientation=_orientation(tags.get(274)),
                 min_is_white=min_is_white, tiff_compression=_compression_name(tags.get(259, 1)))


def _decode_tiff(data: bytes) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None, bool]:
    """(mode, pixels, alpha, infrared, whether it is MinIsWhite) of the first page, as stored (no orientation
    applied; white-is-zero samples turned the right way)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        # Further pages smaller than the first (or flagged reduced-resolution) are previews, dropped with the
        # output; a page as large as the first is more of the picture, which must not be lost without a word.
        pages = 1 + sum(1 for other in list(tif.pages)[1:] if not other.is_reduced and (
            other.imagewidth >= page.imagewidth or other.imagelength >= page.imagelength))
        if pages > 1:
            raise FrameError(f"multi-page TIFF with {pages} full-size pages: split it into single frames first")
        # refused from the header, before decoding: a small file may declare a hundred float64 samples a pixel
        if page.dtype is None or page.dtype not in (np.uint8, np.uint16, bool):
            raise FrameError(f"TIFF samples of type {page.dtype} are not supported (8- or 16-bit unsigned integers)")
        if page.samplesperpixel > 4:
            raise FrameError(f"TIFF with {page.samplesperpixel} samples per pixel is not supported (at most 4: "
                             "RGB and alpha or infrared)")
        array = page.asarray()
        if page.axes.startswith("S"):  # planar configuration: samples first
            array = np.moveaxis(array, 0, -1)
        photometric = page.photometric
        colormap = page.colormap
        jpeg = page.compression == tifffile.COMPRESSION.JPEG
        extrasamples = tuple(page.extrasamples)
    P = tifffile.PHOTOMETRIC
    inverted = photometric == P.MINISWHITE
    if array.dtype == bool:  # 1-bit: held as 8-bit grayscale, 0 or 255
        white = ~array if inverted else array
        return "1", (white.astype(np.uint8) * 255)[..., None], None, None, inverted
    sixteen = array.dtype == np.uint16
    samples = 1 if array.ndim == 2 else array.shape[2]
    if inverted and samples == 1:
        return ("I;16" if sixteen else "L"), (np.iinfo(array.dtype).max - array)[..., None], None, None, True
    if photometric == P.MINISBLACK and samples == 1:
        return ("I;16" if sixteen else "L"), array[..., None], None, None, False
    associated = extrasamples[:1] == (tifffile.EXTRASAMPLE.ASSOCALPHA,)  # premultiplied: Pillow's "La", "RGBa"
    if photometric == P.MINISBLACK and samples == 2 and not sixteen:
        return ("La" if associated else "LA", *_split_alpha(array, 1), None, False)
    if photometric == P.RGB or (photometric == P.YCBCR and jpeg):  # JPEG-in-TIFF decodes to RGB
        depth = ";16" if sixteen else ""
        if samples == 4 and extrasamples[:1] == (tifffile.EXTRASAMPLE.UNSPECIFIED,):  # RGBI: not alpha
            return ("RGBI" + depth, np.ascontiguousarray(array[..., :3]), None, np.ascontiguousarray(array[..., 3]),
                    False)
        if samples in (3, 4):
            mode = ("RGB" if samples == 3 else "RGBa" if associated else "RGBA") + depth
            return mode, *_split_alpha(array, 3), None, False
    if photometric == P.PALETTE and colormap is not None:
        rgb = colormap[:, array].transpose(1, 2, 0)  # colormap is (3, 2**bits) of 16-bit values
        return "P", np.ascontiguousarray(rgb if sixteen else (rgb >> 8).astype(np.uint8)), None, None, False
    if photometric == P.SEPARATED:
        raise FrameError("CMYK images are not supported: convert to RGB with a colour-managed tool first")
    raise FrameError(f"unsupported TIFF layout: {photometric.name} with {samples} {array.dtype} samples per pixel")


def _tiff_exif(image: Image.Image) -> bytes | None:
    """EXIF bytes from a TIFF: its descriptive IFD0 tags plus the Exif and GPS sub-IFDs (not the image structure)."""
    source = image.getexif()
    exif = Image.Exif()
    for tag in _TIFF_EXIF_TAGS:
        value = source.get(tag)
        if tag == _IMAGE_DESCRIPTION:
            value = _input_caption(value)
        if isinstance(value, str):  # the bytes the file held: Pillow reads them as Latin-1, and writes str as ASCII
            value = value.encode("latin-1", "replace")
        if value is not None:
            exif[tag] = value
    for ifd in _EXIF_IFDS:
        if source.get_ifd(ifd):
            exif[ifd] = source.get_ifd(ifd)
    return exif.tobytes() if len(exif) else None


def _input_caption(description):
    """The input's own ImageDescription. Outputs of earlier versions held our provenance JSON there, with the
    input's description (when it had one) inside: re-restoring one of them must not nest that JSON again."""
    if not isinstance(description, str) or not description.startswith("{"):
        return description
    try:
        written = json.loads(description)
    except ValueError:
        return description
    return written.get("ImageDescription") if isinstance(written, dict) and PROVENANCE_KEY in written else description


_PNG_COLOUR = (b"gAMA", b"cHRM", b"sRGB", b"sBIT")


def _png_chunks(data: bytes, start: int = 8) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(type, body, the whole chunk) of each chunk in PNG bytes from `start` (8: after the signature)."""
    position = start
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        yield kind, data[position + 8:position + 8 + length], data[position:position + 12 + length]
        position += 12 + length


def _png_colour_chunks(data: bytes, keyed: bool = False) -> bytes | None:
    """The colour-space and significant-bits chunks before a PNG's image data, whole, in their order; Pillow reads
    them only in part and writes none of them back. `keyed`: the tRNS chunk too (a 16-bit grey PNG's transparent
    grey, which Pillow keeps apart from any alpha channel, and which was lost)."""
    kinds = _PNG_COLOUR + ((b"tRNS",) if keyed else ())
    chunks = []
    for kind, body, chunk in _png_chunks(data):
        if kind == b"IDAT":
            break
        if kind in kinds and len(body) <= 64:  # each holds at most 32 bytes
            chunks.append(chunk)
    return b"".join(chunks) or None


def _colour_chunks_for(frame: Frame, channels: int) -> list[tuple[bytes, bytes]]:
    """(type, body) of the frame's PNG colour chunks to write with `channels` samples a pixel; an sBIT of another
    layout (a palette's, once expanded with its transparency to RGBA) is left out, as it would not be valid."""
    return [(kind, body) for kind, body, _ in _png_chunks(frame.png_colour or b"", start=0)
            if kind != b"sBIT" or len(body) == channels]


def _png_text_after_image(data: bytes) -> dict[str, str]:
    """The tEXt, zTXt and iTXt chunks after a PNG's image data, by keyword; a chunk that cannot be read is left out
    (as Pillow does), a compressed one stops at Pillow's limit for a chunk, and all of them at its limit for a
    file's text (a few kilobytes of zTXt can otherwise inflate to gigabytes)."""
    text, after_image, budget = {}, False, PngImagePlugin.MAX_TEXT_MEMORY
    for kind, body, _ in _png_chunks(data):
        if kind == b"IDAT":
            after_image = True
        elif kind == b"IEND":
            break
        elif after_image and kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, _, rest = body.partition(b"\0")
            try:
                if kind == b"tEXt":
                    value = rest.decode("latin-1")
                elif kind == b"zTXt":
                    value = _inflate(rest[1:]).decode("latin-1")
                else:  # compression flag and method, language tag, translated keyword, text
                    compressed, rest = rest[:1] == b"\1", rest[2:]
                    value = rest.split(b"\0", 2)[2]
                    value = (_inflate(value) if compressed else value).decode("utf-8")
            except (zlib.error, UnicodeDecodeError, IndexError):
                continue
            budget -= len(value)
            if budget < 0:
                break
            text[keyword.decode("latin-1")] = value
    return text


def _inflate(data: bytes) -> bytes:
    return zlib.decompressobj().decompress(data, PngImagePlugin.MAX_TEXT_CHUNK)


def _tag_bytes(tags: dict, code: int) -> bytes | None:
    """A TIFF tag's raw bytes, as tifffile reads XMP and IPTC whatever their declared type (Photoshop writes IPTC
    as LONGs, of which Pillow keeps only the first)."""
    value = tags.get(code)
    return value if isinstance(value, bytes) and value else None


def _jpeg_dpi(info: dict, exif: Image.Exif) -> tuple[float, float] | None:
    """The resolution a JPEG states: its JFIF density in dots per inch or centimetre, else its EXIF resolution (in
    inches unless it says centimetres). Pillow reads 72 dpi for a JPEG that states none, or states EXIF's without
    a unit: outputs would claim what the scan never said."""
    if info.get("jfif_unit") in (1, 2):
        return info.get("dpi")
    try:
        x, y = float(exif[0x011A]), float(exif.get(0x011B, exif[0x011A]))
    except (KeyError, TypeError, ValueError):
        return None
    scale = 2.54 if exif.get(0x0128) == 3 else 1.0  # ResolutionUnit 3: per centimetre
    return x * scale, y * scale


def _jpeg_iptc(jpeg: bytes) -> bytes | None:
    """The IPTC record of a JPEG's Photoshop APP13 segments, joined: Photoshop and ExifTool split a record too long
    for one segment over several."""
    resources = b"".join(jpeg[start + 4 + len(_PHOTOSHOP):end] for marker, start, end in _jpeg_header(jpeg)[0]
                         if marker == 0xED and jpeg[start + 4:start + 4 + len(_PHOTOSHOP)] == _PHOTOSHOP)
    return _iptc_from_resources(resources)


def _png_iptc(profile: str | None) -> bytes | None:
    """The IPTC record of a PNG's raw profile text ("\\niptc\\n  <length>\\n<hex lines>"), which holds either the
    record itself or the Photoshop image resources around it."""
    if not profile:
        return None
    try:
        data = bytes.fromhex("".join(profile.split("\n")[3:]))
    except ValueError:
        return None  # not hex: not a profile this reads, and not worth failing a frame for
    return _iptc_from_resources(data) if data.startswith(b"8BIM") else data


def _iptc_from_resources(resources: bytes) -> bytes | None:
    """The IPTC record among Photoshop image resources ("8BIM", id, padded Pascal name, size, data padded)."""
    position = 0
    while resources[position:position + 4] == b"8BIM" and position + 12 <= len(resources):
        ident = int.from_bytes(resources[position + 4:position + 6], "big")
        position += 6 + (resources[position + 6] + 2) // 2 * 2
        size = int.from_bytes(resources[position:position + 4], "big")
        position += 4
        if ident == _IPTC_RESOURCE:
            return resources[position:position + size] or None
        position += size + size % 2
    return None


def _as_photoshop_resource(iptc: bytes) -> bytes:
    """An IPTC record as a Photoshop image resource, as Photoshop, ExifTool and Pillow read it."""
    return (b"8BIM" + _IPTC_RESOURCE.to_bytes(2, "big") + b"\x00\x00" + len(iptc).to_bytes(4, "big") + iptc
            + b"\x00" * (len(iptc) % 2))


def _tiff_iptc(data: bytes) -> bytes | None:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return _iptc_record({tag.code: tag.value for tag in tif.pages.first.tags.values()})


def _iptc_record(tags: dict) -> bytes | None:
    """A TIFF's IPTC record (tag 33723) as written. Photoshop stores it as LONGs, and a tool that converted the
    file's byte order swapped the bytes of each: turned back, as ExifTool reads it, where the record then begins
    as records do (its 0x1C) and did not before."""
    record = _tag_bytes(tags, _IPTC_TAG)
    if record and record[0] != 0x1C and len(record) % 4 == 0 and record[3] == 0x1C:
        return np.frombuffer(record, np.uint32).byteswap().tobytes()
    return record


# ---------------------------------------------------------------------------------------------------- encode


def encode_frame(frame: Frame, pixels: np.ndarray, fmt: str = "png", text: dict[str, str] | None = None,
                 jpeg_quality: int = JPEG_QUALITY) -> bytes:
    """Encode `pixels` (shaped and typed like frame.pixels) with the frame's alpha and metadata.

    "png" and "tiff" are lossless; "jpeg" is a lossy opt-in for frames without alpha (16-bit ones rounded to 8
    bits). The bytes depend only on the inputs (no timestamps), so a rerun reproduces them. `text` is provenance:
    PNG iTXt chunks, TIFF tags (TIFF_PROVENANCE_TAGS), or a JSON object in the JPEG comment.
    """
    name = _format_name(fmt)
    if pixels.shape != frame.pixels.shape or pixels.dtype != frame.pixels.dtype:
        raise FrameError(
            f"pixels are {pixels.shape} {pixels.dtype} but the frame is {frame.pixels.shape} {frame.pixels.dtype}"
        )
    check_encodable(frame, name)
    if name in ("dpx", "exr"):
        from .film import encode_film

        return encode_film(frame, pixels, name, text)
    if name == "tiff":
        return _encode_tiff(frame, pixels, text)
    if name == "jpeg":
        return _encode_jpeg(frame, pixels, text, jpeg_quality)
    if pixels.dtype == np.uint16 and pixels.shape[2] == 3:
        return _encode_png16(frame, pixels, text)
    options = _pillow_metadata(frame)
    chunks = _png_text_chunks(frame, text)
    colour = _colour_chunks_for(frame, pixels.shape[2] + (frame.alpha is not None))
    if chunks or colour:
        options["pnginfo"] = PngImagePlugin.PngInfo()
        for kind, body in colour:
            if kind == b"tRNS":  # Pillow writes a transparent grey from its option only
                options["transparency"] = int.from_bytes(body[:2], "big")
            else:
                options["pnginfo"].add(kind, body)
        for key, value in chunks.items():  # long text compressed, as it likely came
            options["pnginfo"].add_itxt(key, value, zip=_compressed(key, value))
    image = Image.fromarray(pixels[..., 0] >= 128) if frame.mode == "1" else _to_pillow(pixels, frame.alpha)
    return _save(image, "PNG", compress_level=ZLIB_LEVEL, **options)  # a bilevel scan as 1-bit, as scanned


def check_encodable(frame: Frame, fmt: str) -> None:
    """Raise FrameError if the frame cannot be written in `fmt` without loss beyond the format's own.

    Checked again right after decoding, so that a frame the output format cannot hold fails before it is restored.
    """
    name = _format_name(fmt)
    if frame.alpha is not None and frame.premultiplied and name != "tiff":
        raise FrameError("this TIFF's alpha is premultiplied (associated), which only TIFF holds: write it as tiff "
                         "(output_format same or tiff)")
    if name == "jpeg" and frame.alpha is not None:
        raise FrameError("JPEG cannot hold an alpha channel: write this frame as png or tiff")
    if name in ("png", "tiff") and frame.pixels.dtype == np.uint16 and frame.pixels.shape[2] == 1 \
            and frame.alpha is not None:
        raise FrameError("16-bit grayscale with alpha is not supported: drop the alpha or use 8 bits")


def _orientation(value) -> int:
    """An Orientation tag's value, 1 (as stored) when absent or outside 1-8."""
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_orientation(exif: bytes | None) -> int:
    """The Orientation in EXIF bytes as the frame keeps them (a PNG's eXIf is read only before its image data:
    asking Pillow for the rest would decode the whole picture once more)."""
    if not exif:
        return 1
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        return _orientation(parsed.get(274))
    except Exception:  # noqa: BLE001 - a broken EXIF block says no orientation
        return 1


def as_displayed(array: np.ndarray, orientation: int) -> np.ndarray:
    """The (H, W, ...) array as a viewer shows it under an EXIF Orientation (Pillow's ImageOps.exif_transpose)."""
    turns = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: np.swapaxes(a, 0, 1),
             6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2), 8: lambda a: np.rot90(a)}
    return np.ascontiguousarray(turns[orientation](array))


def as_stored(array: np.ndarray, orientation: int) -> np.ndarray:
    """The inverse of `as_displayed`: a picture drawn on the view a viewer shows, back onto the stored pixels."""
    return as_displayed(array, {6: 8, 8: 6}.get(orientation, orientation))  # the others undo themselves


MAX_DPI = 65_535  # past any scanner, and within what every output can write back (JPEG's density is 16 bits)


def _plausible_dpi(dpi) -> tuple[float, float] | None:
    """A resolution worth carrying: both values finite and within (0, MAX_DPI]. Zero, NaN or billions of dots
    per inch are a broken tag, and Pillow and tifffile fail to write them back."""
    if not dpi:
        return None
    values = (float(dpi[0]), float(dpi[1]))
    return values if all(0 < v <= MAX_DPI for v in values) else None  # NaN fails every comparison


def _compressed(key: str, value: str) -> bool:
    """Whether a PNG text chunk is written compressed: long text, except XMP, which the XMP specification
    requires uncompressed so that packet scanners find it."""
    return len(value) > TEXT_TO_COMPRESS and key != _PNG_XMP_KEY


def _png_text_chunks(frame: Frame, text: dict[str, str] | None) -> dict[str, str]:
    """The source's text chunks and XMP, then our provenance (which wins a shared keyword), in a fixed order."""
    chunks = dict(sorted((frame.png_text or {}).items()))
    if frame.xmp:
        chunks[_PNG_XMP_KEY] = frame.xmp.decode("utf-8", "replace")
    if frame.iptc:  # the record as a Photoshop resource, in hex, 36 bytes a line, as ImageMagick lays out a profile
        resources = _as_photoshop_resource(frame.iptc).hex()
        chunks[_PNG_IPTC_KEY] = f"\niptc\n{len(resources) // 2:8d}\n" + "\n".join(
            resources[start:start + 72] for start in range(0, len(resources), 72)) + "\n"
    return {**chunks, **dict(sorted((text or {}).items()))}


def encode_mask(mask: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG, 255 where masked: viewable as is, and read back by decode_mask."""
    return _save(Image.fromarray(mask.astype(np.uint8) * 255), "PNG", compress_level=ZLIB_LEVEL)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **options)
    except (ValueError, OSError) as error:  # the frame's failure, not the run's
        raise FrameError(f"cannot encode the frame as {fmt}: {error}") from None
    return buffer.getvalue()


def _to_pillow(pixels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if alpha is not None:
        return Image.fromarray(np.dstack([pixels, alpha]))  # LA or RGBA
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)  # L, I;16 or RGB


def _pillow_metadata(frame: Frame) -> dict:
    options = {"icc_profile": frame.icc_profile, "exif": frame.exif, "dpi": frame.dpi}
    return {k: v for k, v in options.items() if v}


def _encode_jpeg(frame: Frame, pixels: np.ndarray, text: dict[str, str] | None, quality: int) -> bytes:
    options = _pillow_metadata(frame)
    if frame.xmp and len(frame.xmp) <= _JPEG_XMP_MAX:  # longer needs Extended XMP, which Pillow does not write
        options["xmp"] = frame.xmp
    if text:
        options["comment"] = json.dumps(text, sort_keys=True)
    # 4:4:4 chroma: restored detail is often fine lines, which 4:2:0 subsampling would smear
    if pixels.dtype == np.uint16:  # JPEG holds 8 bits: the nearest 8-bit level, as a scan's web copy is made
        pixels = np.rint(pixels * np.float32(255 / 65_535)).astype(np.uint8)
    encoded = _save(_to_pillow(pixels, None), "JPEG", quality=quality, subsampling=0, **options)
    return _with_iptc(encoded, frame.iptc) if frame.iptc else encoded


def _with_iptc(jpeg: bytes, iptc: bytes) -> bytes:
    """The JPEG with the IPTC record in Photoshop APP13 segments after its other application segments, where
    Photoshop writes them (Pillow writes none); a record too long for one is split over several, as Photoshop does."""
    resources, room = _as_photoshop_resource(iptc), _JPEG_SEGMENT_MAX - len(_PHOTOSHOP)
    added = b"".join(_segment(0xED, _PHOTOSHOP + resources[start:start + room])
                     for start in range(0, len(resources), room))
    segments, image_data = _jpeg_header(jpeg)
    after = next((start for marker, start, _ in segments if not 0xE0 <= marker <= 0xEF), image_data)
    return jpeg[:after] + added + jpeg[after:]


def jpeg_with_provenance(jpeg: bytes, text: dict[str, str]) -> bytes:
    """A JPEG's own bytes with the provenance comment `encode_frame` writes, as the last segment before its image
    data, so it is the comment readers take whatever comments it had: a frame with nothing to restore keeps its
    encoding, its pixels and every segment it had, where encoding it again would lose a little of each pixel and
    grow the file."""
    comment = json.dumps(text, sort_keys=True).encode()
    if len(comment) > _JPEG_SEGMENT_MAX:
        raise FrameError("the provenance comment is too long for a JPEG segment")
    image_data = _jpeg_header(jpeg)[1]
    return jpeg[:image_data] + _segment(0xFE, comment) + jpeg[image_data:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _jpeg_header(jpeg: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """A JPEG's header segments as (marker, start, end), and where its first scan (SOS) begins."""
    segments, position = [], 2
    while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
        marker = jpeg[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in (0xDA, 0xD9):  # start of scan, or end of image
            break
        else:
            end = position + 2 + int.from_bytes(jpeg[position + 2:position + 4], "big")
            segments.append((marker, position, end))
            position = end
    return segments, position


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encode_png16(frame: Frame, pixels: np.ndarray, text: dict[str, str] | None) -> bytes:
    """16-bit RGB(A) PNG through OpenCV, with our metadata chunks spliced in after IHDR (OpenCV writes none)."""
    bgr = pixels[..., ::-1] if frame.alpha is None else np.dstack([pixels[..., ::-1], frame.alpha])
    ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, ZLIB_LEVEL])
    if not ok:
        raise FrameError("OpenCV could not encode the 16-bit PNG")
    chunks = [_png_chunk(kind, body) for kind, body in _colour_chunks_for(frame, 3 + (frame.alpha is not None))]
    if frame.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(frame.icc_profile)))
    if frame.dpi:
        x, y = (round(d / 0.0254) for d in frame.dpi)  # pixels per metre
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", x, y, 1)))
    if frame.exif:
        chunks.append(_png_chunk(b"eXIf", frame.exif.removeprefix(b"Exif\x00\x00")))
    for key, value in _png_text_chunks(frame, text).items():  # compression flag and method, empty language tags
        compress = _compressed(key, value)
        body = zlib.compress(value.encode(), ZLIB_LEVEL) if compress else value.encode()
        chunks.append(_png_chunk(b"iTXt", key.encode("latin-1") + bytes([0, compress, 0, 0, 0]) + body))
    png = encoded.tobytes()
    header_end = 8 + 25  # signature, then the IHDR chunk (4 length + 4 type + 13 data + 4 CRC)
    return png[:header_end] + b"".join(chunks) + png[header_end:]


# A TIFF input's compression a TIFF output keeps: the lossless ones tifffile writes. Any other (CCITT G4, which
# it cannot write for a bilevel page; JPEG, which is lossy; the rarer ones), and any other input, becomes Deflate.
KEPT_TIFF_COMPRESSION = {"none": None, "lzw": "lzw", "packbits": "packbits"}
STRIP_BYTES = 1 << 18


def _encode_tiff(frame: Frame, pixels: np.ndarray, text: dict[str, str] | None) -> bytes:
    """The input TIFF's compression where it is in KEPT_TIFF_COMPRESSION, else Deflate; LZW and Deflate with a
    horizontal predictor but on a bilevel page: lossless, widely readable, no timestamps. Resolution keeps the unit
    the input stated it in, as archives record the unit they scanned at.

    Alpha and an RGBI scan's infrared plane follow the colour samples, marked as alpha and "unspecified".
    """
    colour = pixels.shape[2] == 3
    bilevel = frame.mode == "1" and not colour and frame.alpha is None
    white_is_zero = frame.min_is_white and not colour and frame.alpha is None
    if bilevel:  # 1 bit a sample, as scanned (the fill kept it black and white)
        pixels = pixels >= 128
    if white_is_zero:  # the samples as the scan stored them
        pixels = ~pixels if bilevel else np.iinfo(pixels.dtype).max - pixels
    alpha_kind = "assocalpha" if frame.premultiplied else "unassalpha"
    extras = [(plane, kind) for plane, kind in ((frame.alpha, alpha_kind), (frame.infrared, "unspecified"))
              if plane is not None]
    array = np.dstack([pixels] + [plane for plane, _ in extras]) if extras else pixels
    array = array if array.shape[2] > 1 else array[..., 0]
    tags = []
    if frame.icc_profile:
        tags.append((34675, 7, len(frame.icc_profile), frame.icc_profile, True))  # InterColorProfile, UNDEFINED
    if frame.xmp:
        tags.append((_XMP_TAG, 1, len(frame.xmp), frame.xmp, True))  # XMLPacket, BYTE
    if frame.iptc:
        tags.append((_IPTC_TAG, 7, len(frame.iptc), frame.iptc, True))  # IPTC-NAA, UNDEFINED
    if frame.exif:
        exif = Image.Exif()
        exif.load(frame.exif)
        for tag, dtype in _TIFF_EXIF_TAGS.items():
            value = exif.get(tag)
            if dtype == "s" and isinstance(value, str):  # Pillow reads TIFF text as Latin-1: the bytes it held
                tags.append((tag, dtype, 0, value.encode("latin-1"), True))
            elif dtype == "H" and isinstance(value, int):
                tags.append((tag, dtype, 1, value, True))
    tags += [(code, "s", 0, text[name], True) for name, code in TIFF_PROVENANCE_TAGS.items() if name in (text or {})]
    unit, per_inch = ("CENTIMETER", 2.54) if frame.resolution_per_cm else ("INCH", 1.0)
    compression = KEPT_TIFF_COMPRESSION.get(frame.tiff_compression, "zlib")
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        array,
        photometric="rgb" if colour else "miniswhite" if white_is_zero else "minisblack",
        extrasamples=tuple(kind for _, kind in extras) or None,
        compression=compression,
        compressionargs={"level": ZLIB_LEVEL} if compression == "zlib" else None,
        predictor=compression in ("zlib", "lzw") and not bilevel,  # a predictor works on whole samples
        # strips of some 256 kB, as tifffile cuts compressed ones: uncompressed, it wrote a master as one strip
        rowsperstrip=max(1, STRIP_BYTES // array[0].nbytes) if compression is None else None,
        metadata=None,
        software=False,
        resolution=tuple(dpi / per_inch for dpi in frame.dpi) if frame.dpi else None,
        resolutionunit=unit if frame.dpi else None,
        extratags=tags,
    )
    return buffer.getvalue()
