"""Frames: lossless round trips at 8 and 16 bits, metadata kept, and a readable FrameError for every bad file."""
import dataclasses
import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, PngImagePlugin

from restore.captions import read_caption
from restore.frames import (
    DEFAULT_MAX_PIXELS,
    Frame,
    FrameError,
    decode_frame,
    decode_mask,
    encode_frame,
    encode_mask,
    extension_for,
)

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TEXT = {"Software": "restore 0.1", "restore:provenance": json.dumps({"id": "abc", "note": "réparé"})}


def exif_bytes(orientation=6) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    exif[271] = "ScanCo"
    return exif.tobytes()


def random_frame(dtype, channels, alpha, seed=0) -> Frame:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top, (6, 9, channels), dtype=dtype, endpoint=True)  # not square: rotation would show
    return Frame(
        pixels=pixels,
        alpha=rng.integers(0, top, (6, 9), dtype=dtype, endpoint=True) if alpha else None,
        format="PNG", mode="?", icc_profile=ICC, exif=exif_bytes(), dpi=(300.0, 300.0),
    )


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


LAYOUTS = [  # dtype, colour channels, alpha, expected mode after decoding
    (np.uint8, 1, False, "L"), (np.uint8, 1, True, "LA"), (np.uint8, 3, False, "RGB"), (np.uint8, 3, True, "RGBA"),
    (np.uint16, 1, False, "I;16"), (np.uint16, 3, False, "RGB;16"), (np.uint16, 3, True, "RGBA;16"),
]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("dtype, channels, alpha, mode", LAYOUTS)
def test_lossless_round_trip_keeps_pixels_alpha_and_metadata(fmt, dtype, channels, alpha, mode):
    frame = random_frame(dtype, channels, alpha)
    decoded = decode_frame(encode_frame(frame, frame.pixels, fmt))
    assert decoded.pixels.dtype == dtype and decoded.bit_depth == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(decoded.pixels, frame.pixels)
    if alpha:
        np.testing.assert_array_equal(decoded.alpha, frame.alpha)
    else:
        assert decoded.alpha is None
    assert (decoded.format, decoded.mode) == ({"png": "PNG", "tiff": "TIFF"}[fmt], mode)
    assert decoded.icc_profile == ICC
    exif = Image.Exif()
    exif.load(decoded.exif)
    assert (exif[274], exif[271]) == (6, "ScanCo")  # orientation kept, and pixels were not rotated (shape above)
    assert decoded.dpi == pytest.approx((300, 300), abs=0.01)


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg"])
def test_encoding_is_deterministic_and_carries_provenance(fmt):
    frame = random_frame(np.uint8, 3, False)
    data = encode_frame(frame, frame.pixels, fmt, text=TEXT)
    assert data == encode_frame(random_frame(np.uint8, 3, False), frame.pixels, fmt, text=dict(reversed(TEXT.items())))
    image = Image.open(io.BytesIO(data))
    if fmt == "png":
        written = image.info
    elif fmt == "tiff":  # ProcessingSoftware and ImageHistory
        written = {"Software": image.tag_v2[11], "restore:provenance": image.tag_v2[37395]}
    else:
        written = json.loads(image.info["comment"])
    assert {key: written[key] for key in TEXT} == TEXT


