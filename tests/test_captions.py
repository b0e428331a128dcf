"""Captions from a frame's own metadata: what the report and the manifest show a curator beside each file name."""
import struct

from PIL import Image

from restore.captions import MAX_CAPTION, read_caption


def iptc(*datasets: tuple[int, int, bytes]) -> bytes:
    return b"".join(b"\x1c" + bytes([record, number]) + struct.pack(">H", len(data)) + data
                    for record, number, data in datasets)


def xmp(description: str = "", title: str = "") -> bytes:
    def alt(name: str, text: str) -> str:
        return (f'<dc:{name}><rdf:Alt><rdf:li xml:lang="de">nur Deutsch</rdf:li>'
                f'<rdf:li xml:lang="x-default">{text}</rdf:li></rdf:Alt></dc:{name}>') if text else ""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            f'xmlns:dc="http://purl.org/dc/elements/1.1/">{alt("description", description)}{alt("title", title)}'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def exif(description: str) -> bytes:
    tags = Image.Exif()
    tags[270] = description
    return b"Exif\x00\x00" + tags.tobytes()


def test_the_caption_cataloguers_wrote_is_read_from_the_field_that_holds_it_first():
    desk = iptc((1, 90, b"\x1b%G"), (2, 80, b"Hans Becker"), (2, 120, "Hafenarbeiter, Hamburg 1962".encode()))
    assert read_caption(desk, xmp("Dockers"), exif("SCAN 0001"), {"Title": "t"}) == "Hafenarbeiter, Hamburg 1962"
    assert read_caption(None, xmp("Dockers, Hamburg"), exif("SCAN 0001"), None) == "Dockers, Hamburg"  # x-default
    assert read_caption(None, xmp(title="Hamburg harbour"), exif("SCAN 0001"), None) == "Hamburg harbour"
    assert read_caption(None, None, exif("Box 12, print 7"), {"Title": "t"}) == "Box 12, print 7"
    assert read_caption(None, None, None, {"Author": "F. Lumière", "Title": "Reel 4"}) == "Reel 4"
    assert read_caption(iptc((2, 80, b"Hans Becker")), None, None, {}) is None  # a byline is no caption


def test_what_software_writes_in_a_description_is_no_caption():
    """tifffile writes each TIFF's array shape as JSON into ImageDescription, ImageJ and OME their headers, and
    cameras their make: the report showed '{"shape": [360, 480, 3]}' beside a master's name."""
    for note in ('{"shape": [360, 480, 3]}', "ImageJ=1.54f\nimages=1\n", '<?xml version="1.0"?><OME/>',
                 "OLYMPUS DIGITAL CAMERA         ", "SONY DSC", "Digital Camera"):
        assert read_caption(None, None, exif(note), None) is None, note
        assert read_caption(None, None, exif(note), {"Title": "Reel 4"}) == "Reel 4"  # the next field that has one
    assert read_caption(None, None, exif("A digital camera on a tripod, 1998"), None) == \
        "A digital camera on a tripod, 1998"
    assert read_caption(None, None, exif("{Smith family}"), None) == "{Smith family}"


def test_a_caption_is_one_safe_line_in_its_own_characters():
    latin = iptc((2, 120, "Café Müller, Köln".encode("latin-1")))  # older desk software, no character set given
    assert read_caption(latin, None, None, None) == "Café Müller, Köln"
    spoofing = iptc((2, 120, "Line one\r\n\x1b[2Kline two\tend".encode()))  # a terminal's escapes, a CSV's line
    assert read_caption(spoofing, None, None, None) == "Line one [2Kline two end"
    long = read_caption(None, None, exif("x" * 2000), None)
    assert len(long) == MAX_CAPTION and long.endswith("…")


def test_broken_or_hostile_metadata_gives_no_caption_and_no_error():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')
    assert read_caption(None, bomb, None, None) is None
    assert read_caption(b"\x1c\x02\x78\xff\xff", b"<x:xmpmeta", b"Exif\x00\x00II*\x00", None) is None
    assert read_caption(iptc((2, 120, b"")), xmp(), None, {"Title": ""}) is None
    for encoding in ("UTF-32", "bogus"):  # no x:xmpmeta, and an encoding the XML parser refuses or does not know
        odd = f'<?xml version="1.0" encoding="{encoding}"?><rdf:RDF/>'.encode()
        assert read_caption(None, odd, exif("Box 12"), None) == "Box 12"  # the next field, not an error


def test_a_blank_or_binary_field_does_not_hide_the_caption_after_it():
    assert read_caption(iptc((2, 120, b" \x00 ")), xmp("Dockers"), None, None) == "Dockers"
    binary = b"\x1c\x02\xca\x80\x04" + struct.pack(">I", 3) + b"\x00\x01\x02"  # an extended-length dataset
    assert read_caption(binary + iptc((2, 120, b"Hamburg")), None, None, None) == "Hamburg"
    bare = xmp("Elbe")  # an RDF packet alone, as some writers store it, padded with NULs
    bare = bare[bare.index(b"<rdf:RDF"):bare.index(b"</x:xmpmeta>")] + b"\x00" * 8
    assert read_caption(None, bare, None, None) == "Elbe"
