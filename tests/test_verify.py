"""`restore verify` on real jobs: a clean output verifies; tampering of any kind is found; 16 bits survive a job."""
import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from restore.frames import decode_frame
from restore.manifest import latest_rows, read_manifests
from restore.pipeline import prepare, run_job
from restore.spec import parse_spec
from restore.storage import open_storage
from restore.verify import provenance_mismatch, read_provenance, verify

HEIGHT, WIDTH = 48, 64


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def gradient16() -> np.ndarray:
    """A smooth 16-bit ramp with 3,072 distinct levels: any squeeze to 8 bits leaves at most 256."""
    return np.linspace(0, 65535, HEIGHT * WIDTH).reshape(HEIGHT, WIDTH).astype(np.uint16)


def box_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[10:20, 20:30] = 255
    return mask


@pytest.fixture(scope="module")
def restored(tmp_path_factory, ray_session):
    """One real job: 8-bit PNGs, a 16-bit TIFF and a 16-bit PNG gradient (all masked), and a broken file. The TIFF
    is a scan with a caption, its scanner's software and a resolution per centimetre."""
    root = tmp_path_factory.mktemp("verify")
    (root / "in" / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(3):
        (root / "in" / f"f{index}.png").write_bytes(png_bytes(rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)))
    tifffile.imwrite(root / "in" / "ramp.tif", gradient16(), photometric="minisblack", description="Box 12, print 7",
                     software="EPSON Scan 3.9", resolution=((1181, 10), (1181, 10)), resolutionunit="CENTIMETER")
    (root / "in" / "ramp16.png").write_bytes(png_bytes(gradient16()))
    for stem in ("f0", "f1", "f2", "ramp", "ramp16"):
        (root / "in" / "masks" / f"{stem}.png").write_bytes(png_bytes(box_mask()))
    (root / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    raw = {"name": "v", "input": str(root / "in"), "output": str(root / "out"), "restorer": {"name": "telea"},
           "include": ["*.png", "*.tif"], "batch_size": 2, "commit_every": 4}
    result = run_job(*prepare(parse_spec(raw)))
    assert result.counts == {"ok": 5, "failed": 1}
    return root


def test_a_clean_job_verifies_and_lists_its_failed_frames(restored):
    report = verify(str(restored / "out"), "v", unknown=True)
    assert report.ok, report.problems
    assert report.frames == 6 and report.verified == 5
    assert [key for key, _ in report.failed] == ["broken.png"]
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_16_bit_frames_keep_their_depth_and_levels_through_a_job(restored):
    hole = box_mask() > 0
    for name in ("ramp.tif", "ramp16.png"):
        frame = decode_frame((restored / "out" / name).read_bytes())
        assert frame.pixels.dtype == np.uint16 and frame.pixels.shape == (HEIGHT, WIDTH, 1)
        assert np.array_equal(frame.pixels[..., 0][~hole], gradient16()[~hole])
        assert len(np.unique(frame.pixels)) > 256
        assert len(np.unique(frame.pixels[..., 0][hole])) > 1  # the hole was filled, not left flat
    text = read_provenance((restored / "out" / "ramp.tif").read_bytes())  # TIFF ImageHistory
    assert json.loads(text["restore:provenance"])["input_key"] == "ramp.tif"


def ramp_row(restored) -> dict:
    return next(row for row in latest_rows(read_manifests(open_storage(str(restored / "out")), "v"))
                if row["input_key"] == "ramp.tif")


def test_a_restored_tiff_keeps_the_scans_caption_software_and_resolution_and_verifies(restored):
    """Collection tools read ImageDescription as the caption, Software as the scanner's, and the unit the archive
    scanned at: all come back as the scan had them, and the provenance is the output's processing history."""
    data = (restored / "out" / "ramp.tif").read_bytes()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tags = {tag.code: tag.value for tag in tif.pages.first.tags.values()}
    assert (tags[270], tags[305]) == ("Box 12, print 7", "EPSON Scan 3.9")
    assert (tags[282], tags[283], tags[296]) == ((1181, 10), (1181, 10), tifffile.RESUNIT.CENTIMETER)
    assert tags[11].startswith("restore ") and json.loads(tags[37395])["input_key"] == "ramp.tif"
    assert provenance_mismatch(data, ramp_row(restored)) is None


def test_a_tiff_output_of_an_earlier_version_still_verifies(restored):
    """Earlier versions wrote both provenance fields as one JSON object in ImageDescription, without a Software tag;
    a caption alone, with no provenance anywhere, is not taken for it."""
    data = (restored / "out" / "ramp.tif").read_bytes()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        pixels, tags = tif.asarray(), tif.pages.first.tags
        fields = {"ImageDescription": "Box 12, print 7", "Software": tags[11].value,
                  "restore:provenance": tags[37395].value}
    earlier, captioned = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(earlier, pixels, photometric="minisblack", software=False,
                     description=json.dumps(fields, sort_keys=True))
    tifffile.imwrite(captioned, pixels, photometric="minisblack", software=False, description="Box 12, print 7")
    assert provenance_mismatch(earlier.getvalue(), ramp_row(restored)) is None
    assert provenance_mismatch(captioned.getvalue(), ramp_row(restored)) == "carries no restore provenance"


def test_tampered_outputs_are_found(restored, tmp_path):
    out = tmp_path / "out"
    storage, original = open_storage(str(out)), open_storage(str(restored / "out"))
    for info in original.list():
        storage.put(info.key, original.get(info.key))
    pixels = np.asarray(Image.open(out / "f0.png")).copy()
    pixels[0, 0] ^= 1  # one bit of one unmasked pixel
    (out / "f0.png").write_bytes(png_bytes(pixels))  # checksum differs and the provenance is gone
    (out / "f1.png").unlink()
    (out / "_masks" / "f2.png.png").unlink()
    (out / "stray.png").write_bytes(png_bytes(pixels))

    report = verify(str(out), "v")
    found = {(p.key, p.kind) for p in report.problems}
    assert found == {("f0.png", "checksum"), ("f0.png", "provenance"), ("f1.png", "missing_output"),
                     ("f2.png", "missing_mask")}
    assert not report.ok and report.verified == 2
    assert {(p.key, p.kind) for p in verify(str(out), "v", unknown=True).problems} == found | {("stray.png", "unknown_object")}
    quick = verify(str(out), "v", quick=True)  # presence only, from one listing: the tampered output passes
    assert {(p.key, p.kind) for p in quick.problems} == {("f1.png", "missing_output"), ("f2.png", "missing_mask")}
    assert quick.verified == 3


def test_outputs_an_earlier_run_wrote_in_another_format_are_reported_as_superseded(tmp_path, ray_session):
    """After output_format changes, the PNGs of the first run would pass for derivatives of the collection."""
    (tmp_path / "in" / "masks").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for stem in ("a", "b"):
        (tmp_path / "in" / f"{stem}.png").write_bytes(png_bytes(rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)))
        (tmp_path / "in" / "masks" / f"{stem}.png").write_bytes(png_bytes(box_mask()))
    raw = {"name": "s", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "restorer": {"name": "telea"}}
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 2}
    assert run_job(*prepare(parse_spec({**raw, "output_format": "tiff"}))).counts == {"ok": 2}

    report = verify(str(tmp_path / "out"), "s", unknown=True)
    assert report.verified == 2
    assert {(p.key, p.kind) for p in report.problems} == {("a.png", "superseded"), ("b.png", "superseded")}
    assert "written for 'a.png' by run" in next(p.detail for p in report.problems if p.key == "a.png")
    assert verify(str(tmp_path / "out"), "s").ok  # what the manifests say the output holds checks out