def tiff_tags(data: bytes) -> dict:
    """A TIFF's first-page tags, by code, with ASCII values as the bytes the file holds."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tags = {tag.code: tag.value for tag in tif.pages.first.tags.values()}
    with Image.open(io.BytesIO(data)) as image:  # Pillow reads ASCII as Latin-1: each character one byte
        tags.update({code: value.encode("latin-1") for code, value in image.tag_v2.items() if isinstance(value, str)})
    return tags


def scan(description: str = "Box 12, print 7", software: str | bool = "EPSON Scan 3.9") -> bytes:
    buffer = io.BytesIO()
    picture = np.random.default_rng(8).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    tifffile.imwrite(buffer, picture, photometric="rgb", description=description.encode(), software=software,
                     extratags=[(269, "s", 0, "reel-42", True), (285, "s", 0, "frame 1003", True)])
    return buffer.getvalue()


@pytest.mark.parametrize("caption", ["Box 12, print 7", "Boîte 12, épreuve 7"])
def test_a_tiffs_caption_and_software_stay_its_own_and_the_provenance_is_its_history(caption):
    """Collection tools read ImageDescription as the caption and Software as the scanner's: both come back byte for
    byte (UTF-8 too), and our provenance is in ProcessingSoftware and ImageHistory instead."""
    frame = decode_frame(scan(caption))
    tags = tiff_tags(encode_frame(frame, frame.pixels, "tiff", text=TEXT))
    assert (tags[270], tags[305]) == (caption.encode(), b"EPSON Scan 3.9")
    assert (tags[269], tags[285]) == (b"reel-42", b"frame 1003")
    assert (tags[11].decode(), tags[37395].decode()) == (TEXT["Software"], TEXT["restore:provenance"])
    png = decode_frame(encode_frame(frame, frame.pixels, "png", text=TEXT))
    exif = Image.Exif()
    exif.load(png.exif)
    assert (exif[270].encode("latin-1"), exif[305], exif[269]) == (caption.encode(), "EPSON Scan 3.9", "reel-42")


def test_re_restoring_an_output_keeps_the_caption_and_one_provenance():
    """An output fed back as input, ours now or an earlier version's (provenance JSON in ImageDescription, the
    input's description inside it): the caption comes back as the original's, the provenance is the new one only."""
    frame = decode_frame(scan())
    ours = encode_frame(frame, frame.pixels, "tiff", text=TEXT)
    earlier = scan(json.dumps({**TEXT, "ImageDescription": "Box 12, print 7"}, sort_keys=True), software=False)
    again = {"Software": "restore 0.2", "restore:provenance": json.dumps({"id": "def"})}
    for output, software in ((ours, b"EPSON Scan 3.9"), (earlier, None)):
        frame = decode_frame(output)
        tags = tiff_tags(encode_frame(frame, frame.pixels, "tiff", text=again))
        assert (tags[270], tags.get(305)) == (b"Box 12, print 7", software)
        assert (tags[11], tags[37395]) == (b"restore 0.2", b'{"id": "def"}')


XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:rights>© Museum, acc. 1987.4.12</dc:rights>'
       '</rdf:Description></rdf:RDF></x:xmpmeta>').encode()
IPTC = b"\x1c\x02\x00\x00\x02\x00\x04\x1c\x02t\x00\x0f(c) Museum 1987"  # record 2: version, copyright notice


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rights_metadata_survive_in_every_format_that_holds_them(dtype):
    """An archive's XMP (rights, creator, accession number), a TIFF's IPTC and a PNG's text chunks come back."""
    picture = np.random.default_rng(9).integers(0, np.iinfo(dtype).max, (6, 9, 3), dtype=dtype)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, picture, photometric="rgb",
                     extratags=[(700, 1, len(XMP), XMP, True), (33723, 7, len(IPTC), IPTC, True)])
    tiff = decode_frame(buffer.getvalue())
    assert (tiff.xmp, tiff.iptc) == (XMP, IPTC)
    written = tifffile.TiffFile(io.BytesIO(encode_frame(tiff, tiff.pixels, "tiff", text=TEXT))).pages.first.tags
    assert (written[700].value, written[33723].value) == (XMP, IPTC)
    png = decode_frame(encode_frame(tiff, tiff.pixels, "png", text=TEXT))  # 16-bit colour: OpenCV's path
    assert png.xmp == XMP
    titled = Frame(pixels=png.pixels, alpha=None, format="PNG", mode="?", icc_profile=None, exif=None, xmp=XMP,
                   png_text={"Title": "Reel 4, shot 12", "Author": "F. Lumière", "Software": "scanner 2.1"})
    again = decode_frame(encode_frame(titled, titled.pixels, "png", text=TEXT))
    assert again.png_text == {"Title": "Reel 4, shot 12", "Author": "F. Lumière", **TEXT}  # ours wins "Software"
    assert again.xmp == XMP
    if dtype == np.uint8:
        assert decode_frame(encode_frame(tiff, tiff.pixels, "jpeg", text=TEXT)).xmp == XMP


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_iptc_written_as_longs_as_photoshop_does_survives(byteorder):
    longs = np.frombuffer(IPTC + b"\0" * (-len(IPTC) % 4), dtype=byteorder + "u4")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((6, 9, 3), np.uint8), photometric="rgb", byteorder=byteorder,
                     extratags=[(33723, 4, len(longs), longs, True)])
    assert decode_frame(buffer.getvalue()).iptc.rstrip(b"\0") == IPTC


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_iptc_longs_swapped_by_a_byte_order_conversion_are_read_in_order(byteorder):
    """A tool that converts a TIFF's byte order swaps the bytes of each LONG, and so of Photoshop's IPTC record:
    ExifTool reads it turned back ("improperly byte-swapped"); the caption was lost and the output kept the swap."""
    record = IPTC + b"\x1c\x02\x78\x00\x17Market day, Hall Street"
    longs = np.frombuffer(record + b"\0" * (-len(record) % 4), dtype=byteorder + "u4").byteswap()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((6, 9, 3), np.uint8), photometric="rgb", byteorder=byteorder,
                     extratags=[(33723, 4, len(longs), longs, True)])
    frame = decode_frame(buffer.getvalue())
    assert frame.iptc.rstrip(b"\0") == record
    assert read_caption(frame.iptc, None, None, None) == "Market day, Hall Street"
    assert decode_frame(encode_frame(frame, frame.pixels, "tiff")).iptc.rstrip(b"\0") == record


