"""DPX and EXR film scans: generated frames restored and written back, exact outside the mask, headers kept."""
import json
import shutil
import sys

import numpy as np
import pytest

from restore.film import LOG_SCAN, _computed_view, to_view
from restore.frames import Frame, FrameError, decode_frame, encode_frame
from restore.restorers import build_restorer
from restore.spec import RestorerSettings
from restore.verify import read_provenance

HEIGHT, WIDTH = 40, 56
PROVENANCE = {"Software": "restore 0.1.0", "restore:provenance": json.dumps({"id": "ab" * 16, "input_key": "r/f.dpx"})}
TIMECODE = [0x01020304, 0]  # 01:02:03:04, SMPTE BCD


@pytest.fixture
def oiio():
    return pytest.importorskip("OpenImageIO", reason="film formats need the film extra (OpenImageIO)")


def write_film(oiio, tmp_path, name: str, pixels: np.ndarray, pixel_type: str, channels, **attributes) -> bytes:
    """A film file written by OpenImageIO itself, as a scanner's software would."""
    spec = oiio.ImageSpec(pixels.shape[1], pixels.shape[0], pixels.shape[2], pixel_type)
    spec.channelnames = channels
    spec.attribute("smpte:TimeCode", oiio.TypeDesc("timecode"), TIMECODE)
    for key, value in attributes.items():
        key = key.replace("__", ":")
        if isinstance(value, bytes):
            spec.attribute(key, oiio.TypeDesc(f"uint8[{len(value)}]"), np.frombuffer(value, np.uint8))
        else:
            spec.attribute(key, value)
    path = str(tmp_path / name)
    output = oiio.ImageOutput.create(path)
    assert output.open(path, spec) and output.write_image(pixels), output.geterror()
    output.close()
    return (tmp_path / name).read_bytes()