def test_originals_rotted_in_place_or_gone_are_found_when_asked(restored, tmp_path):
    """Bit rot keeps a file's date and size, so a rerun sees nothing to do; re-reading the originals finds it."""
    import os
    import shutil

    from restore.cli import main as restore_main

    for side in ("in", "out"):
        shutil.copytree(restored / side, tmp_path / side)
    rotted = tmp_path / "in" / "f1.png"
    stat = rotted.stat()
    data = bytearray(rotted.read_bytes())
    data[len(data) // 2] ^= 4
    rotted.write_bytes(bytes(data))
    os.utime(rotted, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (tmp_path / "in" / "ramp.tif").unlink()

    assert verify(str(tmp_path / "out"), "v").ok  # the outputs themselves are intact
    report = verify(str(tmp_path / "out"), "v", originals=str(tmp_path / "in"))
    assert {(p.key, p.kind) for p in report.problems} == {("f1.png", "original_changed"),
                                                          ("ramp.tif", "missing_original")}
    changed = next(p for p in report.problems if p.kind == "original_changed")
    assert "runs do not see it: touch the file" in changed.detail and "bring it back from a copy" in changed.detail
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"name": "v", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                                "restorer": {"name": "telea"}, "include": ["*.png", "*.tif"]}))
    assert restore_main(["verify", str(spec), "--originals"]) == 1
    assert restore_main(["verify", str(spec), "--quick"]) == 0  # the outputs are all there
    assert restore_main(["verify", str(tmp_path / "out"), "--originals"]) == 2  # the input is in the spec alone


