"""The HTML report, from a real small job run through Ray, checked as data and in headless Chromium."""
from collections import Counter
from html import escape
import io
import json
import os
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from PIL import Image, PngImagePlugin

from restore import report as report_module
from restore.manifest import latest_rows, read_manifests, summarize
from restore.pipeline import prepare, run_job
from restore import pictures as pictures_module
from restore.pictures import PREVIEW_SIZE, REPORT_ROOT, picture_set, shrink
from restore.report import COLUMNS, rebuild_report, write_report
from restore.spec import parse_spec
from restore.storage import open_storage

TRICKY_KEY = "reel/f #4 & <b>.png"  # must show as text, never as markup, and its link must still resolve
READER_ZONE = "Australia/Adelaide"  # the browser's time zone: half an hour off whole hours, so no rounding hides it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene(seed: int, height=240, width=320) -> np.ndarray:
    """A sepia print with a sky, a hill and a sun, so thumbnails and the screenshot show what an eye can follow."""
    y, x = np.mgrid[0:height, 0:width]
    tone = 150 + 80 * y / height - 60 * (y > 150 + 30 * np.sin(x / 40 + seed))  # sky, then a darker hill
    tone = np.where((x - 80 - seed * 40) ** 2 + (y - 70) ** 2 < 900, 235, tone)
    tone = tone + np.random.default_rng(seed).normal(0, 4, tone.shape)  # grain
    return np.clip(tone[..., None] * [1.0, 0.86, 0.68], 0, 255).astype(np.uint8)


def scratch_mask(seed: int, height=240, width=320) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, 60 + seed * 40: 63 + seed * 40] = 255  # a vertical scratch
    mask[40:60 + seed * 16, 180:220 + seed * 10] = 255  # a blotch, bigger for later frames
    return mask


def damaged(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask > 0] = 250
    return out


def read_blob(page: str) -> list[dict]:
    blob = re.search(r'<script type="application/json" id="frame-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["columns"] == list(COLUMNS)
    return [dict(zip(COLUMNS, row)) for row in data["rows"]]


def element_text(page: str, ident: str) -> str:
    return re.search(rf'id="{ident}"[^>]*>([^<]*)<', page).group(1)


def missing_pictures(output: Path) -> list[str]:
    """The pictures report.html names (shown, offered by a control, linked, or in the frame list) that are not there:
    each would be a broken image."""
    page = (output / "report.html").read_text()
    named = set(re.findall(rf'"({REPORT_ROOT}/[^"]+\.jpg)"', page))
    thumbs = re.search(r'"pictures":"([^"]+)"', page).group(1)
    named |= {f"{thumbs}{row['pictures']}-{kind}.jpg" for row in read_blob(page) if row["pictures"]
              for kind in ("omr" if row["has_mask"] else "or")}
    return sorted(key for key in named if not (output / key).is_file())


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, ray_session):
    """Five restored frames (one with nothing masked, one with a hostile name) and one corrupt frame."""
    root = tmp_path_factory.mktemp("report-job")
    reel = root / "in" / "reel"
    (reel / "masks").mkdir(parents=True)
    for index, key in enumerate(["reel/f0.png", "reel/f1.png", "reel/f2.png", TRICKY_KEY]):
        stem = Path(key).stem
        mask = scratch_mask(index)
        (root / "in" / key).write_bytes(png_bytes(damaged(scene(index), mask)))
        (reel / "masks" / f"{stem}.png").write_bytes(png_bytes(mask))
    (reel / "f5-clean.png").write_bytes(png_bytes(scene(5)))
    (reel / "f6-corrupt.png").write_bytes(png_bytes(scene(6))[:300])
    spec = parse_spec({"name": "report-test", "input": str(root / "in"), "output": str(root / "out"),
                       "restorer": {"name": "telea"}, "batch_size": 2, "commit_every": 2})
    context, plan = prepare(spec)
    run_job(context, plan)
    return spec


@pytest.fixture(scope="module")
def report(finished_job):
    return finished_job, write_report(finished_job)


def test_report_lists_every_frame_with_its_pictures_and_the_manifest_figures(report):
    spec, result = report
    out = Path(spec.output)
    table = read_manifests(open_storage(spec.output), spec.name)
    rows, summary = latest_rows(table), summarize(table)
    assert summary.by_status == {"ok": 5, "failed": 1}
    # the run made every frame's thumbnails: the report made the compare previews of the 4 masked frames
    assert (result.frames, result.pictures_made, result.pictures_kept, result.pictures_unavailable) == (6, 4, 1, 0)
    assert result.uri == str(out / "report.html")

    page = (out / "report.html").read_text()
    shown = read_blob(page)
    assert [(r["key"], r["status"]) for r in shown] == [(r["input_key"], r["status"]) for r in rows]
    assert element_text(page, "count-total") == "6"
    assert element_text(page, "count-ok") == "5"
    assert element_text(page, "count-failed") == "1"
    assert element_text(page, "count-masked") == "4"  # the clean frame had no mask
    failed = next(r for r in rows if r["status"] == "failed")
    assert f'<th scope="row" class="key">reel/f6-corrupt.png</th><td><span class="badge failed">failed</span></td><td class="reason">{failed["error"]}</td>' in page
    assert "<b>" not in page and "f #4 &amp; &lt;b&gt;.png" in page  # escaped in the failure-free HTML parts too
    assert missing_pictures(out) == []

    pictures = out / REPORT_ROOT / spec.name / "thumbs"
    for row in shown:
        if row["status"] != "ok":
            assert row["pictures"] is None
            continue
        made = {kind for kind in "omr" if (pictures / f"{row['pictures']}-{kind}.jpg").is_file()}
        assert made == ({"o", "m", "r"} if row["has_mask"] else {"o", "r"}), row["key"]
        with Image.open(pictures / f"{row['pictures']}-r.jpg") as thumb:
            assert thumb.size == (240, 180)  # the long side brought down to THUMB_SIZE
    previews = sorted((out / REPORT_ROOT / spec.name / "previews").glob("*-r.jpg"))
    assert len(previews) == 4  # every masked frame, since there are fewer than COMPARE_FRAMES
    compared = re.findall(r'<figcaption><span class="key">([^<]*)</span>', page)
    by_area = sorted((r for r in rows if r["mask_key"]), key=lambda r: -r["masked_fraction"])
    assert compared == [escape(r["input_key"]) for r in by_area]  # largest masked area first