def photoshop_jpeg(picture: np.ndarray, iptc: bytes, **options) -> bytes:
    """A JPEG with its IPTC record in a Photoshop APP13 segment, as Photoshop and picture desks' tools write it."""
    resources = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc + b"\x00" * (len(iptc) % 2)
    resources = b"8BIM\x04\x25\x00\x00" + struct.pack(">I", 16) + bytes(16) + resources  # a digest before it
    payload = b"Photoshop 3.0\x00" + resources
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=92, **options)
    data = buffer.getvalue()
    return data[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def test_a_jpegs_iptc_captions_and_bylines_reach_every_output_that_holds_them():
    """A newspaper's or agency's cataloguers write captions, bylines and credits as IPTC, which a JPEG keeps in a
    Photoshop block: every output lost it, though outputs are what is served and catalogued."""
    from PIL import IptcImagePlugin

    caption = "Hafenarbeiter, Hamburg 1962 — Foto: Hans Becker".encode()
    iptc = IPTC + b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption + b"\x1c\x02\x50\x00\x0bHans Becker"
    picture = np.random.default_rng(3).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    frame = decode_frame(photoshop_jpeg(picture, iptc))
    assert frame.iptc == iptc
    jpeg = encode_frame(frame, frame.pixels, "jpeg", text=TEXT)
    read = IptcImagePlugin.getiptcinfo(Image.open(io.BytesIO(jpeg)))  # as other tools read it
    assert read[(2, 120)] == caption and read[(2, 80)] == b"Hans Becker"
    assert decode_frame(jpeg).iptc == iptc and decode_frame(jpeg).xmp is None
    png = encode_frame(frame, frame.pixels, "png", text=TEXT)  # a JPEG's default output
    assert decode_frame(png).iptc == iptc and decode_frame(png).png_text == TEXT  # not one more text chunk
    tags = tifffile.TiffFile(io.BytesIO(encode_frame(frame, frame.pixels, "tiff"))).pages.first.tags
    assert tags[33723].value == iptc
    deep = dataclasses.replace(frame, pixels=frame.pixels.astype(np.uint16) * 257)  # 16-bit: OpenCV's PNG path
    assert decode_frame(encode_frame(deep, deep.pixels, "png")).iptc == iptc
    bare = Image.fromarray(picture)  # a PNG whose raw profile holds the bare record, as some tools write it
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type iptc", f"\niptc\n{len(iptc):8d}\n{iptc.hex()}\n", zip=True)
    buffer = io.BytesIO()
    bare.save(buffer, "PNG", pnginfo=info)
    assert decode_frame(buffer.getvalue()).iptc == iptc


def test_an_iptc_record_too_long_for_one_jpeg_segment_is_read_and_written_whole():
    """Photoshop and ExifTool split a long record (keywords, long captions) over several APP13 segments: read as one
    segment, the byline after the split was lost, and the truncated record went to every output."""
    caption = ("Hafenarbeiter an der Elbe. " * 2600).encode()  # about 70 KB
    record = IPTC + b"\x1c\x02\x78\x80\x04" + struct.pack(">I", len(caption)) + caption \
        + b"\x1c\x02\x50\x00\x0bHans Becker"
    frame = Frame(pixels=np.zeros((8, 8, 3), np.uint8), alpha=None, format="PNG", mode="RGB", icc_profile=None,
                  exif=None, iptc=record)
    jpeg = encode_frame(frame, frame.pixels, "jpeg")
    assert jpeg.count(b"Photoshop 3.0\x00") == 2  # split, as Photoshop splits it
    assert decode_frame(jpeg).iptc == record


def test_a_provenance_comment_is_the_one_readers_take_whatever_comments_a_kept_jpeg_had():
    """libjpeg's wrjpgcom puts a comment just before the image data: after it, ours was not the comment readers
    take, and verify found the output's provenance unreadable."""
    from restore.frames import jpeg_with_provenance
    from restore.verify import read_provenance

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "JPEG", comment=b"scanned at station 3")
    data = buffer.getvalue()
    scan = data.index(b"\xff\xda")
    late = data[:scan] + b"\xff\xfe\x00\x0elate comment" + data[scan:]  # as wrjpgcom writes it
    for source in (data, late):
        kept = jpeg_with_provenance(source, TEXT)
        assert read_provenance(kept) == TEXT
        assert np.array_equal(decode_frame(kept).pixels, decode_frame(source).pixels)


def test_an_iptc_text_this_cannot_read_is_kept_as_the_text_it_was():
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type iptc", "\niptc\n       3\nabc\n")  # odd hex: no record this can read
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG", pnginfo=info)
    frame = decode_frame(buffer.getvalue())
    assert frame.iptc is None and frame.png_text == {"Raw profile type iptc": "\niptc\n       3\nabc\n"}
    assert decode_frame(encode_frame(frame, frame.pixels, "png")).png_text == frame.png_text  # written as it came


