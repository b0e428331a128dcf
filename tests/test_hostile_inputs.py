"""Hostile and broken inputs, and the security promises: one job over a generated corpus of bad, odd and malicious
files and keys; each frame is restored correctly (pixels outside the mask unchanged) or becomes a `failed` row
whose reason says what is wrong; the job completes, the input is untouched and nothing lands outside the output.
Then: credentials never leak, weights are checked before use, keys never escape.

Weights loading itself (weights_only=True, tampered or pickled-code files refused) is covered in test_models.py:
test_tampered_or_garbage_weights_are_refused, test_pickled_code_is_refused, test_weights_with_a_foreign_config_are_refused.
"""
import hashlib
import io
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tifffile
from PIL import Image

from conftest import FAKE_CREDENTIALS
from faults import FaultProxy, base_job, box_mask, png_bytes, run_in_process, scene, write_local, write_spec
from restore.frames import decode_frame, decode_mask
from restore.manifest import latest_rows, read_manifests
from restore.storage import TEMP_PREFIX, UnsafeKeyError, open_storage, safe_key

MAX_PIXELS = 400_000
INCLUDE = ["*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.gif"]


# ---------------------------------------------------------------------------------------------- the corpus

@dataclass
class Case:
    kind: str
    key: str
    data: bytes
    mask: bytes | None = None  # stored at <dir>/masks/<stem>.png
    expect: str = "ok"  # "ok", "failed", "skipped" (no fault of the frame: never given up) or "either" (ok or failed)
    words: str = ""  # expected in the failure reason, lower case
    s3_only: bool = False  # keys a local folder cannot hold