def test_outputs_and_originals_a_lifecycle_rule_moved_to_glacier_are_not_read_nor_called_missing(
        restored, s3_endpoint, s3_bucket, capsys):
    """A lifecycle rule archives outputs and masters: verify cannot read them, which is no fault of theirs, and a
    repair that restored them again would fail on them every night."""
    import boto3

    from restore.cli import main as restore_main
    from restore.pipeline import frames_to_repair

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    archived = {"out/f0.png", "out/_masks/f1.png.png", "in/f2.png"}
    for side in ("in", "out"):
        for path in sorted((restored / side).rglob("*")):
            if path.is_file():
                key = f"{side}/{path.relative_to(restored / side).as_posix()}"
                client.put_object(Bucket=s3_bucket, Key=key, Body=path.read_bytes(),
                                  StorageClass="GLACIER" if key in archived else "STANDARD")
    assert archived <= {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    output, originals = f"s3://{s3_bucket}/out", f"s3://{s3_bucket}/in"

    report = verify(output, "v", s3_endpoint, unknown=True, originals=originals)
    assert report.ok and report.problems == []
    assert {(p.key, p.kind) for p in report.not_read} == {("f0.png", "archived_output"), ("f1.png", "archived_mask"),
                                                          ("f2.png", "archived_original")}
    assert report.verified == 3
    raw = {"name": "v", "input": originals, "output": output, "endpoint_url": s3_endpoint,
           "restorer": {"name": "telea"}, "include": ["*.png", "*.tif"]}
    assert frames_to_repair(parse_spec(raw)) == frozenset()  # nothing for `run --repair` to redo
    spec = restored / "s3-job.json"
    spec.write_text(json.dumps(raw))
    assert restore_main(["verify", str(spec), "--originals"]) == 0
    assert "3 objects in archival storage not read" in capsys.readouterr().out


def test_provenance_that_names_another_frame_is_found(restored, tmp_path):
    """A file copied over another output: its own provenance is intact but names the wrong input."""
    out = tmp_path / "out"
    storage, original = open_storage(str(out)), open_storage(str(restored / "out"))
    for info in original.list():
        storage.put(info.key, original.get(info.key))
    (out / "f1.png").write_bytes((out / "f0.png").read_bytes())

    problems = {p.kind: p.detail for p in verify(str(out), "v").problems if p.key == "f1.png"}
    assert set(problems) == {"checksum", "provenance"}
    assert "input_key is 'f0.png', expected 'f1.png'" in problems["provenance"]


def test_an_output_without_manifests_is_a_problem(tmp_path):
    report = verify(str(tmp_path), "nothing")
    assert not report.ok and report.problems[0].kind == "no_manifest"