def test_a_jpeg_that_states_no_resolution_gets_none_in_its_outputs():
    """A JPEG with EXIF but no resolution reads as 72 dpi in Pillow: written out, the outputs claimed a resolution
    the scan never stated."""
    exif = Image.Exif()
    exif[315] = "Hans Becker"  # Artist, no XResolution
    picture = np.zeros((8, 8, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", exif=exif.tobytes())
    frame = decode_frame(buffer.getvalue())
    assert frame.dpi is None
    assert "dpi" not in Image.open(io.BytesIO(encode_frame(frame, frame.pixels, "png"))).info
    assert Image.open(io.BytesIO(encode_frame(frame, frame.pixels, "jpeg"))).info["jfif_unit"] == 0
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", dpi=(600, 600))
    assert decode_frame(buffer.getvalue()).dpi == (600, 600)  # a stated one is kept
    exif = Image.Exif()
    exif[0x011A] = exif[0x011B] = 300  # XResolution, YResolution, and no unit: inches, EXIF's default
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", exif=exif.tobytes())
    assert decode_frame(buffer.getvalue()).dpi == (300, 300)  # Pillow read 72


def test_an_xmp_too_long_for_a_jpeg_is_left_out_of_it_not_the_frame():
    """One JPEG segment holds 64 KB of XMP; a larger packet (Photoshop's often are) cannot fail the frame."""
    frame = random_frame(np.uint8, 3, False)
    frame.xmp = XMP + b" " * 70_000
    assert decode_frame(encode_frame(frame, frame.pixels, "jpeg")).xmp is None
    png = encode_frame(frame, frame.pixels, "png")
    assert decode_frame(png).xmp == frame.xmp  # PNG and TIFF hold it
    assert b"iTXtXML:com.adobe.xmp\x00\x00\x00" in png  # uncompressed, as the XMP specification requires


def test_a_16bit_png_keeps_the_text_written_after_its_image_data():
    """Such a PNG is decoded by OpenCV, so its late chunks are read apart from Pillow."""
    from restore.frames import _png_chunk

    frame = random_frame(np.uint16, 3, False)
    frame.icc_profile = frame.exif = None
    data = encode_frame(frame, frame.pixels, "png")
    late = (_png_chunk(b"tEXt", b"Copyright\0(c) Museum") + _png_chunk(b"zTXt", b"Title\0\0" + zlib.compress(b"Reel 4"))
            + _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + XMP))
    decoded = decode_frame(data[:-12] + late + data[-12:])  # before IEND
    assert decoded.png_text == {"Copyright": "(c) Museum", "Title": "Reel 4"} and decoded.xmp == XMP


def test_text_after_a_16bit_pngs_image_data_stops_at_pillows_limit_and_long_text_is_written_compressed(
        monkeypatch):
    """A few kilobytes of zTXt inflate to gigabytes: the late chunks share Pillow's budget for a file's text (made
    small here), and text carried to an output is compressed, so it does not grow the file by its inflated size."""
    from PIL import PngImagePlugin

    from restore.frames import _png_chunk

    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 100_000)
    frame = random_frame(np.uint16, 3, False)
    frame.icc_profile = frame.exif = None
    data = encode_frame(frame, frame.pixels, "png")
    inflating = zlib.compress(b"reel 4 " * 8_000, 9)  # 56,000 characters in a few hundred bytes
    late = b"".join(_png_chunk(b"zTXt", f"Note{i}".encode() + b"\0\0" + inflating) for i in range(4))
    decoded = decode_frame(data[:-12] + late + data[-12:])
    assert list(decoded.png_text) == ["Note0"]  # the second would pass 100,000 characters
    for depth in (np.uint16, np.uint8):  # OpenCV's writer and Pillow's
        frame = random_frame(depth, 3, False)
        frame.icc_profile = frame.exif = None
        bare = len(encode_frame(frame, frame.pixels, "png"))
        frame.png_text = decoded.png_text
        written = encode_frame(frame, frame.pixels, "png")
        assert decode_frame(written).png_text == decoded.png_text
        assert len(written) - bare < 2_000  # the note's 56,000 characters, compressed


def test_a_pngs_gamma_chromaticities_srgb_and_significant_bits_are_carried_to_its_output():
    """Without gAMA and cHRM a colour-managed viewer shows a gamma-1.8 master as sRGB; sBIT says a 12-bit scan's
    low bits are padding. Pillow reads them only in part and writes none back."""
    from restore.frames import _png_chunk

    colour = (_png_chunk(b"gAMA", struct.pack(">I", 55556)) + _png_chunk(b"cHRM", struct.pack(">8I", *range(8)))
              + _png_chunk(b"sRGB", b"\x00"))
    for depth, bits in ((np.uint8, 5), (np.uint16, 12)):
        frame = random_frame(depth, 3, False)
        frame.icc_profile = frame.exif = None
        data = encode_frame(frame, frame.pixels, "png")
        data = data[:33] + colour + _png_chunk(b"sBIT", bytes([bits] * 3)) + data[33:]  # after IHDR
        decoded = decode_frame(data)
        written = encode_frame(decoded, decoded.pixels, "png")
        assert decode_frame(written).png_colour == decoded.png_colour == colour + _png_chunk(b"sBIT", bytes([bits] * 3))
        image = Image.open(io.BytesIO(written))
        assert image.info["gamma"] == 0.55556 and image.info["chromaticity"] == tuple(i / 1e5 for i in range(8))
    rgba = random_frame(np.uint8, 3, True)  # a palette with transparency becomes RGBA: a 3-sample sBIT no longer fits
    rgba.icc_profile = rgba.exif = None
    rgba.png_colour = colour + _png_chunk(b"sBIT", b"\x05\x05\x05")
    assert decode_frame(encode_frame(rgba, rgba.pixels, "png")).png_colour == colour


def test_16bit_colour_png_carries_provenance_and_stays_deterministic():
    frame = random_frame(np.uint16, 3, True)
    data = encode_frame(frame, frame.pixels, "png", text=TEXT)
    assert data == encode_frame(frame, frame.pixels.copy(), "png", text=TEXT)
    image = Image.open(io.BytesIO(data))
    assert {key: image.info[key] for key in TEXT} == TEXT
    assert image.info["icc_profile"] == ICC


def test_16bit_gradient_keeps_all_its_levels():
    gradient = np.linspace(0, 65535, 4096, dtype=np.uint16).reshape(64, 64, 1).repeat(3, axis=2)
    frame = Frame(gradient, None, "TIFF", "RGB;16", None, None)
    for fmt in ("png", "tiff"):
        assert len(np.unique(decode_frame(encode_frame(frame, gradient, fmt)).pixels)) == 4096