def test_rebuilding_keeps_pictures_and_needs_only_the_output(report):
    spec, _ = report
    pictures = Path(spec.output) / REPORT_ROOT / spec.name
    before = {p: p.stat().st_mtime_ns for p in pictures.rglob("*.jpg")}
    result = rebuild_report(spec.output)  # the job's name and input come from what the first report saved
    assert (result.frames, result.pictures_made, result.pictures_kept) == (6, 0, 5)
    assert {p: p.stat().st_mtime_ns for p in pictures.rglob("*.jpg")} == before


def test_fills_deep_enough_to_be_reconstructions_are_measured_and_flagged_for_a_look(report):
    """A scratch's fill is a pixel or two from the picture; a blotch's, tens, and there the restorer invents rather
    than continues: the manifest says how deep each frame's fill went, and the report counts those to look at."""
    spec, _ = report
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(spec.output), spec.name))}
    # each frame's deepest hole is its blotch, 20, 36, 52 and 68 px tall: half of that from the picture
    for key, half_height in (("reel/f0.png", 10), ("reel/f1.png", 18), ("reel/f2.png", 26), (TRICKY_KEY, 34)):
        assert rows[key]["deepest_fill_px"] == pytest.approx(half_height, abs=1.5)
    assert rows["reel/f5-clean.png"]["deepest_fill_px"] is None  # nothing filled
    page = (Path(spec.output) / "report.html").read_text()
    assert element_text(page, "count-deep-fills") == "3"  # deeper than 16 px: all but f0
    assert "filled up to 34 px deep" in page


def test_damage_is_counted_by_kind_for_the_job_and_for_each_frame(report):
    """A condition report counts damage by kind: each masked frame here has a scratch (a line) and a blotch (an
    area), and in the last the scratch runs into the blotch, which makes them one area; the clean frame has none,
    and the corrupt one was never masked."""
    spec, _ = report
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(spec.output), spec.name))}
    for key in ("reel/f0.png", "reel/f1.png", "reel/f2.png"):
        assert (rows[key]["speck_count"], rows[key]["line_count"], rows[key]["area_count"]) == (0, 1, 1), key
        assert rows[key]["line_fraction"] == pytest.approx(3 / 320, rel=0.01)  # 3 px wide, the frame's height
    assert (rows[TRICKY_KEY]["line_count"], rows[TRICKY_KEY]["area_count"]) == (0, 1)
    assert rows[TRICKY_KEY]["area_fraction"] == pytest.approx(rows[TRICKY_KEY]["masked_fraction"])
    assert rows["reel/f5-clean.png"]["area_count"] == 0
    assert rows["reel/f6-corrupt.png"]["area_count"] is None  # failed before a mask was made: not known
    page = (Path(spec.output) / "report.html").read_text()
    assert element_text(page, "count-damage") == "7"
    assert ("3 lines (scratches, hairs) in 3 frames · 4 areas (blotches, stains, tears, losses) in 4 frames"
            in page)
    shown = {row["key"]: row["damage"] for row in read_blob(page)}
    assert shown["reel/f0.png"] == "1 line, 1 area" and shown["reel/f5-clean.png"] == ""
    assert "% masked (1 line, 1 area), filled up to" in page  # in each compare view's caption


def test_the_difference_view_is_black_where_nothing_changed_and_bright_where_the_fill_changed_pixels(report):
    """Conservation QA sees what the restorer changed, not only where the mask let it: |restored - original| x4."""
    spec, _ = report
    out = Path(spec.output)
    page = (out / "report.html").read_text()
    row = next(r for r in read_blob(page) if r["key"] == "reel/f0.png")
    manifest_row = next(r for r in latest_rows(read_manifests(open_storage(spec.output), spec.name))
                        if r["input_key"] == "reel/f0.png")
    difference = f"{REPORT_ROOT}/{spec.name}/previews/{report_module._digest(manifest_row, 'previews')}-d.jpg"
    assert f'value="{difference}"' in page  # a choice of its compare view
    assert f'<a href="{difference}">' in page  # and a link, for a reader without JavaScript
    original = np.asarray(Image.open(Path(spec.input) / row["key"]), dtype=int)
    restored = np.asarray(Image.open(out / (row["output"] or row["key"])), dtype=int)
    changed = np.abs(restored - original).max(axis=2)
    shown = np.asarray(Image.open(out / difference), dtype=int)
    assert shown.shape == changed.shape  # a 320x240 frame is shown at full resolution
    assert (changed >= 64).sum() > 500  # the fill replaced the white damage
    assert shown[changed >= 64].min() >= 230  # white: every change of 64 levels or more, amplified 4 times
    assert shown[changed == 0].max() <= 8  # black wherever the restorer left the pixel as it was


