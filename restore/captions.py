"""What a frame's own metadata calls it: the caption its cataloguers wrote, for the people who know a collection by
its captions ("Dockers on the Elbe, Hamburg 1962"), not by its file names ("1962/press_0001.jpg").

Read from the first of the fields that hold one: IPTC Caption-Abstract (2:120, as picture desks write it), XMP
dc:description, then dc:title, EXIF or TIFF ImageDescription, then a PNG's Description or Title text. Bytes in,
text out: nothing here reads storage or pixels.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

from PIL import Image

MAX_CAPTION = 500  # characters kept: a caption, not an essay; the file keeps the whole text
_IPTC_CAPTION = (2, 120)
_IPTC_CHARSET = (1, 90)  # "ESC % G" says UTF-8; without it, most desks' software wrote Latin-1
_UTF8 = b"\x1b%G"
_XMP_FIELDS = ("description", "title")
_NAMESPACES = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/"}
_IMAGE_DESCRIPTION = 270
_PNG_FIELDS = ("Description", "Title")


def read_caption(iptc: bytes | None, xmp: bytes | None, exif: bytes | None,
                 png_text: dict[str, str] | None) -> str | None:
    """The frame's caption, on one line and at most MAX_CAPTION characters; None when it has none."""
    fields = [_readable(_iptc_caption, iptc), _readable(_xmp_caption, xmp), _readable(_exif_caption, exif),
              *((png_text or {}).get(key) for key in _PNG_FIELDS)]
    for found in fields:
        text = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", found or "").split())  # no control characters
        if text:  # a blank field is no caption: the next one may hold it
            return text if len(text) <= MAX_CAPTION else text[:MAX_CAPTION - 1] + "…"
    return None


def _readable(read, field: bytes | None) -> str | None:
    """`read(field)`, or None where the field cannot be read: a writer's odd metadata (an XMP declaring UTF-32, a
    broken record) gives no caption, never a frame not restored."""
    try:
        return read(field)
    except Exception:  # noqa: BLE001 - any parser's error on any bytes
        return None


def _iptc_caption(iptc: bytes | None) -> str | None:
    """Caption-Abstract from an IPTC-NAA record: datasets of 0x1C, record, dataset, a 2-byte length, the data."""
    datasets, position = {}, 0
    while iptc and position + 5 <= len(iptc) and iptc[position] == 0x1C:
        dataset = (iptc[position + 1], iptc[position + 2])
        length, position = int.from_bytes(iptc[position + 3:position + 5], "big"), position + 5
        if length & 0x8000:  # an extended length (binary data, never a caption): its size in the next bytes
            count = length & 0x7FFF
            length, position = int.from_bytes(iptc[position:position + count], "big"), position + count
        else:
            datasets.setdefault(dataset, iptc[position:position + length])
        position += length
    text = datasets.get(_IPTC_CAPTION)
    if not text:
        return None
    if datasets.get(_IPTC_CHARSET) == _UTF8:
        return text.decode("utf-8", "replace")
    try:
        return text.decode("utf-8")  # many desks write UTF-8 without saying so
    except UnicodeDecodeError:
        return text.decode("latin-1")


def _xmp_caption(xmp: bytes | None) -> str | None:
    """dc:description, then dc:title, of an XMP packet (their default language, or the first given)."""
    if not xmp or b"<!DOCTYPE" in xmp or b"<!ENTITY" in xmp:  # a packet never declares entities: refuse expansions
        return None
    start, end = xmp.find(b"<x:xmpmeta"), xmp.rfind(b"</x:xmpmeta>")
    root = ElementTree.fromstring(xmp[start:end + len(b"</x:xmpmeta>")] if 0 <= start < end else xmp.rstrip(b"\x00 "))
    for field in _XMP_FIELDS:
        for element in root.iterfind(f".//dc:{field}", _NAMESPACES):
            items = element.findall(".//rdf:li", _NAMESPACES)
            default = [item for item in items
                       if item.get("{http://www.w3.org/XML/1998/namespace}lang") == "x-default"]
            for item in default + items:
                if item.text and item.text.strip():
                    return item.text
    return None


def _exif_caption(exif: bytes | None) -> str | None:
    """ImageDescription of EXIF (a TIFF's own, as the frame keeps it, among them)."""
    if not exif:
        return None
    parsed = Image.Exif()
    parsed.load(exif)
    value = parsed.get(_IMAGE_DESCRIPTION)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value.strip("\x00 ") if isinstance(value, str) else ""
    return text if text and not _softwares_note(text) else None


# What programs write into ImageDescription about the file, not the picture: ImageJ's and OME's headers, a camera's
# make in place of a description
_SOFTWARES_NOTE = re.compile(r"ImageJ=|<\?xml|(OLYMPUS |KONICA MINOLTA |MINOLTA |SAMSUNG )?DIGITAL CAMERA$|SONY DSC$",
                             re.IGNORECASE)


def _softwares_note(text: str) -> bool:
    """Whether a description is a program's note (_SOFTWARES_NOTE, or a JSON object, as tifffile writes the
    array's shape) rather than a caption."""
    if text.startswith("{"):
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    return bool(_SOFTWARES_NOTE.match(text))