def test_jpeg_is_a_lossy_8bit_opt_in():
    """A web or access copy: JPEG at the job's quality, a 16-bit scan rounded to 8 bits (it was refused, so a
    collection of 16-bit master scans could have no JPEG copies at all)."""
    frame = random_frame(np.uint8, 3, False)
    decoded = decode_frame(encode_frame(frame, frame.pixels, "jpg"))
    assert decoded.format == "JPEG" and decoded.pixels.shape == frame.pixels.shape
    assert decoded.icc_profile == ICC and decoded.exif is not None
    assert len(encode_frame(frame, frame.pixels, "jpeg", jpeg_quality=60)) < len(encode_frame(frame, frame.pixels,
                                                                                              "jpeg"))
    smooth = np.broadcast_to(np.linspace(0, 65_535, 32, dtype=np.uint16)[None, :, None], (16, 32, 1)).copy()
    deep = dataclasses.replace(random_frame(np.uint16, 1, False), pixels=smooth)
    eight = decode_frame(encode_frame(deep, deep.pixels, "jpeg")).pixels
    assert eight.dtype == np.uint8 and np.abs(eight.astype(int) - smooth / 257).max() <= 2
    with pytest.raises(FrameError, match="alpha"):
        encode_frame(random_frame(np.uint8, 3, True), random_frame(np.uint8, 3, True).pixels, "jpeg")


def test_jpeg_input_keeps_exif_without_rotating_pixels():
    pixels = np.random.default_rng(1).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    decoded = decode_frame(save(Image.fromarray(pixels), "JPEG", exif=exif_bytes(8), icc_profile=ICC))
    assert decoded.pixels.shape == (6, 9, 3) and decoded.mode == "RGB"
    assert decoded.exif.startswith(b"Exif\x00\x00") and decoded.icc_profile == ICC


def test_encode_refuses_pixels_that_do_not_match_the_frame():
    frame = random_frame(np.uint16, 3, False)
    with pytest.raises(FrameError, match="uint8"):
        encode_frame(frame, frame.pixels.astype(np.uint8), "png")


def test_output_formats_and_extensions():
    assert [extension_for(f) for f in ("png", "tiff", "TIF", "jpeg", "jpg")] == [".png", ".tif", ".tif", ".jpg", ".jpg"]
    with pytest.raises(FrameError, match="unknown output format 'webp'"):
        extension_for("webp")


# --- sources Pillow reads in a different shape ------------------------------------------------------------------


def test_palette_image_is_expanded_to_rgb_and_keeps_transparency():
    palette = Image.new("P", (5, 4))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    palette.putpixel((1, 1), 1)
    decoded = decode_frame(save(palette, "PNG"))
    assert (decoded.mode, decoded.pixels.shape, decoded.alpha) == ("P", (4, 5, 3), None)
    assert decoded.pixels[1, 1].tolist() == [255, 0, 0]
    transparent = decode_frame(save(palette, "PNG", transparency=0))
    assert transparent.alpha is not None and transparent.alpha[0, 0] == 0 and transparent.alpha[1, 1] == 255


def test_palette_tiff_is_expanded_to_rgb():
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[:, 1] = [65535, 0, 0]
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, indices, photometric="palette", colormap=colormap)
    decoded = decode_frame(buffer.getvalue())
    assert decoded.mode == "P" and decoded.pixels[0, 1].tolist() == [255, 0, 0]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_one_bit_images_become_8bit_grayscale(fmt):
    bits = Image.fromarray(np.array([[0, 255, 0], [255, 0, 0]], dtype=np.uint8)).convert("1")
    decoded = decode_frame(save(bits, fmt, **({"compression": "group4"} if fmt == "TIFF" else {})))
    assert decoded.mode == "1" and decoded.pixels.dtype == np.uint8
    assert decoded.pixels[..., 0].tolist() == [[0, 255, 0], [255, 0, 0]]


def test_lzw_compressed_tiff_from_other_software_decodes():
    pixels = np.random.default_rng(2).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    decoded = decode_frame(save(Image.fromarray(pixels), "TIFF", compression="tiff_lzw", icc_profile=ICC))
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.icc_profile == ICC


@pytest.mark.parametrize("dtype, planar, compression, written", [
    (dtype, planar, compression, written)
    for dtype, planar in [(np.uint8, "contig"), (np.uint16, "contig"), (np.uint8, "separate")]
    for compression, written in [(None, "NONE"), ("lzw", "LZW"), ("packbits", "PACKBITS"), ("zlib", "ADOBE_DEFLATE")]
] + [(np.uint8, "contig", "jpeg", "ADOBE_DEFLATE")])
def test_a_tiff_keeps_its_lossless_compression_and_a_lossy_one_becomes_deflate(dtype, planar, compression, written):
    """Collections set policies for their masters (uncompressed, or LZW): a restored TIFF kept the scan's pixels
    and metadata but came back Deflate-compressed whatever the scan was. A JPEG-compressed TIFF is not encoded
    with a loss again."""
    picture = np.random.default_rng(7).integers(0, 200, (3, 12, 16) if planar == "separate" else (12, 16, 3))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, picture.astype(dtype), photometric="rgb", planarconfig=planar, compression=compression)
    frame = decode_frame(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(encode_frame(frame, frame.pixels, "tiff"))) as tif:
        page = tif.pages.first
        assert page.compression.name == written
        np.testing.assert_array_equal(page.asarray(), frame.pixels)
    as_png = decode_frame(encode_frame(frame, frame.pixels, "png"))  # another format's input: Deflate, as before
    with tifffile.TiffFile(io.BytesIO(encode_frame(as_png, as_png.pixels, "tiff"))) as tif:
        assert tif.pages.first.compression.name == "ADOBE_DEFLATE"