def _encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes, extra: bytes = b"") -> bytes:
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([bit_depth, colour_type, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _tiff(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def hostile_corpus() -> list[Case]:
    rgb, mask = scene(1), png_bytes(box_mask())
    gray16 = (scene(2, channels=1).astype(np.uint16) * 257)
    rgba = np.dstack([scene(3), np.full((48, 64), 200, np.uint8)])
    la = np.dstack([scene(4, channels=1), np.full((48, 64), 99, np.uint8)])
    frames = [Image.fromarray(scene(s)) for s in (5, 6, 7)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=40)
    exif = Image.Exif()
    exif[274] = 6  # Orientation: rotate 90 CW to display
    absurd = Image.Exif()
    absurd[0x011A] = absurd[0x011B] = 4294967295.0  # X/YResolution: Pillow fails to write it back
    absurd[0x0128] = 2
    rows16 = b"".join(b"\x00" + np.stack([gray16[y], gray16[y]], axis=1).astype(">u2").tobytes() for y in range(48))
    text_bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9))
    big = scene(8, 600, 800)
    return [
        Case("truncated PNG", "broken/truncated.png", png_bytes(rgb)[:300], expect="failed", words="truncated"),
        Case("truncated JPEG", "broken/truncated.jpg", _encode(rgb, "JPEG")[:700], expect="failed", words="truncated"),
        Case("truncated TIFF", "broken/truncated.tif", _tiff(rgb)[:4000], expect="failed", words="truncated"),
        Case("zero bytes", "broken/empty.png", b"", expect="failed", words="empty"),
        Case("text with an image extension", "broken/notes.tif", b"shot list, reel 42\n", expect="failed",
             words="not an image"),
        Case("decompression bomb (header 100000x100000)", "broken/bomb.png",
             _png(100_000, 100_000, 8, 2, b"\x00" * 1024), expect="failed", words="over the limit"),
        Case("text-chunk bomb (64 MiB zTXt)", "broken/text-bomb.png",
             _png(64, 48, 8, 2, b"".join(b"\x00" + rgb[y].tobytes() for y in range(48)), text_bomb), expect="either"),
        Case("dimensions over max_pixels", "odd/huge.png", png_bytes(big), expect="failed", words="over the limit"),
        Case("1x1 image, fully masked", "odd/one-pixel.png", png_bytes(scene(9, 1, 1)), png_bytes(np.full((1, 1), 255, np.uint8))),
        Case("CMYK JPEG", "odd/cmyk.jpg", _cmyk_jpeg(rgb), expect="failed", words="cmyk"),
        Case("palette PNG", "odd/palette.png", _palette_png(rgb), mask),
        Case("16-bit grayscale PNG", "odd/gray16.png", _encode(gray16, "PNG"), mask),
        Case("16-bit grayscale with alpha", "odd/gray16-alpha.png", _png(64, 48, 16, 4, rows16), mask,
             expect="failed", words="16-bit grayscale with alpha"),
        Case("16-bit RGB TIFF", "odd/rgb16.tif", _tiff(np.dstack([gray16] * 3), photometric="rgb"), mask),
        Case("RGBA with alpha", "odd/rgba.png", png_bytes(rgba), mask),
        Case("grayscale with alpha", "odd/la.png", png_bytes(la), mask),
        Case("1-bit bilevel", "odd/bilevel.png", png_bytes(scene(10, channels=1) > 128), mask),
        Case("animated GIF", "odd/animated.gif", gif.getvalue(), expect="failed", words="animated"),
        Case("EXIF-rotated JPEG with a mask, orientation of masks not said", "odd/exif-rotated.jpg",
             _encode(rgb, "JPEG", exif=exif.tobytes()), mask, expect="skipped", words="masks.orientation"),
        Case("JPEG claiming 4 billion dpi", "odd/dpi-overflow.jpg", _encode(rgb, "JPEG", exif=absurd.tobytes()), mask),
        Case("planar TIFF with a resolution of 1/0", "odd/dpi-zero.tif", _zero_resolution_tiff(rgb), mask),
        Case("TIFF of 100 float64 samples a pixel", "broken/float-samples.tif",
             _tiff(np.zeros((100, 100, 100)), planarconfig="contig", photometric="minisblack"), expect="failed",
             words="float64"),
        Case("JPEG bytes named .png", "odd/jpeg-named.png", _encode(rgb, "JPEG"), mask),
        Case("mask of the wrong size", "odd/wrong-mask.png", png_bytes(rgb), png_bytes(np.zeros((10, 10), np.uint8)),
             expect="failed", words="mask"),
        Case("mask that is not an image", "odd/garbage-mask.png", png_bytes(rgb), b"garbage", expect="failed"),
        Case("unicode key", "names/café фильм 01.png", png_bytes(scene(11)), mask),
        Case("space-laden key", "names/  box 1  /scan  two .png", png_bytes(scene(12)), mask),
        Case("URL-special key", "names/odd?#%&+=;name.png", png_bytes(scene(13)), mask),
        Case("deeply nested key", "/".join(["deep"] * 24) + "/frame.png", png_bytes(scene(14)), mask),
        Case("backslash in key", "names/back\\slash.png", png_bytes(scene(15)), expect="failed", words="backslash"),
        Case("key leading out with ..", "../escape.png", png_bytes(scene(16)), expect="failed", words="'..'",
             s3_only=True),
        Case("key with .. inside", "names/../up.png", png_bytes(scene(17)), expect="failed", words="'..'",
             s3_only=True),
        Case("key starting with /", "/absolute.png", png_bytes(scene(18)), expect="failed", words="absolute",
             s3_only=True),
        Case("key with . component", "names/./dot.png", png_bytes(scene(19)), expect="failed", words="'.'",
             s3_only=True),
    ]


def _zero_resolution_tiff(rgb: np.ndarray) -> bytes:
    """Planar (which only tifffile reads), with X/YResolution patched to 1/0 after writing."""
    data = bytearray(_tiff(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate", resolution=(1, 1)))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offsets = [tif.pages.first.tags[code].valueoffset for code in (282, 283)]
    for offset in offsets:
        data[offset:offset + 8] = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
    return bytes(data)


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _palette_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_key(key: str) -> str:
    folder, _, name = key.rpartition("/")
    return f"{folder}/masks/{name.rsplit('.', 1)[0]}.png" if folder else f"masks/{name.rsplit('.', 1)[0]}.png"


def corpus_objects(cases: list[Case]) -> dict[str, bytes]:
    objects = {}
    for case in cases:
        objects[case.key] = case.data
        if case.mask is not None:
            objects[mask_key(case.key)] = case.mask
    return objects


def check_rows(cases: list[Case], rows: dict[str, dict], read_output) -> list[str]:
    """Problems with the job's rows: a wrong status, an unclear reason, or pixels changed outside the mask."""
    problems = []
    for case in cases:
        row = rows.get(case.key)
        if row is None:
            problems.append(f"{case.kind}: no manifest row for {case.key!r}")
            continue
        if row["status"] in ("failed", "skipped"):
            if case.expect not in (row["status"], "either") or case.words not in (row["error"] or "").lower():
                problems.append(f"{case.kind}: {row['status']} with {row['error']!r}")
            continue
        if case.expect != "ok" and case.expect != "either":
            problems.append(f"{case.kind}: expected {case.expect} mentioning {case.words!r}, got {row['status']}")
            continue
        source, output = decode_frame(case.data, MAX_PIXELS), decode_frame(read_output(row["output_key"]), MAX_PIXELS)
        hole = decode_mask(case.mask) if case.mask else np.zeros(source.pixels.shape[:2], bool)
        if output.pixels.shape != source.pixels.shape or output.pixels.dtype != source.pixels.dtype:
            problems.append(f"{case.kind}: {output.pixels.shape} {output.pixels.dtype} from {source.pixels.shape} "
                            f"{source.pixels.dtype}")
        elif not np.array_equal(output.pixels[~hole], source.pixels[~hole]):
            problems.append(f"{case.kind}: pixels outside the mask changed")
        if (source.alpha is None) != (output.alpha is None) or (
                source.alpha is not None and not np.array_equal(source.alpha, output.alpha)):
            problems.append(f"{case.kind}: alpha not carried through")
        if row["output_sha256"] != hashlib.sha256(read_output(row["output_key"])).hexdigest():
            problems.append(f"{case.kind}: output differs from its manifest sha256")
    return problems


def hostile_job(input_uri: str, output_uri: str, **overrides) -> dict:
    """The corpus runs decoders and the restorer on whatever its masks mark, the 1x1 frame's full mask too: no hold
    for masks that mark most of a frame (that has its own test)."""
    return base_job(input_uri, output_uri, name="hostile", include=INCLUDE, max_pixels=MAX_PIXELS, batch_size=4,
                    commit_every=8, masks={"max_given": 1.0}, **overrides)


# ---------------------------------------------------------------------------------------------- the corpus, run

def test_hostile_corpus_on_s3_each_frame_restored_or_failed_with_reason(s3_endpoint, s3_bucket, ray_session):
    import boto3

    cases = hostile_corpus()
    assert len({case.kind for case in cases}) >= 20
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key, data in corpus_objects(cases).items():
        client.put_object(Bucket=s3_bucket, Key="in/" + key, Body=data)
    before = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "in/../escape.png" in before and "in//absolute.png" in before  # such keys exist in a bucket
    proxy = FaultProxy(s3_endpoint).start()  # no faults: it logs every request the job makes
    try:
        result = run_in_process(hostile_job(f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", endpoint_url=proxy.url))
    finally:
        proxy.stop()

    output = open_storage(f"s3://{s3_bucket}/out", s3_endpoint)
    rows = {row["input_key"]: row for row in read_manifests(output, "hostile").to_pylist()}
    assert sum(result.counts.values()) == len(cases) == len(rows)
    assert check_rows(cases, rows, output.get) == []
    after = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {k: v for k, v in after.items() if k.startswith("in/")} == before  # the input untouched
    written = [key for key in after if key not in before]
    assert written and all(key.startswith("out/") and safe_key(key[len("out/"):]) for key in written)
    writes = [(method, key) for method, _, key in proxy.requests if method in ("PUT", "POST", "DELETE")]
    assert writes and all(key.startswith("out/") for _, key in writes)  # inputs were only ever read
    mask_reads = [method for method, _, key in proxy.requests if "/masks/" in key]
    assert "GET" in mask_reads and "HEAD" not in mask_reads  # a mask is read, or found missing, in one request


def test_hostile_corpus_in_a_local_folder_with_a_symlink_trap(tmp_path, ray_session):
    cases = [case for case in hostile_corpus() if not case.s3_only]
    cases.append(Case("output folder symlinked outside", "linked/frame.png", png_bytes(scene(20)), expect="failed",
                      words="symbolic link"))
    cases.append(Case("a pipe named like a frame", "odd/pipe.png", b"", expect="failed", words="not a regular file"))
    cases.append(Case("a link to a file outside the input", "odd/elsewhere.png", b"", expect="failed",
                      words="symbolic link leading out"))
    cases.append(Case("a file name in Latin-1, not UTF-8", "odd/caf\\xe9.png", b"", expect="failed", words="utf-8"))
    write_local(tmp_path / "in", corpus_objects(cases))
    secret = tmp_path / "another-departments-scan.png"
    secret.write_bytes(png_bytes(scene(21)))
    (tmp_path / "in" / "odd" / "pipe.png").unlink()
    os.mkfifo(tmp_path / "in" / "odd" / "pipe.png")  # read, it would wait for a writer for ever
    (tmp_path / "in" / "odd" / "elsewhere.png").unlink()
    (tmp_path / "in" / "odd" / "elsewhere.png").symlink_to(secret)
    (tmp_path / "in" / "odd" / "caf\\xe9.png").unlink()
    with open(os.path.join(os.fsencode(tmp_path / "in" / "odd"), b"caf\xe9.png"), "wb") as latin1:
        latin1.write(png_bytes(scene(22)))
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "linked").symlink_to(outside, target_is_directory=True)  # a trap left in the output
    for path in (tmp_path / "in").rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
              for p in (tmp_path / "in").rglob("*") if p.is_file() and not p.is_symlink()}

    result = run_in_process(hostile_job(str(tmp_path / "in"), str(tmp_path / "out")))

    output = open_storage(str(tmp_path / "out"))
    rows = {row["input_key"]: row for row in read_manifests(output, "hostile").to_pylist()}
    assert sum(result.counts.values()) == len(cases) == len(rows)
    assert check_rows(cases, rows, output.get) == []
    after = {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
             for p in (tmp_path / "in").rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["another-departments-scan.png", "in", "out", "outside"]
    assert not any("another-departments" in str(p) for p in (tmp_path / "out").rglob("*"))
    assert not list((tmp_path / "out").rglob(TEMP_PREFIX + "*"))


# ---------------------------------------------------------------------------------------------- security

def test_unsafe_keys_are_refused_by_every_storage_operation(tmp_path):
    storage = open_storage(str(tmp_path / "out"))
    for key in ("../x.png", "/etc/passwd", "a/../../x", "a//b", "a/./b", "a\\b", "a\x00b", ""):
        for operation in (storage.get, storage.head, storage.delete, lambda k: storage.put(k, b"x"),
                          lambda k: storage.put_if_absent(k, b"x")):
            with pytest.raises(UnsafeKeyError):
                operation(key)
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def _secrets_in(text: str) -> list[str]:
    return [name for name, value in FAKE_CREDENTIALS.items() if name != "AWS_DEFAULT_REGION" and value in text]


def test_credentials_never_appear_in_logs_manifests_reports_or_errors(s3_endpoint, s3_bucket, ray_session, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key, data in corpus_objects(hostile_corpus()[:12]).items():
        client.put_object(Bucket=s3_bucket, Key="in/" + key, Body=data)
    proxy = FaultProxy(s3_endpoint).start()
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    spec = write_spec(tmp_path / "job.yaml", hostile_job(f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out",
                                                         endpoint_url=proxy.url))
    texts = {}
    try:
        cli = [sys.executable, "-m", "restore.cli"]
        done = subprocess.run(cli + ["run", str(spec), "--json", str(tmp_path / "run.json")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr  # some frames are broken
        texts["run stdout/stderr"] = done.stdout + done.stderr
        status = subprocess.run(cli + ["status", str(spec), "--json", str(tmp_path / "status.json")], env=env,
                                capture_output=True, text=True, timeout=120)
        texts["status stdout/stderr"] = status.stdout + status.stderr
        for code in ("SignatureDoesNotMatch", "ExpiredToken"):  # one we name, one whose message we pass on
            proxy.deny = code  # the error bodies echo the access key id, as AWS's do
            denied = subprocess.run(cli + ["run", str(spec)], env=env, capture_output=True, text=True, timeout=120)
            assert denied.returncode == 2 and "cannot" in denied.stderr, denied.stderr
            texts[f"{code} stdout/stderr"] = denied.stdout + denied.stderr
    finally:
        proxy.stop()
    for name in ("run.json", "status.json"):
        texts[name] = (tmp_path / name).read_text()
    output = open_storage(f"s3://{s3_bucket}/out", s3_endpoint)
    stored = [info.key for info in output.list(("*",))]
    assert any(key.endswith(".parquet") for key in stored) and any(key.endswith(".html") for key in stored)
    for key in stored:  # manifests, report, previews, outputs
        texts[key] = output.get(key).decode("latin-1")
    table = read_manifests(output, "hostile")
    texts["manifest values"] = str(table.to_pylist())
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50 << 20:
            texts[f"ray log {path.name}"] = path.read_text(errors="replace")
    leaks = {where: found for where, text in texts.items() if (found := _secrets_in(text))}
    assert leaks == {}


# ---------------------------------------------------------------------------------------------- bugs found here

def _run_stages_inline(raw: dict) -> list[dict]:
    """The pipeline's three stages on every planned frame, in this process, without Ray: manifest rows."""
    from restore.pipeline import RestoreFrames, TASK_SCHEMA, load_frames, prepare, write_outputs
    from restore.spec import parse_spec

    context, plan = prepare(parse_spec(raw))
    batch = pa.concat_tables(load_frames(pa.Table.from_pylist(plan.tasks, schema=TASK_SCHEMA), context))
    return write_outputs(RestoreFrames(context)(batch), context).to_pylist()


def test_two_inputs_never_share_an_output(tmp_path, ray_session):
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec

    write_local(tmp_path / "in", {"scan.jpg": _encode(scene(1), "JPEG"), "scan.jpg.png": png_bytes(scene(2))})
    rows = _run_stages_inline(base_job(str(tmp_path / "in"), str(tmp_path / "out")))
    written = [row["output_key"] for row in rows if row["status"] == "ok"]
    assert len(written) == len(set(written))

    # Across runs: the frame named like the output was restored first, the other arrives later.
    raw = base_job(str(tmp_path / "later"), str(tmp_path / "later-out"))
    write_local(tmp_path / "later", {"scan.jpg.png": png_bytes(scene(2))})
    run_job(*prepare(parse_spec(raw)))
    restored = (tmp_path / "later-out" / "scan.jpg.png").read_bytes()
    write_local(tmp_path / "later", {"scan.jpg": _encode(scene(1), "JPEG")})
    assert run_job(*prepare(parse_spec(raw))).counts == {"failed": 1}
    assert (tmp_path / "later-out" / "scan.jpg.png").read_bytes() == restored
    # The other way round: `scan.jpg` was restored first; `scan.jpg.png` arrives and takes its output key.
    raw = base_job(str(tmp_path / "first"), str(tmp_path / "first-out"), max_attempts=1)
    write_local(tmp_path / "first", {"scan.jpg": _encode(scene(1), "JPEG")})
    run_job(*prepare(parse_spec(raw)))
    write_local(tmp_path / "first", {"scan.jpg.png": png_bytes(scene(2))})
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 1, "failed": 1}
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(str(tmp_path / "first-out")), "rel"))}
    assert rows["scan.jpg"]["status"] == "failed"
    assert "its output would be 'scan.jpg.png', which is the name (and the output) of another input; rename" \
        in rows["scan.jpg"]["error"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "first-out" / "scan.jpg.png")), scene(2))
    write_local(tmp_path / "first", {"scan.jpg.png": png_bytes(scene(3))})  # the owner changes again
    _, plan = prepare(parse_spec(raw))
    assert [task["input_key"] for task in plan.tasks] == ["scan.jpg.png"]  # the other stays given up, once
    assert plan.given_up == ["scan.jpg"] and plan.already_done == 0

    # Outputs may land on a case-insensitive file system: `SCAN.JPG.png` would be `SCAN.JPG.PNG` there.
    write_local(tmp_path / "case", {"SCAN.JPG": _encode(scene(1), "JPEG"), "SCAN.JPG.PNG": png_bytes(scene(2))})
    rows = _run_stages_inline(base_job(str(tmp_path / "case"), str(tmp_path / "case-out")))
    assert {row["input_key"]: row["status"] for row in rows} == {"SCAN.JPG": "failed", "SCAN.JPG.PNG": "ok"}

    # A PNG named .tif comes out as `scan.tif.png`, the output of the real `scan.tif.png`.
    write_local(tmp_path / "misnamed", {"scan.tif": png_bytes(scene(1)), "scan.tif.png": png_bytes(scene(2))})
    rows = _run_stages_inline(base_job(str(tmp_path / "misnamed"), str(tmp_path / "misnamed-out")))
    status = {row["input_key"]: (row["status"], row["error"] or "") for row in rows}
    assert status["scan.tif.png"][0] == "ok"
    assert status["scan.tif"][0] == "failed" and "rename it to say its format" in status["scan.tif"][1]


def test_inputs_where_the_output_keeps_the_jobs_own_files_fail_instead_of_writing_over_them(tmp_path):
    """Outputs mirror input keys: a donor's `_masks/x.png.png` would be written where `x.png`'s audit mask goes, a
    still beside a video where that video's frames go."""
    pytest.importorskip("av", reason="video needs PyAV")
    from test_video import clip

    write_local(tmp_path / "in", {"x.png": png_bytes(scene(1)), "masks/x.png": png_bytes(box_mask()),
                                  "_masks/x.png.png": png_bytes(scene(2)), "_report/job/t.png": png_bytes(scene(3)),
                                  "_manifests.png": png_bytes(scene(4)), "reel.mkv": clip("ffv1", "matroska", "bgr0"),
                                  "reel.mkv.frames/000001.png": png_bytes(scene(5))})
    rows = {row["input_key"]: row for row in _run_stages_inline(
        base_job(str(tmp_path / "in"), str(tmp_path / "out"), include=["*.png", "*.mkv"]))}
    assert rows["_masks/x.png.png"]["status"] == "failed" and "keeps its audit masks" in rows["_masks/x.png.png"]["error"]
    assert "keeps its report" in rows["_report/job/t.png"]["error"]
    assert "'reel.mkv' are written to reel.mkv.frames/" in rows["reel.mkv.frames/000001.png"]["error"]
    assert rows["x.png"]["status"] == rows["_manifests.png"]["status"] == rows["reel.mkv#000001"]["status"] == "ok"
    assert rows["x.png"]["mask_key"] == "_masks/x.png.png"
    assert np.array_equal(decode_mask((tmp_path / "out" / "_masks" / "x.png.png").read_bytes()), box_mask() > 0)


def test_an_error_a_library_raises_on_one_frame_skips_that_frame_and_its_batch_goes_on(tmp_path, monkeypatch):
    """Decoders, encoders and OpenCV raise more than the errors the pipeline expects (OverflowError, struct.error,
    cv2.error, MemoryError); a hostile file must fail its own row, not stop every night's run before any commit."""
    import struct

    import restore.pipeline as pipeline

    write_local(tmp_path / "in", {name: png_bytes(scene(seed)) for seed, name in enumerate(["a.png", "b.png",
                                                                                             "c.png"])})
    poisoned = {"read": png_bytes(scene(0)), "write": scene(2).tobytes()}
    decode, encode = pipeline.decode_frame, pipeline.encode_frame

    def decode_frame(data, *args):
        if data == poisoned["read"]:
            raise OverflowError("int too big to convert")
        return decode(data, *args)

    def encode_frame(frame, pixels, *args, **kwargs):
        if pixels.tobytes() == poisoned["write"]:
            raise struct.error("argument out of range")
        return encode(frame, pixels, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_frame", decode_frame)
    monkeypatch.setattr(pipeline, "encode_frame", encode_frame)
    rows = {row["input_key"]: row for row in _run_stages_inline(base_job(str(tmp_path / "in"), str(tmp_path / "out")))}
    # skipped: tried again every night, never given up (the same error from a broken install would otherwise
    # give up the whole archive after max_attempts)
    assert {key: row["status"] for key, row in rows.items()} == {"a.png": "skipped", "b.png": "ok", "c.png": "skipped"}
    assert rows["a.png"]["error"] == "OverflowError: int too big to convert"
    assert rows["c.png"]["error"] == "error: argument out of range"  # struct.error's own name
    assert (tmp_path / "out" / "b.png").is_file()


def test_fills_of_a_premultiplied_tiff_stay_premultiplied(tmp_path):
    """Associated alpha stores colour times alpha, so no sample exceeds its alpha: a fill from bright opaque
    surroundings into a faint region must not either, or readers that unpremultiply get values past white."""
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 250, 255
    rgba[10:20, 20:30, 3] = 40  # a faint region under the mask
    rgba[10:20, 20:30, :3] = 30
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rgba, photometric="rgb", extrasamples=("assocalpha",))
    write_local(tmp_path / "in", {"f.tif": buffer.getvalue(), "masks/f.png": png_bytes(box_mask())})
    [row] = _run_stages_inline(base_job(str(tmp_path / "in"), str(tmp_path / "out")))
    assert row["status"] == "ok"
    with tifffile.TiffFile(tmp_path / "out" / "f.tif") as tif:
        written = tif.pages.first.asarray()
    hole = box_mask() > 0
    assert (written[..., :3] <= written[..., 3:]).all()
    assert np.array_equal(written[~hole], rgba[~hole]) and np.array_equal(written[..., 3], rgba[..., 3])


def test_fills_of_a_bilevel_scan_stay_black_and_white(tmp_path):
    write_local(tmp_path / "in", {"page.png": png_bytes(scene(10, channels=1) > 128),
                                  "masks/page.png": png_bytes(box_mask())})
    [row] = _run_stages_inline(base_job(str(tmp_path / "in"), str(tmp_path / "out")))
    assert row["status"] == "ok"
    with Image.open(tmp_path / "out" / "page.png") as page:
        assert page.mode == "1"  # 1 bit a pixel, as scanned: its fill has no grey to hold


def test_an_undecodable_mask_is_named_in_the_failure_reason(tmp_path):
    write_local(tmp_path / "in", {"f.png": png_bytes(scene(1)), "masks/f.png": b"garbage"})
    [row] = _run_stages_inline(base_job(str(tmp_path / "in"), str(tmp_path / "out")))
    assert row["status"] == "failed" and "masks/f.png" in row["error"]


def test_a_job_name_that_is_a_path_component_is_refused():
    from restore.spec import SpecError, parse_spec

    for name in ("..", "."):
        with pytest.raises(SpecError, match="name"):
            parse_spec({"name": name, "input": "/archive/in", "output": "/archive/out"})


def test_tampered_weights_are_refused_before_any_work(tmp_path):
    from restore.pipeline import prepare
    from restore.restorers import SHIPPED_WEIGHTS
    from restore.spec import parse_spec

    data = bytearray(SHIPPED_WEIGHTS.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (tmp_path / "tampered.pt").write_bytes(bytes(data))
    write_local(tmp_path / "in", {"f.png": png_bytes(scene(1))})
    raw = base_job(str(tmp_path / "in"), str(tmp_path / "out"), restorer={"name": "gan", "weights": str(tmp_path / "tampered.pt")})
    with pytest.raises(Exception, match="checksum"):
        prepare(parse_spec(raw))


def test_a_worker_whose_weights_differ_from_the_checked_ones_refuses_to_restore(tmp_path):
    """On a cluster every node loads the weights from its own install; the manifest records the driver's file."""
    from restore.models.generator import Generator, GeneratorConfig
    from restore.models.weights import save_generator
    from restore.pipeline import RestoreFrames, prepare
    from restore.restorers import RestorerError
    from restore.spec import parse_spec

    weights = tmp_path / "generator.pt"
    save_generator(Generator(GeneratorConfig(width=8, n_down=2, n_blocks=1)), weights)
    write_local(tmp_path / "in", {"f.png": png_bytes(scene(1))})
    context, _ = prepare(parse_spec(base_job(str(tmp_path / "in"), str(tmp_path / "out"),
                                             restorer={"name": "gan", "weights": str(weights)})))
    save_generator(Generator(GeneratorConfig(width=12, n_down=2, n_blocks=1)), weights)  # another node's file
    with pytest.raises(RestorerError, match=context.weights_sha256):
        RestoreFrames(context)


def test_a_worker_whose_detector_differs_from_the_checked_one_fails_its_frames_with_the_reason(tmp_path):
    from restore.detect.learned import save_detector_net
    from restore.models.detector import DetectorConfig, DetectorNet
    from restore.pipeline import TASK_SCHEMA, load_frames, prepare
    from restore.spec import parse_spec

    weights = tmp_path / "detector.pt"
    save_detector_net(DetectorNet(DetectorConfig(widths=(4, 6))), weights, {"threshold": 0.5})
    write_local(tmp_path / "in", {"f.png": png_bytes(scene(1))})
    context, plan = prepare(parse_spec(base_job(
        str(tmp_path / "in"), str(tmp_path / "out"),
        masks={"source": "detect", "detector": "learned", "detector_weights": str(weights)})))
    save_detector_net(DetectorNet(DetectorConfig(widths=(4, 8))), weights, {"threshold": 0.5})  # another node's file
    [row] = pa.concat_tables(load_frames(pa.Table.from_pylist(plan.tasks, schema=TASK_SCHEMA), context)).to_pylist()
    assert row["status"] == "failed" and "install the same weights on every node" in row["error"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a worker whose torch sees no GPU")
def test_a_gpu_worker_whose_torch_sees_no_gpu_refuses_instead_of_running_on_its_cpu(tmp_path):
    from restore.pipeline import RestoreFrames, prepare
    from restore.restorers import RestorerError
    from restore.spec import parse_spec

    write_local(tmp_path / "in", {"f.png": png_bytes(scene(1))})
    context, _ = prepare(parse_spec(base_job(str(tmp_path / "in"), str(tmp_path / "out"), restorer={"name": "gan"},
                                             workers={"count": 1, "cpus": 1, "gpus": 1})))
    with pytest.raises(RestorerError, match="sees no CUDA device"):
        RestoreFrames(context)