def test_a_report_built_before_the_difference_view_gets_it_on_rebuild_and_keeps_its_thumbnails(
        report, tmp_path, monkeypatch):
    """An output whose report an earlier version built (its previews named by that version, none a difference) is
    rebuilt with new previews for its compare views, counted as made, and names no picture that is not there. Its
    thumbnails are kept as they were: remaking them would read every original again, and lose the thumbnails of
    originals no longer readable (deleted, or moved to Glacier)."""
    spec, _ = report
    for side in ("in", "out"):
        shutil.copytree(Path(spec.output).parent / side, tmp_path / side)
    shutil.rmtree(tmp_path / "out" / REPORT_ROOT)
    copy = parse_spec({"name": spec.name, "input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    earlier_set = report_module.picture_set
    monkeypatch.setattr(pictures_module, "PICTURE_VERSIONS", {"thumbs": 2, "previews": 2})
    monkeypatch.setattr(report_module, "picture_set", lambda *args: {
        kind: data for kind, data in earlier_set(*args).items() if kind != "d"})
    assert write_report(copy).pictures_made == 5
    assert not list((tmp_path / "out" / REPORT_ROOT).rglob("*-d.jpg"))
    previews = {path.name for path in (tmp_path / "out" / REPORT_ROOT / spec.name / "previews").iterdir()}
    [plain] = [row for row in latest_rows(read_manifests(open_storage(copy.output), spec.name)) if row["output_key"]
               and f"{report_module._digest(row, 'previews')}-r.jpg" not in previews]  # no compare view
    monkeypatch.undo()
    (tmp_path / "in" / plain["input_key"]).unlink()  # its original is gone: its thumbnails must stay

    result = rebuild_report(copy.output)
    assert (result.pictures_made, result.pictures_kept, result.pictures_unavailable) == (4, 1, 0)
    assert len(list((tmp_path / "out" / REPORT_ROOT).rglob("*-d.jpg"))) == 4  # one per compare view
    assert missing_pictures(tmp_path / "out") == []
    page = (tmp_path / "out" / "report.html").read_text()
    assert next(row for row in read_blob(page) if row["key"] == plain["input_key"])["pictures"]
    again = rebuild_report(copy.output)
    assert (again.pictures_made, again.pictures_kept) == (0, 5)


def thumbs_made(spec) -> dict[str, bytes]:
    """The job's thumbnails in its local output, by file name."""
    return {path.name: path.read_bytes() for path in (Path(spec.output) / REPORT_ROOT / spec.name / "thumbs").iterdir()}


def varied_frames(root: Path) -> dict[str, np.ndarray]:
    """Frames whose thumbnails take each step of the way: 8-bit RGB, one shown turned (EXIF orientation 6), one
    with alpha, a 16-bit RGB TIFF with an RGB ICC profile, a 16-bit grey one; all masked but the last."""
    import tifffile
    from PIL import ImageCms

    (root / "masks").mkdir(parents=True)
    turned = Image.Exif()
    turned[274] = 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    wide = (np.concatenate([scene(2)] * 2, axis=1).astype(np.uint16) << 8) + 77  # 640 px: shrunk for a thumbnail
    Image.fromarray(scene(0)).save(root / "a-rgb.png")
    Image.fromarray(scene(1)).save(root / "b-turned.png", exif=turned.tobytes())
    Image.fromarray(np.dstack([scene(3), np.full((240, 320), 200, np.uint8)])).save(root / "c-alpha.png")
    tifffile.imwrite(root / "d-wide16.tif", wide, photometric="rgb", extratags=[(34675, 7, len(srgb), srgb, True)])
    Image.fromarray(scene(4)[..., 0].astype(np.uint16) * 257).save(root / "e-grey16.png")
    for stem, width in (("a-rgb", 320), ("b-turned", 320), ("c-alpha", 320), ("d-wide16", 640)):
        (root / "masks" / f"{stem}.png").write_bytes(png_bytes(scratch_mask(1, width=width)))


@pytest.mark.parametrize("settings, restored", [
    ({}, 5),
    ({"output_format": "jpeg"}, 4),  # lossy: the thumbnails show what the output holds (alpha fails)
    ({"transfer": "log"}, 2),  # 16-bit log scans, shown through their view (the 8-bit frames fail)
])
def test_the_thumbnails_a_run_makes_are_those_the_report_would_make(tmp_path, ray_session, settings, restored):
    """A run makes each frame's thumbnails as it writes it, byte for byte the ones the report makes from the files:
    the same pictures whichever made them, and no original, output or mask read again for them."""
    varied_frames(tmp_path / "in")
    spec = parse_spec({"name": "varied", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "restorer": {"name": "telea"}, "masks": {"orientation": "stored"}, **settings})
    assert run_job(*prepare(spec)).counts.get("ok") == restored
    made_in_run = thumbs_made(spec)
    rows = [row for row in latest_rows(read_manifests(open_storage(spec.output), spec.name)) if row["status"] == "ok"]
    assert sorted(made_in_run) == sorted(f"{report_module._digest(row)}-{kind}.jpg" for row in rows
                                         for kind in ("omr" if row["mask_key"] else "or"))
    shutil.rmtree(Path(spec.output) / REPORT_ROOT)
    assert write_report(spec).pictures_made == restored  # the report's own way, from the files
    assert thumbs_made(spec) == made_in_run


@pytest.fixture
def s3_proxy(s3_endpoint):
    """A proxy in front of the S3 server that logs every request (tests/faults.py)."""
    import faults

    proxy = faults.FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


def s3_job(s3_endpoint: str, bucket: str, endpoint_url: str, tmp_path: Path) -> Path:
    """Three frames on S3, the first with damage masked (so the one compare view), and the spec of a job over them
    through `endpoint_url`."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for index in range(3):
        damage = scratch_mask(index) if index == 0 else np.zeros((240, 320), np.uint8)
        client.put_object(Bucket=bucket, Key=f"in/reel/f{index}.png", Body=png_bytes(damaged(scene(index), damage)))
    client.put_object(Bucket=bucket, Key="in/reel/masks/f0.png", Body=png_bytes(scratch_mask(0)))
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "nightly", "input": f"s3://{bucket}/in",
                                         "output": f"s3://{bucket}/out", "endpoint_url": endpoint_url,
                                         "restorer": {"name": "telea"}}))
    return spec_file


def test_a_run_on_s3_reads_each_original_once_and_its_report_only_those_of_the_compare_views(
        s3_endpoint, s3_bucket, s3_proxy, ray_session, tmp_path):
    """`restore run` ends with the report. The run made every frame's thumbnails as it wrote the frame, so the report
    step fetches no original, output or mask again but those of its compare views (the largest damaged areas): a
    nightly run does not pay twice for its masters' GETs (nor a second retrieval fee on Glacier Instant Retrieval)."""
    from restore.cli import main as restore_main

    assert restore_main(["run", str(s3_job(s3_endpoint, s3_bucket, s3_proxy.url, tmp_path)), "--quiet"]) == 0
    gets = Counter(key for method, bucket, key in s3_proxy.requests if method == "GET" and bucket == s3_bucket)
    frames = [f"reel/f{index}.png" for index in range(3)]
    assert [gets[f"in/{key}"] for key in frames] == [2, 1, 1]  # f0, the compare view, is read again for its preview
    assert [gets[f"out/{key}"] for key in frames] == [1, 0, 0]
    assert gets["out/_masks/reel/f0.png.png"] == 1
    output = open_storage(f"s3://{s3_bucket}/out", s3_endpoint)
    thumbs = sorted(info.key.rsplit("-", 1)[1] for info in output.list(prefix=f"{REPORT_ROOT}/nightly/thumbs/"))
    assert thumbs == ["m.jpg"] + ["o.jpg"] * 3 + ["r.jpg"] * 3  # every frame's, the overlay where it has a mask


def test_a_thumbnail_storage_refuses_leaves_its_frame_restored_and_the_report_makes_it(
        s3_endpoint, s3_bucket, s3_proxy, ray_session, tmp_path):
    """A picture is never a reason to fail a frame: a thumbnail the output refuses (a bucket policy, a full disk)
    leaves the frame ok, and the report makes the set that is missing from the files, as for an older run's."""
    spec = parse_spec(yaml.safe_load(s3_job(s3_endpoint, s3_bucket, s3_proxy.url, tmp_path).read_text()))
    s3_proxy.hook = lambda request: "deny" if request.method == "PUT" and request.key.endswith("-m.jpg") else None
    try:  # the masked frame's overlay is refused: its set stops before the restored picture that completes it
        assert run_job(*prepare(spec)).counts == {"ok": 3}
    finally:
        s3_proxy.hook = None
    output = open_storage(spec.output, s3_endpoint)
    thumbs = f"{REPORT_ROOT}/nightly/thumbs/"
    assert len([info for info in output.list(prefix=thumbs) if info.key.endswith("-r.jpg")]) == 2  # the unmasked
    result = write_report(spec)
    assert (result.pictures_made, result.pictures_kept, result.pictures_unavailable) == (1, 2, 0)
    assert len(list(output.list(prefix=thumbs))) == 2 * 2 + 3


def test_a_changed_original_is_shown_without_pictures_and_says_why(report, tmp_path):
    spec, _ = report
    for side in ("in", "out"):
        shutil.copytree(Path(spec.output).parent / side, tmp_path / side)
    shutil.rmtree(tmp_path / "out" / REPORT_ROOT)
    (tmp_path / "in" / "reel" / "f1.png").write_bytes(png_bytes(scene(9)))  # edited after it was restored
    copy = parse_spec({"name": spec.name, "input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    result = write_report(copy)
    assert (result.pictures_made, result.pictures_unavailable) == (4, 1)
    row = next(r for r in read_blob((tmp_path / "out" / "report.html").read_text()) if r["key"] == "reel/f1.png")
    assert row["pictures"] is None and "has changed since the manifest recorded it" in row["note"]


def test_pictures_are_decoded_within_the_jobs_own_pixel_limit(report, tmp_path):
    """A job that raised `max_pixels` for its large scans gets their pictures; the report decodes as the run did."""
    spec, _ = report
    for side in ("in", "out"):
        shutil.copytree(Path(spec.output).parent / side, tmp_path / side)
    for limit, unavailable in ((240 * 320, 0), (240 * 320 - 1, 5)):  # the frames are 320x240
        shutil.rmtree(tmp_path / "out" / REPORT_ROOT)
        copy = parse_spec({"name": spec.name, "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                           "max_pixels": limit})
        assert write_report(copy).pictures_unavailable == unavailable
    notes = {r["note"] for r in read_blob((tmp_path / "out" / "report.html").read_text()) if r["status"] == "ok"}
    assert notes == {"no pictures: image is 320x240 = 76,800 pixels, over the limit of 76,799 pixels "
                     "(raise max_pixels in the spec)"}


def test_report_on_s3_is_served_as_a_web_page_and_rebuilds_from_the_bucket(report, s3_endpoint, s3_bucket):
    import boto3

    spec, _ = report
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    local = Path(spec.output).parent
    for path in sorted(p for side in ("in", "out") for p in (local / side).rglob("*") if p.is_file()):
        key = path.relative_to(local).as_posix()
        if not key.startswith(f"out/{REPORT_ROOT}/"):
            s3.put_object(Bucket=s3_bucket, Key=key, Body=path.read_bytes())
    remote = parse_spec({"name": spec.name, "input": f"s3://{s3_bucket}/in", "output": f"s3://{s3_bucket}/out",
                         "endpoint_url": s3_endpoint})
    result = write_report(remote)
    assert (result.pictures_made, result.uri) == (5, f"s3://{s3_bucket}/out/report.html")
    assert s3.head_object(Bucket=s3_bucket, Key="out/report.html")["ContentType"] == "text/html; charset=utf-8"
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"out/{REPORT_ROOT}/{spec.name}/thumbs/")["Contents"]
    assert len(listed) == 4 * 3 + 2
    again = rebuild_report(f"s3://{s3_bucket}/out", endpoint_url=s3_endpoint)
    assert (again.pictures_made, again.pictures_kept) == (0, 5)


def test_overlay_shows_a_one_pixel_scratch_on_a_downscaled_16_bit_scan():
    original = np.full((1200, 1600, 1), 30000, dtype=np.uint16)
    mask = np.zeros((1200, 1600), dtype=bool)
    mask[:, 801] = True  # one pixel wide: a tenth of a thumbnail pixel
    pictures = picture_set(shrink(original, 240), mask, original, quality=95)
    assert list(pictures) == ["o", "m", "r"]
    overlay = np.asarray(Image.open(io.BytesIO(pictures["m"])).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(pictures["o"])).convert("RGB")).astype(int)
    assert overlay.shape == plain.shape == (180, 240, 3)
    assert abs(plain[90, 120] - [117, 117, 117]).max() <= 2  # 30000 >> 8: gray stays gray, top 8 bits kept
    assert overlay[90, 120, 0] - overlay[90, 120, 1] > 80  # the scratch column is tinted
    assert abs(overlay[:, :100] - plain[:, :100]).max() <= 3  # and nothing far from it


def test_the_mask_view_outlines_masked_areas_so_it_shows_without_colour():
    """The magenta tint is a colour some reviewers do not see, and grey prints lose: black and white dashes around
    each masked area show it in grey too, against a light frame and a dark one."""
    for tone in (40, 128, 220):
        frame = np.full((200, 300, 3), tone, dtype=np.uint8)
        mask = np.zeros((200, 300), dtype=bool)
        mask[60:140, 100:200] = True
        pictures = picture_set(shrink(frame, 300), mask, frame, quality=95)
        grey = np.asarray(Image.open(io.BytesIO(pictures["m"])).convert("L"), dtype=int)
        edge = np.concatenate([grey[59, 102:198], grey[62:138, 200]])  # just outside the top and the right edges
        assert edge.max() - edge.min() > 150, tone  # black and white along the edge, whatever the frame's tone
        assert abs(grey[:40] - tone).max() <= 3  # and nothing away from it


def test_pictures_of_a_frame_shown_turned_are_turned_as_a_viewer_shows_it(tmp_path):
    """The output keeps the input's EXIF orientation, so a viewer shows both turned; so must the report, with the
    audit mask (on the stored pixels) turned alike."""
    import hashlib

    from restore.pictures import THUMB_SIZE
    from restore.report import _make_pictures

    mask = np.zeros((240, 320), np.uint8)
    mask[10:40, 250:310] = 255  # the stored picture's top right corner: its bottom right once turned 90° clockwise
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    Image.fromarray(damaged(scene(1), mask)).save(buffer, format="PNG", exif=exif.tobytes())
    data = buffer.getvalue()
    storage = open_storage(str(tmp_path))
    storage.put("in.png", data)
    storage.put("mask.png", png_bytes(mask))
    digest = hashlib.sha256(data).hexdigest()
    row = {"input_key": "in.png", "input_sha256": digest, "output_key": "in.png", "output_sha256": digest,
           "mask_key": "mask.png", "status": "ok"}
    spec = parse_spec({"name": "t", "input": "in", "output": "out"})
    assert _make_pictures(storage, storage, "rep", spec, row, thumbs=True, preview=False) is None
    name = report_module._digest(row)
    original, overlay = (np.asarray(Image.open(io.BytesIO(storage.get(f"rep/thumbs/{name}-{kind}.jpg"))), dtype=int)
                         for kind in ("o", "m"))
    assert original.shape[:2] == (THUMB_SIZE, THUMB_SIZE * 3 // 4)  # portrait, as shown
    tinted = np.abs(overlay - original).sum(axis=2) > 60
    height, width = tinted.shape
    assert tinted.sum() > 500 and tinted[height * 3 // 4:, width // 2:].sum() >= 0.9 * tinted.sum()


def test_previews_of_a_grainy_frame_are_made():
    """Film grain is the worst case for a JPEG encoder: the 2K compare views of a heavily grained frame still come
    out (they once failed with "broken data stream", and the run with them)."""
    grain = np.clip(128 + np.random.default_rng(0).normal(0, 40, (1080, 1440, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((1080, 1440), dtype=bool)
    mask[500:520, 700:720] = True
    pictures = picture_set(shrink(grain, PREVIEW_SIZE), mask, grain, quality=90)
    assert Image.open(io.BytesIO(pictures["r"])).size == (1440, 1080)


def chromium(*args: str, user_data: Path) -> str:
    run = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "TZ": READER_ZONE})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_report_opens_in_headless_chromium_with_every_image(report, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium package is not installed: the browser check of the report cannot run")
    spec, _ = report
    out = Path(spec.output)
    url = (out / "report.html").as_uri()
    # A window taller than the page, so every lazily loaded image is asked for before the DOM is dumped.
    dom = chromium("--window-size=1280,12000", "--virtual-time-budget=10000", "--dump-dom", url,
                   user_data=tmp_path / "profile")
    body = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    images = len(re.findall(r"<img\b", dom))
    assert images == 5 * 2 + 4 + 4 * 2  # thumbnails: original and restored per frame, overlay when masked; previews
    assert body["data-images-broken"] == "0"
    assert body["data-images-loaded"] == str(images)
    assert body["data-rows-rendered"] == "6"
    table = read_manifests(open_storage(spec.output), spec.name)
    assert element_text(dom, "count-ok") == str(summarize(table).by_status["ok"])
    assert element_text(dom, "page-info") == "frames 1–6 of 6"
    times = re.findall(r'<time datetime="([^"]+)">([^<]+)</time><span class="local">([^<]+)</span>', dom)
    assert len(times) == 3  # generated, the last run's start on its card and in the runs table
    for moment, utc, local in times:  # UTC as written, then the reader's own time
        at = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        assert utc.startswith(f"{at:%Y-%m-%d %H:%M}") and utc.endswith(" UTC")
        assert local == f" ({at.astimezone(ZoneInfo(READER_ZONE)):%Y-%m-%d %H:%M} your time, {READER_ZONE})"
    rendered_keys = re.findall(r'<tr><td><div class="key">([^<]*)</div>', dom)
    assert rendered_keys == [escape(r["input_key"], quote=False) for r in latest_rows(table)]
    links = [unquote(href) for href in re.findall(r'<a href="([^"]+)"', dom)]
    assert TRICKY_KEY in links and all((out / link).is_file() for link in links)

    screenshot = tmp_path / "report.png"
    chromium("--window-size=1280,1600", "--virtual-time-budget=10000", "--hide-scrollbars",
             f"--screenshot={screenshot}", url, user_data=tmp_path / "profile")
    with Image.open(screenshot) as picture:
        assert picture.size == (1280, 1600)
    if os.environ.get("RESTORE_TEST_ARTEFACTS"):
        target = Path(os.environ["RESTORE_TEST_ARTEFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / "report.png")


def test_choosing_the_difference_view_shows_it_and_says_so(report, tmp_path):
    """A compare view's "difference" choice (a radio button: reached and chosen by keyboard like the others) puts the
    difference picture left of the line, and its alt text and tag say what it shows."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium package is not installed: the browser check of the report cannot run")
    spec, _ = report
    out = Path(spec.output)
    chosen = out / "chosen.html"  # beside report.html, so its pictures resolve alike
    chosen.write_text((out / "report.html").read_text().replace(
        "</body>", '<script>document.querySelector(\'.left-view input[value$="-d.jpg"]\').click();</script></body>'))
    dom = chromium("--window-size=1280,12000", "--virtual-time-budget=10000", "--dump-dom", chosen.as_uri(),
                   user_data=tmp_path / "profile")
    card = re.search(r'<figure class="compare-card">.*?</figure>', dom, re.S).group(0)
    before = re.search(r'<img class="before" ([^>]*)>', card).group(1)
    key = re.search(r'<span class="key">([^<]*)</span>', card).group(1)
    assert re.search(r'src="([^"]*)"', before).group(1).endswith("-d.jpg")
    assert f'alt="difference between restored and original ×4, black where unchanged, of {key}"' in before
    assert '<span class="tag left">difference ×4</span>' in card
    body = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    assert body["data-images-broken"] == "0"


def test_the_published_spec_keeps_an_ipv6_endpoint_and_drops_credentials_and_tokens():
    from restore.report import _public_spec

    spec = parse_spec({"name": "j", "input": "s3://in/a", "output": "s3://out/b",
                       "endpoint_url": "http://lab:pa@ss@[::1]:9000/?X-Amz-Security-Token=secret"})
    assert _public_spec(spec)["endpoint_url"] == "http://[::1]:9000/"  # `report OUTPUT` reconnects with it


def test_pictures_carry_the_frames_rgb_icc_profile_so_a_browser_shows_its_colours():
    from PIL import ImageCms

    wide = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any real profile, header patched
    adobe_like = wide[:16] + b"RGB " + wide[20:]
    frame = scene(2)
    mask = scratch_mask(2) > 0
    for kind, data in picture_set(shrink(frame, 240), mask, frame, quality=90, icc_profile=adobe_like).items():
        assert Image.open(io.BytesIO(data)).info.get("icc_profile") == adobe_like, kind
    grey_profile = wide[:16] + b"GRAY" + wide[20:]  # cannot describe the RGB pictures a grey frame becomes
    pictures = picture_set(shrink(frame[..., :1], 240), mask, frame[..., :1], quality=90,
                           icc_profile=grey_profile)
    assert all("icc_profile" not in Image.open(io.BytesIO(data)).info for data in pictures.values())


def test_frames_not_restored_are_listed_with_their_reasons_and_the_page_speaks_to_assistive_technology():
    """A skipped frame may wait on a setting the job must give, not on storage: its own reason says which. The
    page announces the frame list's count as it changes, and labels each comparison with its frame."""
    from datetime import datetime, timezone

    import pyarrow as pa

    from restore.manifest import MANIFEST_SCHEMA
    from restore.report import render_report

    now = datetime(2026, 11, 27, 12, tzinfo=timezone.utc)
    base = {"job": "t", "run_id": "20261127T110000000Z-aaaaaa", "config_hash": "c", "finished_at": now}
    table = pa.Table.from_pylist([
        {**base, "input_key": "a.jpg", "status": "skipped",
         "error": "masks.orientation: this frame is shown turned (EXIF Orientation 3); say how its mask was drawn"},
        {**base, "input_key": "b.png", "status": "failed", "error": "empty file (0 bytes)"},
        {**base, "input_key": "c.png", "status": "withdrawn", "error": "its original is no longer in the input"},
    ], schema=MANIFEST_SCHEMA)
    spec = parse_spec({"name": "t", "input": "in", "output": "out"})
    page = render_report(spec, table, latest_rows(table), {}, set(), now)

    assert "storage could not serve" not in page
    failures = re.search(r'<tbody id="failures">(.*?)</tbody>', page, re.S).group(1)
    assert re.findall(r'<th scope="row" class="key">([^<]*)</th><td><span class="badge (\w+)">', failures) == [
        ("a.jpg", "skipped"), ("b.png", "failed")]
    assert "say how its mask was drawn" in failures
    runs = re.search(r'<tbody id="runs">(.*?)</tbody>', page, re.S).group(1)
    assert re.findall(r'<td class="num">([\d,]+)</td>', runs)[:5] == ["3", "0", "1", "1", "1"]  # frames, ok…withdrawn
    assert '<span id="page-info" role="status">' in page


def test_a_held_frame_is_shown_with_what_a_restore_would_repaint_and_a_turned_ones_mask_both_ways(
        tmp_path, ray_session):
    """A held frame waits on a person (masks.max_given, masks.orientation, masks.max_detected), who must see it to say
    what the spec lacks: the run that holds it, its one read, keeps pictures of what its masks mark, and the report
    shows them beside the reason. A turned frame's mask is shown read each way, so the reviewer sees which way lies
    on the damage."""
    from restore.pictures import TINT

    (tmp_path / "in" / "masks").mkdir(parents=True)
    mask = scratch_mask(0)
    (tmp_path / "in" / "inverted.png").write_bytes(png_bytes(damaged(scene(0), mask)))
    (tmp_path / "in" / "masks" / "inverted.png").write_bytes(png_bytes(255 - mask))  # an editor's layer mask
    exif = Image.Exif()
    exif[274] = 3  # shown turned 180°
    buffer = io.BytesIO()
    Image.fromarray(damaged(scene(1), mask)).save(buffer, format="PNG", exif=exif.tobytes())
    (tmp_path / "in" / "turned.png").write_bytes(buffer.getvalue())
    (tmp_path / "in" / "masks" / "turned.png").write_bytes(png_bytes(mask[::-1, ::-1]))  # drawn on the picture shown
    (tmp_path / "in" / "plain.png").write_bytes(png_bytes(damaged(scene(2), mask)))
    (tmp_path / "in" / "masks" / "plain.png").write_bytes(png_bytes(mask))
    (tmp_path / "in" / "stamped.png").write_bytes(buffer.getvalue())  # turned too, with a stamp to protect alone
    (tmp_path / "in" / "protect").mkdir()
    (tmp_path / "in" / "protect" / "stamped.png").write_bytes(png_bytes(mask))
    spec = parse_spec({"name": "held", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "restorer": {"name": "telea"}, "masks": {"protect": "{dir}/protect/{stem}.png"}})
    context, plan = prepare(spec)
    assert run_job(context, plan).counts == {"ok": 1, "skipped": 3}
    write_report(spec)

    output = tmp_path / "out"
    page = (output / "report.html").read_text()
    section = re.search(r"<h2>Held for review.*?</section>", page, re.S).group(0)
    cards = dict(re.findall(r'<span class="key">([^<]*)</span> <span class="meta">waits for <code>([^<]*)</code>',
                            section))
    assert cards == {"inverted.png": "masks.max_given", "turned.png": "masks.orientation",
                     "stamped.png": "masks.orientation"}
    assert "stamped.png with its protect mask as drawn on the picture as shown" in section  # what it keeps
    assert "drawn the other way round" in section and "masks.orientation: displayed" in section
    assert missing_pictures(output) == []
    pictures = {alt: np.asarray(Image.open(output / unquote(src)).convert("RGB"), dtype=int)
                for src, alt in re.findall(r'<img src="([^"]+)" alt="([^"]+)"', section)}

    def tinted(alt: str) -> np.ndarray:
        """The pixels an overlay tints: nearer the tint than the original is."""
        original = pictures[f"original of {alt.split(' ')[0]}"]
        overlay = pictures[alt]
        return np.abs(overlay - TINT).sum(axis=2) < np.abs(original - TINT).sum(axis=2) - 60

    damage = mask > 0
    given = tinted("inverted.png with its given mask tinted magenta and outlined in black and white")
    assert given.shape == damage.shape and given[~damage].mean() > 0.9 and given[damage].mean() < 0.1  # all but it
    stored = damaged(scene(1), mask).astype(int)
    original = pictures["original of turned.png"]
    assert np.abs(original - stored[::-1, ::-1]).mean() < 4 < np.abs(original - stored).mean()  # shown turned
    as_shown = tinted("turned.png with its mask as drawn on the picture as shown (masks.orientation: displayed) "
                      "tinted magenta and outlined in black and white")
    as_stored = tinted("turned.png with its mask as drawn on the pixels as stored (masks.orientation: stored) "
                       "tinted magenta and outlined in black and white")
    shown_damage = damage[::-1, ::-1]  # the damage as a viewer shows the frame
    assert as_shown[shown_damage].mean() > 0.9 and as_shown[~shown_damage].mean() < 0.02
    assert as_stored[shown_damage].mean() < 0.2  # the other reading misses the damage

    rebuilt = rebuild_report(str(output))  # from the output alone, with nothing read again
    assert rebuilt.pictures_made == 0 and "<h2>Held for review" in (output / "report.html").read_text()


def test_frames_show_and_are_found_by_the_captions_their_cataloguers_wrote(tmp_path, ray_session):
    """A curator knows a collection by its captions, not its scanners' file names: each frame's caption (here IPTC
    in a JPEG, as picture desks write it, and a PNG's Title) is in its manifest row, beside its name in the report,
    and found by the report's search."""
    import struct

    from restore.cli import main as restore_main

    (tmp_path / "in" / "masks").mkdir(parents=True)
    mask = scratch_mask(0)
    caption = "Hafenarbeiter an der Elbe, Hamburg 1962".encode()
    record = b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(record)) + record + b"\x00" * (len(record) % 2)
    buffer = io.BytesIO()
    Image.fromarray(damaged(scene(0), mask)).save(buffer, "JPEG", quality=95)
    payload = b"Photoshop 3.0\x00" + resource
    data = buffer.getvalue()
    (tmp_path / "in" / "press_0001.jpg").write_bytes(data[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2)
                                                     + payload + data[2:])
    titled = PngImagePlugin.PngInfo()
    titled.add_text("Title", "Reel 4, shot 12")
    Image.fromarray(damaged(scene(1), mask)).save(tmp_path / "in" / "f1.png", pnginfo=titled)
    for name in ("press_0001", "f1"):
        (tmp_path / "in" / "masks" / f"{name}.png").write_bytes(png_bytes(mask))
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "captions", "input": "in", "output": "out",
                                         "restorer": {"name": "telea"}}))
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    rows = {row["input_key"]: row for row in read_manifests(open_storage(str(tmp_path / "out")),
                                                             "captions").to_pylist()}
    assert rows["press_0001.jpg"]["caption"] == "Hafenarbeiter an der Elbe, Hamburg 1962"
    assert rows["f1.png"]["caption"] == "Reel 4, shot 12"
    page = (tmp_path / "out" / "report.html").read_text()
    assert {row["key"]: row["caption"] for row in read_blob(page)} == {
        "press_0001.jpg": "Hafenarbeiter an der Elbe, Hamburg 1962", "f1.png": "Reel 4, shot 12"}
    assert '<span class="caption">Hafenarbeiter an der Elbe, Hamburg 1962</span>' in page  # its compare view
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium package is not installed: the browser check of the search cannot run")
    searched = tmp_path / "out" / "searched.html"  # beside report.html, so its pictures resolve alike
    searched.write_text(page.replace("</body>", "<script>var box = document.getElementById('search'); box.value = "
                                     "'ELBE'; box.dispatchEvent(new Event('input'));</script></body>"))
    dom = chromium("--window-size=1280,4000", "--virtual-time-budget=5000", "--dump-dom", searched.as_uri(),
                   user_data=tmp_path / "profile")
    found = re.findall(r'<tr><td><div class="key">([^<]*)</div><div class="caption">([^<]*)</div>', dom)
    assert found == [("press_0001.jpg", "Hafenarbeiter an der Elbe, Hamburg 1962")]  # by its caption, any case


def test_the_held_frames_of_one_video_get_pictures_of_their_own():
    """A video's frames share the file's sha256 (and, detected, have no mask file): named by that alone, every held
    frame of a reel would show the last one's pictures."""
    from restore.pictures import held_pictures_name

    names = {held_pictures_name(f"reel.mov#{index:06d}", "ab" * 32, None, None, "c0ffee", "masks.max_detected")
             for index in range(3)}
    assert len(names) == 3