def test_an_uncompressed_tiff_master_is_written_in_strips():
    """tifffile writes an uncompressed image as one strip: a master of hundreds of megabytes, read whole."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((600, 500, 3), np.uint16), photometric="rgb", rowsperstrip=20)
    frame = decode_frame(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(encode_frame(frame, frame.pixels, "tiff"))) as tif:
        page = tif.pages.first
        assert page.compression.name == "NONE" and page.rowsperstrip == 87  # rows of 3,000 bytes: 256 kB a strip
        assert len(page.dataoffsets) == 7


def test_a_tiff_with_a_smaller_preview_page_reads_its_first_page():
    pages = [Image.new("L", (8, 6), 10), Image.new("L", (2, 2), 200)]
    decoded = decode_frame(save(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert decoded.pixels.shape == (6, 8, 1) and decoded.pixels.max() == 10


def four_sample_tiff(array: np.ndarray, extra: str) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="rgb", extrasamples=(extra,))
    return buffer.getvalue()


@pytest.mark.parametrize("dtype, mode", [(np.uint8, "RGBI"), (np.uint16, "RGBI;16")])
def test_rgbi_scan_keeps_its_infrared_plane_apart_from_colour_and_alpha(dtype, mode):
    array = np.random.default_rng(3).integers(0, np.iinfo(dtype).max, (6, 9, 4), dtype=dtype, endpoint=True)
    rgbi = decode_frame(four_sample_tiff(array, "unspecified"))  # ExtraSamples 0: film scanners' infrared
    assert rgbi.mode == mode and rgbi.alpha is None
    np.testing.assert_array_equal(rgbi.pixels, array[..., :3])
    np.testing.assert_array_equal(rgbi.infrared, array[..., 3])
    rgba = decode_frame(four_sample_tiff(array, "unassalpha"))  # ExtraSamples 2: alpha, not infrared
    assert rgba.infrared is None
    np.testing.assert_array_equal(rgba.alpha, array[..., 3])
    again = decode_frame(encode_frame(rgbi, rgbi.pixels, "tiff"))  # TIFF writes the plane back, still infrared
    assert again.mode == mode and again.alpha is None
    np.testing.assert_array_equal(again.infrared, array[..., 3])
    as_png = decode_frame(encode_frame(rgbi, rgbi.pixels, "png"))  # PNG cannot hold it: colour only, no alpha
    assert as_png.infrared is None and as_png.alpha is None
    np.testing.assert_array_equal(as_png.pixels, array[..., :3])


def test_a_png_colour_key_becomes_alpha_so_clear_pixels_stay_clear():
    for mode, key, shape in (("L", 0, (4, 5)), ("RGB", (0, 0, 0), (4, 5, 3))):
        array = np.full(shape, 90, np.uint8)
        array[0, 0] = 0  # the tRNS colour: fully transparent
        decoded = decode_frame(save(Image.fromarray(array, mode), "PNG", transparency=key))
        assert decoded.alpha is not None and decoded.alpha[0, 0] == 0 and (decoded.alpha > 0).sum() == 19
        again = decode_frame(encode_frame(decoded, decoded.pixels, "png"))
        np.testing.assert_array_equal(again.alpha, decoded.alpha)


def test_a_16bit_grey_pngs_transparent_grey_is_kept():
    """Pillow keeps a 16-bit grey PNG's tRNS apart from any alpha channel; it was dropped from outputs."""
    grey = (np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)
    decoded = decode_frame(save(Image.fromarray(grey), "PNG", transparency=400))
    written = Image.open(io.BytesIO(encode_frame(decoded, decoded.pixels, "png")))
    assert written.mode == "I;16" and written.info["transparency"] == 400
    np.testing.assert_array_equal(np.asarray(written), grey)


def test_premultiplied_tiff_alpha_is_written_back_premultiplied():
    array = np.random.default_rng(4).integers(0, 255, (6, 9, 4), dtype=np.uint8, endpoint=True)
    frame = decode_frame(four_sample_tiff(array, "assocalpha"))
    assert frame.mode == "RGBa" and frame.premultiplied
    with tifffile.TiffFile(io.BytesIO(encode_frame(frame, frame.pixels, "tiff"))) as tif:
        assert tif.pages.first.extrasamples == (tifffile.EXTRASAMPLE.ASSOCALPHA,)
        np.testing.assert_array_equal(tif.pages.first.asarray(), array)
    with pytest.raises(FrameError, match="premultiplied"):  # PNG alpha is always straight: refused, not changed
        encode_frame(frame, frame.pixels, "png")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_planar_tiff_that_pillow_cannot_open_is_read_with_its_resolution(dtype):
    planes = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, (3, 5, 7), dtype=dtype, endpoint=True)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, photometric="rgb", planarconfig="separate", resolution=(300, 300),
                     resolutionunit="INCH")
    frame = decode_frame(buffer.getvalue())
    np.testing.assert_array_equal(frame.pixels, np.moveaxis(planes, 0, -1))
    assert frame.format == "TIFF" and frame.dpi == pytest.approx((300, 300))