def scene(seed: int, channels: int) -> np.ndarray:
    """Smooth ramps plus noise in 0..1: something an inpainter can continue."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / max(HEIGHT, WIDTH)
    noise = np.random.default_rng(seed).random((HEIGHT, WIDTH, channels)) * 0.05
    return np.stack([(x + y * (c + 1) / 3) % 1 for c in range(channels)], axis=2) * 0.9 + noise


def hole() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[12:24, 20:34] = True
    return mask


def restore_and_reread(data: bytes, fmt: str):
    frame = decode_frame(data)
    restored = build_restorer(RestorerSettings(name="telea"))(frame.pixels, hole())
    output = encode_frame(frame, restored, fmt, text=PROVENANCE)
    assert encode_frame(frame, restored, fmt, text=PROVENANCE) == output  # no timestamps: reruns are byte-identical
    return frame, output, decode_frame(output)


def attributes(frame) -> dict:
    return {name: value for name, _, value in frame.header["attributes"]}


@pytest.mark.parametrize("bits, transfer, channels, endian", [
    (10, "Printing density", ("R", "G", "B"), "big"),
    (10, "Linear", ("R", "G", "B", "A"), "little"),
    (16, "Printing density", ("Y",), "big"),
    (12, "Unspecified video", ("R", "G", "B"), "little"),
])
def test_dpx_round_trips_exactly_outside_the_mask_with_its_header(oiio, tmp_path, bits, transfer, channels, endian):
    top = 2 ** bits - 1
    codes = np.round(scene(bits, len(channels)) * top).astype(np.uint16)
    codes[0, 0, 0], codes[1, 0, 0] = 0, top  # the extremes too
    user_data = b"scanner".ljust(32, b"\0") + b"gate=full aperture"
    wide = np.round(codes * (65535 / top)).astype(np.uint16)
    data = write_film(oiio, tmp_path, "in.dpx", wide, "uint16", channels, oiio__BitsPerSample=bits,
                      oiio__Endian=endian, dpx__Transfer=transfer, dpx__FramePosition=1234, dpx__UserData=user_data)

    frame, output, again = restore_and_reread(data, "dpx")

    assert data[:4] == output[:4] == (b"SDPX" if endian == "big" else b"XPDS")  # the scanner's byte order kept

    assert frame.format == "DPX" and frame.bit_depth == bits and frame.pixels.dtype == np.uint16
    assert np.array_equal(frame.source, codes)
    assert again.source.shape == codes.shape and again.bit_depth == bits and again.mode == frame.mode
    assert np.array_equal(again.source[~hole()], codes[~hole()])  # bit-exact code values outside the mask
    assert not np.array_equal(again.source[hole()], codes[hole()])  # and the hole was restored
    if "A" in channels:
        assert np.array_equal(again.source[..., 3], codes[..., 3])  # alpha untouched even inside the hole
    kept = attributes(again)
    assert kept["smpte:TimeCode"] == TIMECODE and kept["dpx:TimeCode"] == "01:02:03:04"
    assert kept["dpx:FramePosition"] == 1234 and kept["dpx:Transfer"] == transfer
    assert read_provenance(output) == PROVENANCE
    assert bytes.fromhex(again.header["user_data"]).endswith(user_data)  # the scanner's own user data survives
    rerun = encode_frame(again, again.pixels, "dpx", text=PROVENANCE)  # restoring a restored file: one block of ours
    assert bytes.fromhex(decode_frame(rerun).header["user_data"]).count(b"restore:provenance") == 1


def test_a_fill_in_the_shadows_of_a_log_scan_reaches_under_reference_black(oiio, tmp_path):
    """A log scan keeps shadow, base and grain in the codes under 95: a fill there that cannot go below 95 leaves
    a lifted patch in the blacks."""
    codes = np.round(np.random.default_rng(3).normal(88, 6, (HEIGHT, WIDTH, 3))).clip(60, 130).astype(np.uint16)
    data = write_film(oiio, tmp_path, "shadows.dpx", np.round(codes * (65535 / 1023)).astype(np.uint16), "uint16",
                      ("R", "G", "B"), oiio__BitsPerSample=10, dpx__Transfer="Printing density")
    frame = decode_frame(data)
    restored = build_restorer(RestorerSettings(name="telea"))(frame.pixels, hole())
    again = decode_frame(encode_frame(frame, restored, "dpx", text=PROVENANCE))
    assert np.array_equal(again.source[~hole()], codes[~hole()])
    fill = again.source[hole()].astype(float)
    assert abs(fill.mean() - 88) < 3 and (fill < 95).mean() > 0.5  # the shadows' own level, not lifted to 95


@pytest.mark.parametrize("pixel_type, compression", [("half", "zip"), ("half", "dwaa"), ("float", "piz")])
def test_exr_round_trips_floats_bit_exactly_outside_the_mask(oiio, tmp_path, pixel_type, compression):
    linear = scene(3, 4).astype(np.float32) ** 2.2
    linear[0, :4, 0] = [20.0, -0.25, np.inf, 1e-7]  # highlights, negatives, inf and denormals outside the hole
    linear[0, 4, 0] = np.nan
    linear[..., 3] = np.linspace(0, 1, WIDTH)  # alpha
    pixels = linear.astype(np.float16 if pixel_type == "half" else np.float32)
    data = write_film(oiio, tmp_path, "in.exr", pixels, pixel_type, ("R", "G", "B", "A"), compression=compression,
                      DateTime="2024:05:06 07:08:09", Copyright="Film Archive")
    source = decode_frame(data).source  # as stored: a lossy input compression already rounded these

    frame, output, again = restore_and_reread(data, "exr")

    assert frame.format == "EXR" and frame.pixels.dtype == np.uint16 and frame.pixels.shape == (HEIGHT, WIDTH, 3)
    bits = np.uint16 if pixel_type == "half" else np.uint32
    assert again.source.dtype == pixels.dtype
    outside = ~hole()
    assert np.array_equal(again.source[outside].view(bits), source[outside].view(bits))  # NaN and -0 included
    assert np.array_equal(again.source[..., 3].view(bits), source[..., 3].view(bits))
    filled = again.source[hole()][:, :3].astype(np.float64)
    assert np.isfinite(filled).all() and 0 <= filled.min() and filled.max() <= 2 and not np.array_equal(
        again.source[hole()], source[hole()])
    kept = attributes(again)
    assert kept["smpte:TimeCode"] == TIMECODE and kept["DateTime"] == "2024:05:06 07:08:09"
    assert kept["Copyright"] == "Film Archive"
    assert again.header["compression"] == ("zip" if compression == "dwaa" else compression)  # never lossy again
    assert read_provenance(output) == PROVENANCE


def test_exr_without_a_date_gets_no_timestamp(oiio, tmp_path):
    data = write_film(oiio, tmp_path, "in.exr", scene(1, 3).astype(np.float16), "half", ("R", "G", "B"), DateTime="")
    frame = decode_frame(data)
    assert "DateTime" not in attributes(frame)
    assert "DateTime" not in attributes(decode_frame(encode_frame(frame, frame.pixels, "exr")))


def test_broken_film_files_are_refused_with_reasons(oiio, tmp_path):
    dpx = write_film(oiio, tmp_path, "in.dpx", np.zeros((HEIGHT, WIDTH, 3), np.uint16), "uint16", ("R", "G", "B"),
                     oiio__BitsPerSample=10)
    rng = np.random.default_rng(0)
    exr = write_film(oiio, tmp_path, "in.exr", rng.random((HEIGHT * 8, WIDTH * 8, 3)).astype(np.float16), "half",
                     ("R", "G", "B"))
    cases = {
        "not an image": b"SPDX" + dpx[4:],  # a misspelled magic number is no DPX at all
        "corrupt, truncated or unsupported dpx": dpx[:300],  # the magic, then the header cut short
        "corrupt or truncated dpx": dpx[: len(dpx) - 100],  # header whole, pixels cut short
        "corrupt or truncated exr": exr[: len(exr) // 2],
        "corrupt, truncated or unsupported exr": exr[:20],
    }
    for words, data in cases.items():
        with pytest.raises(FrameError) as error:
            decode_frame(data)
        assert words in str(error.value).lower(), (words, str(error.value))
        assert str(tmp_path) not in str(error.value) and "/tmp" not in str(error.value)
    with pytest.raises(FrameError, match="over the limit"):
        decode_frame(exr, max_pixels=1000)


def test_film_channels_beyond_rgba_are_refused(oiio, tmp_path):
    data = write_film(oiio, tmp_path, "in.exr", np.zeros((HEIGHT, WIDTH, 5), np.float16), "half",
                      ("R", "G", "B", "A", "Z"))
    with pytest.raises(FrameError, match="channels R, G, B, A, Z"):
        decode_frame(data)


def test_only_film_inputs_are_written_as_film(oiio):
    frame = Frame(pixels=np.zeros((4, 4, 3), np.uint8), alpha=None, format="PNG", mode="RGB", icc_profile=None,
                  exif=None)
    with pytest.raises(FrameError, match="dpx output needs a DPX input"):
        encode_frame(frame, frame.pixels, "dpx")


def test_a_film_frame_survives_the_pipeline_columns(oiio, tmp_path):
    """Rebuilt from the row columns a pipeline carries, the frame writes the same bytes."""
    data = write_film(oiio, tmp_path, "in.dpx", np.full((HEIGHT, WIDTH, 3), 40000, np.uint16), "uint16",
                      ("R", "G", "B"), oiio__BitsPerSample=10, dpx__Transfer="Printing density")
    frame = decode_frame(data)
    plain = Frame(pixels=frame.pixels, alpha=frame.alpha, format=frame.format, mode=frame.mode, icc_profile=None,
                  exif=None)
    columns = frame.columns()
    rebuilt = type(frame).from_columns(plain, columns["film_header"], columns["film_source"])
    assert encode_frame(rebuilt, frame.pixels, "dpx", PROVENANCE) == encode_frame(frame, frame.pixels, "dpx", PROVENANCE)


def test_without_openimageio_film_files_fail_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenImageIO", None)  # makes `import OpenImageIO` raise ImportError
    with pytest.raises(FrameError, match=r"restore\[film\]"):
        decode_frame(b"SDPX" + b"\0" * 2044)


def test_a_dpx_scan_goes_through_a_job_and_comes_back_as_dpx_exact_outside_the_mask(oiio, tmp_path, ray_session):
    from restore.frames import encode_mask
    from restore.pictures import REPORT_ROOT
    from restore.pipeline import prepare, run_job
    from restore.report import write_report
    from restore.spec import parse_spec

    samples = (scene(3, 3) * 65535).astype(np.uint16)
    (tmp_path / "in" / "masks").mkdir(parents=True)
    data = write_film(oiio, tmp_path / "in", "frame.dpx", samples, "uint16", ("R", "G", "B"),
                      oiio__BitsPerSample=10, dpx__Transfer="Printing density")
    (tmp_path / "in" / "masks" / "frame.png").write_bytes(encode_mask(hole()))
    spec = parse_spec({"name": "film", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "include": ["*.dpx"], "restorer": {"name": "telea"}})
    result = run_job(*prepare(spec))
    assert result.counts == {"ok": 1}
    original, restored = decode_frame(data), decode_frame((tmp_path / "out" / "frame.dpx").read_bytes())
    assert restored.format == "DPX" and restored.bit_depth == original.bit_depth == 10
    assert np.array_equal(restored.source[~hole()], original.source[~hole()])
    assert not np.array_equal(restored.source[hole()], original.source[hole()])

    # its thumbnails, made in the run from the view the output decodes to, are those the report makes from the files
    thumbs = tmp_path / "out" / REPORT_ROOT / "film" / "thumbs"
    made_in_run = {path.name: path.read_bytes() for path in thumbs.iterdir()}
    assert len(made_in_run) == 3
    shutil.rmtree(thumbs)
    assert write_report(spec).pictures_made == 1
    assert {path.name: path.read_bytes() for path in thumbs.iterdir()} == made_in_run


@pytest.mark.parametrize("header", [LOG_SCAN, {"bits": 10, "transfer": "log", "dtype": "uint16"},
                                    {"bits": 12, "transfer": "linear", "dtype": "uint16"},
                                    {"bits": 10, "transfer": "display", "dtype": "uint16"}])
def test_the_view_of_integer_samples_is_the_curves_own_for_every_code(header):
    """Integer samples take their view from a table built once per curve: it must give every code the very value
    the curve computes, or unmasked samples would no longer round-trip to their exact codes."""
    codes = np.random.default_rng(0).integers(0, 65536, (64, 1024, 3)).astype(np.uint16)
    codes[0, :, 0] = np.arange(1024)  # the low codes a 10-bit scan holds, every one
    assert np.array_equal(to_view(codes, header), _computed_view(codes, header))
    assert to_view(codes, header).dtype == np.uint16