@pytest.mark.parametrize("unit, planar", [("CENTIMETER", "contig"), ("CENTIMETER", "separate"), ("INCH", "contig")])
def test_a_tiffs_resolution_keeps_its_unit_and_values(unit, planar):
    """Archives record the unit they scanned at: 118.1 pixels per centimetre stays that, not 299.974 dpi."""
    resolution = {"CENTIMETER": (1181, 10), "INCH": (300, 1)}[unit]
    picture = np.zeros((3, 5, 7) if planar == "separate" else (5, 7, 3), np.uint8)  # separate: read by tifffile
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, picture, photometric="rgb", planarconfig=planar, resolution=(resolution, resolution),
                     resolutionunit=unit)
    frame = decode_frame(buffer.getvalue())
    assert frame.dpi == pytest.approx((300, 300) if unit == "INCH" else (299.974, 299.974))
    tags = tiff_tags(encode_frame(frame, frame.pixels, "tiff"))
    assert (tags[282], tags[283], tags[296]) == (resolution, resolution, tifffile.RESUNIT[unit])


def test_a_multi_page_tiff_is_refused_but_a_preview_page_is_not_a_page():
    picture = np.random.default_rng(6).integers(0, 255, (8, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([picture, picture]), photometric="rgb")
    with pytest.raises(FrameError, match="multi-page TIFF with 2 full-size pages"):
        decode_frame(buffer.getvalue())
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        tif.write(picture, photometric="rgb")
        tif.write(picture[::2, ::2], photometric="rgb", subfiletype=1)  # a reduced-resolution preview
    np.testing.assert_array_equal(decode_frame(buffer.getvalue()).pixels, picture)


def test_a_float_tiff_is_refused_with_the_reason():
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((4, 5, 3), np.float32), photometric="rgb")
    with pytest.raises(FrameError, match="float32 are not supported"):
        decode_frame(buffer.getvalue())


# --- bad input ----------------------------------------------------------------------------------------------------


def test_animated_gif_is_refused():
    frames = [Image.new("RGB", (4, 4), (80 * i, 0, 0)) for i in range(3)]
    with pytest.raises(FrameError, match="animated GIF with 3 frames"):
        decode_frame(save(frames[0], "GIF", save_all=True, append_images=frames[1:]))


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_is_refused(fmt):
    with pytest.raises(FrameError, match="CMYK"):
        decode_frame(save(Image.new("CMYK", (4, 4), (0, 50, 100, 0)), fmt))


def test_16bit_grayscale_with_alpha_is_refused():
    rows = b"".join(b"\x00" + b"\x12\x34\xff\xff" * 3 for _ in range(2))
    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 16, 4, 0, 0, 0))
           + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    with pytest.raises(FrameError, match="16-bit grayscale with alpha"):
        decode_frame(png)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` but whose data is a few bytes: decoding it would fail."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(FrameError, match=r"30000x30000 = 900.0 MP, over the limit of 180.0 MP \(raise max_pixels"):
        decode_frame(huge_png_header(30000, 30000))
    assert DEFAULT_MAX_PIXELS > 100_000_000  # real 100-megapixel scans pass by default


def test_raised_pixel_limit_lets_large_images_through_pillows_own_limit():
    # past the header check, decoding is attempted (and fails only because the data is missing)
    with pytest.raises(FrameError, match="corrupt or truncated PNG"):
        decode_frame(huge_png_header(20000, 10000), max_pixels=250_000_000)
    small = random_frame(np.uint8, 3, False)
    with pytest.raises(FrameError, match=r"9x6 = 54 pixels, over the limit of 50 pixels"):  # not "0.0 MP"
        decode_frame(encode_frame(small, small.pixels), max_pixels=50)


def valid_files() -> dict[str, bytes]:
    pixels = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    sixteen = Frame(pixels.astype(np.uint16) * 257, None, "PNG", "RGB;16", None, None)
    return {"PNG": save(Image.fromarray(pixels), "PNG"), "JPEG": save(Image.fromarray(pixels), "JPEG"),
            "TIFF": save(Image.fromarray(pixels), "TIFF", compression="tiff_lzw"),
            "16-bit PNG": encode_frame(sixteen, sixteen.pixels, "png"),
            "16-bit TIFF": encode_frame(sixteen, sixteen.pixels, "tiff")}


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "TIFF", "16-bit PNG", "16-bit TIFF"])
def test_truncated_files_raise_a_readable_frame_error(kind):
    data = valid_files()[kind]
    for cut in (len(data) // 2, 40, 12):
        with pytest.raises(FrameError, match="corrupt|truncated"):
            decode_frame(data[:cut])


@pytest.mark.parametrize(
    "data, reason",
    [(b"", r"empty file \(0 bytes\)"), (b"hello, this is not a frame", r"not an image \(starts with b'hello, this"),
     (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt, truncated")],
)
def test_non_images_raise_a_readable_frame_error(data, reason):
    with pytest.raises(FrameError, match=reason):
        decode_frame(data)


# --- masks ----------------------------------------------------------------------------------------------------------


def test_mask_round_trip():
    mask = np.zeros((6, 9), dtype=bool)
    mask[2:4, 3:7] = True
    data = encode_mask(mask)
    assert Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(decode_mask(data), mask)


def test_masks_in_colour_and_on_transparent_layers():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[1, 2] = (200, 0, 0)  # a red stroke
    assert decode_mask(save(Image.fromarray(rgb), "PNG")).nonzero() == ((1,), (2,))
    layer = np.zeros((4, 4, 4), dtype=np.uint8)
    layer[..., :3] = 255  # white everywhere, but clear except where painted
    layer[3, 0, 3] = 255
    assert decode_mask(save(Image.fromarray(layer), "PNG")).nonzero() == ((3,), (0,))
    sixteen = np.zeros((3, 3), dtype=np.uint16)
    sixteen[0, 0] = 1
    assert decode_mask(save(Image.fromarray(sixteen), "PNG")).sum() == 1


def test_a_mask_saved_as_jpeg_marks_what_was_painted_not_the_ringing_around_it():
    """Masks get exported as JPEG; its ringing (faint levels in the 8x8 blocks a stroke crosses) marked 74 % more
    pixels than were painted, and those clean pixels were repainted. Anti-aliased rims and masks a program saves as
    0 and 1 still count."""
    from PIL import ImageDraw

    painted = Image.new("L", (320, 240))
    draw = ImageDraw.Draw(painted)
    draw.line([(40, 20), (60, 220)], fill=255, width=4)  # a scratch
    draw.ellipse([200, 100, 230, 130], fill=255)  # a blotch
    for x in range(100, 300, 25):
        draw.ellipse([x, 200, x + 4, 204], fill=255)  # dust
    truth = np.asarray(painted) > 0
    marked = decode_mask(save(painted.convert("RGB"), "JPEG", quality=90))
    assert (marked & ~truth).sum() <= 0.05 * truth.sum() and (truth & ~marked).sum() <= 0.05 * truth.sum()

    soft = Image.new("L", (1280, 960))
    ImageDraw.Draw(soft).line([(160, 80), (240, 880)], fill=255, width=16)
    stroke = np.asarray(soft.resize((320, 240), Image.Resampling.BOX))  # anti-aliased: its rim in grey levels
    assert decode_mask(save(Image.fromarray(stroke), "PNG")).sum() >= 0.9 * (stroke > 0).sum()
    assert np.array_equal(decode_mask(save(Image.fromarray(truth.astype(np.uint8)), "PNG")), truth)  # 0 and 1

    # the same masks drawn black on white (an editor's layer mask), read with `inverted`
    normal = decode_mask(save(Image.fromarray(stroke), "PNG"))
    assert np.array_equal(decode_mask(save(Image.fromarray(255 - stroke), "PNG"), inverted=True), normal)
    dark = decode_mask(save(Image.fromarray(255 - np.asarray(painted)).convert("RGB"), "JPEG", quality=90),
                       inverted=True)
    assert (dark != truth).sum() <= 0.05 * truth.sum()
    assert np.array_equal(decode_mask(save(Image.fromarray(1 - truth.astype(np.uint8)), "PNG"), inverted=True), truth)


def test_strokes_on_a_transparent_layer_mark_what_is_painted_whatever_its_colour():
    """Black is an editor's default brush: black strokes on a transparent layer read as nothing masked, and the
    frame came back unchanged and "ok". On a layer, what is painted is the mask, with or without masks.invert."""
    for colour in ((0, 0, 0), (60, 60, 60), (255, 0, 0)):
        layer = np.zeros((40, 60, 4), np.uint8)
        layer[..., :3] = 255  # what the layer hides may hold any colour
        layer[10:14, 5:50] = (*colour, 255)  # a stroke, painted
        data = save(Image.fromarray(layer), "PNG")
        assert decode_mask(data).sum() == decode_mask(data, inverted=True).sum() == 4 * 45, colour
    # a black layer with white strokes is read by its colour where it shows, though part of it is transparent:
    # erased with an eraser, a layer smaller than the canvas, a single clear pixel
    for clear in ((slice(0, 40), slice(50, 60)), (slice(0, 40), slice(24, 60)), (slice(0, 1), slice(0, 1))):
        layer = np.zeros((40, 60, 4), np.uint8)
        layer[..., 3] = 255
        layer[30:32, 2:20, :3] = 255  # a white stroke on the black
        layer[clear + (3,)] = 0
        assert decode_mask(save(Image.fromarray(layer), "PNG")).sum() == 2 * 18, clear
    grey_layer = np.zeros((40, 60, 2), np.uint8)
    grey_layer[20:22, 10:30, 1] = 255  # black paint on a grey layer with alpha
    assert decode_mask(save(Image.fromarray(grey_layer, "LA"), "PNG")).sum() == 2 * 20


def test_a_decoders_warning_names_the_frame_it_is_about(caplog):
    """Pillow warns of a broken EXIF block and reads on; printed bare, a night's log cannot say which file."""
    from restore.pipeline import _warnings_named

    exif = Image.Exif()
    exif[315] = "Hans Becker, Hamburger Abendblatt"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    tiff = data.find(b"Exif\x00\x00") + 6
    order = "<" if data[tiff:tiff + 2] == b"II" else ">"
    data[tiff + 14:tiff + 18] = struct.pack(order + "I", 5000)  # the Artist tag claims more bytes than there are
    with caplog.at_level("WARNING"), _warnings_named("1962/press_0007.jpg"):
        frame = decode_frame(bytes(data))
    assert frame.pixels.shape == (8, 8, 3)  # read on, as before
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["1962/press_0007.jpg: Tag data larger than file. Skipping tag 315"]  # once, named
    caplog.clear()
    with caplog.at_level("WARNING"), pytest.raises(FrameError), _warnings_named("1962/press_0008.jpg"):
        warnings.warn("Truncated File Read")  # and then the frame fails: the warning says most
        raise FrameError("corrupt or truncated JPEG")
    assert [record.getMessage() for record in caplog.records] == ["1962/press_0008.jpg: Truncated File Read"]
