"""End-to-end jobs on a real local Ray instance, real files, and a real S3 endpoint (moto's server)."""
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from restore.cli import main as restore_main
from restore.manifest import MANIFEST_SCHEMA, latest_rows, read_manifests
from restore.pipeline import neighbour_keys, prepare, run_job
from restore.spec import parse_spec
from restore.storage import open_storage
from restore.verify import verify


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene(seed: int, height=48, width=64, channels=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 3 + y * 2 + seed * 17) % 256
    image = np.stack([(base + 40 * c) % 256 for c in range(channels)], axis=2) + rng.integers(0, 8, (height, width, channels))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[:, :, 0] if channels == 1 else image


def box_mask(height=48, width=64) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[10:20, 20:30] = 255
    return mask


def write_collection(root: Path, count: int) -> dict[str, np.ndarray]:
    """`count` frames under reel/, each with a mask; returns the frames by key."""
    frames = {}
    for index in range(count):
        key = f"reel/f{index:03d}.png"
        frames[key] = scene(index)
        (root / "reel" / "masks").mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(png_bytes(frames[key]))
        (root / "reel" / "masks" / f"f{index:03d}.png").write_bytes(png_bytes(box_mask()))
    return frames


def job(tmp_path: Path, **overrides) -> dict:
    raw = {
        "name": "t", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
        "restorer": {"name": "telea"}, "batch_size": 2, "commit_every": 2,
    }
    raw.update(overrides)
    return raw


def run(raw: dict):
    context, plan = prepare(parse_spec(raw))
    return run_job(context, plan)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_local_job_restores_masked_pixels_only_and_records_every_frame(tmp_path, ray_session):
    frames = write_collection(tmp_path / "in", 3)
    (tmp_path / "in" / "gray.png").write_bytes(png_bytes(scene(7, channels=1)))  # no mask: copied unchanged
    (tmp_path / "in" / "corrupt.png").write_bytes(png_bytes(scene(8))[:200])
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    (tmp_path / "in" / "notes.png").write_bytes(b"this is a text file, not an image")
    (tmp_path / "in" / "wrongmask.png").write_bytes(png_bytes(scene(9)))
    (tmp_path / "in" / "masks").mkdir()
    (tmp_path / "in" / "masks" / "wrongmask.png").write_bytes(png_bytes(np.zeros((10, 10), np.uint8)))
    originals = tree_digest(tmp_path / "in")

    result = run(job(tmp_path))

    assert result.counts == {"ok": 4, "failed": 4}
    assert tree_digest(tmp_path / "in") == originals  # originals are never written
    rows = {row["input_key"]: row for row in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    assert set(rows) == set(frames) | {"gray.png", "corrupt.png", "empty.png", "notes.png", "wrongmask.png"}
    hole = box_mask() > 0
    for key, original in frames.items():
        row = rows[key]
        assert row["status"] == "ok" and row["error"] is None
        restored = np.asarray(Image.open(tmp_path / "out" / row["output_key"]))
        assert restored.shape == original.shape
        assert np.array_equal(restored[~hole], original[~hole])
        assert row["masked_fraction"] == pytest.approx(hole.mean())
        assert row["output_sha256"] == hashlib.sha256((tmp_path / "out" / row["output_key"]).read_bytes()).hexdigest()
        assert row["input_sha256"] == hashlib.sha256((tmp_path / "in" / key).read_bytes()).hexdigest()
        assert (tmp_path / "out" / row["mask_key"]).is_file()
        assert row["restorer"] == "telea" and row["worker"]
    gray = np.asarray(Image.open(tmp_path / "out" / "gray.png"))
    assert np.array_equal(gray, scene(7, channels=1))
    assert rows["gray.png"]["masked_fraction"] == 0 and rows["gray.png"]["mask_key"] is None
    for key, words in {"corrupt.png": "truncat", "empty.png": "empty", "notes.png": "not an image",
                       "wrongmask.png": "mask"}.items():
        assert rows[key]["status"] == "failed"
        assert words in rows[key]["error"].lower(), rows[key]["error"]
    # The manifest is plain Parquet that any reader opens.
    parts = sorted((tmp_path / "out" / "_manifests" / "t").rglob("*.parquet"))
    assert len(parts) >= 2 and sum(pq.read_table(p).num_rows for p in parts) == 8


def test_a_run_of_more_batches_than_blocks_cuts_whole_batches_into_each_block(tmp_path, ray_session, monkeypatch):
    import restore.pipeline

    assert restore.pipeline.block_rows(4_000, 4) == 4  # a batch a block, up to MAX_BLOCKS of them
    assert restore.pipeline.block_rows(1_500_000, 4) == 1_500  # then whole batches: 1,000 blocks
    import ray.data

    frames = write_collection(tmp_path / "in", 9)
    monkeypatch.setattr(restore.pipeline, "MAX_BLOCKS", 2)  # 5 batches of 2: blocks of 3 batches
    blocks = []
    from_arrow = ray.data.from_arrow
    monkeypatch.setattr(ray.data, "from_arrow", lambda tables: blocks.extend(tables) or from_arrow(tables))
    result = run(job(tmp_path))
    assert [block.num_rows for block in blocks] == [6, 3]
    assert result.counts == {"ok": 9}
    rows = read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()
    assert sorted(row["input_key"] for row in rows) == sorted(frames)


def test_rerun_processes_only_new_changed_and_failed_frames(tmp_path, ray_session):
    write_collection(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    first = run(job(tmp_path))
    assert first.counts == {"ok": 4, "failed": 1}

    again = run(job(tmp_path, workers={"count": 1, "cpus": 1}, batch_size=3))  # worker settings: same config
    assert again.planned == 1 and again.already_done == 4  # only the failed frame is retried

    (tmp_path / "in" / "broken.png").write_bytes(png_bytes(scene(11)))
    time.sleep(0.01)
    (tmp_path / "in" / "reel" / "f001.png").write_bytes(png_bytes(scene(12)))
    fixed = run(job(tmp_path))
    assert fixed.planned == 2 and fixed.counts == {"ok": 2}
    assert run(job(tmp_path)).planned == 0

    other_config = run(job(tmp_path, restorer={"name": "navier-stokes"}))
    assert other_config.planned == 5
    # Back to the first config: the outputs now hold Navier–Stokes fills, so every frame is restored again.
    back = run(job(tmp_path))
    assert back.planned == 5 and back.counts == {"ok": 5}
    rows = latest_rows(read_manifests(open_storage(str(tmp_path / "out")), "t"))
    assert {row["restorer"] for row in rows} == {"telea"}


def test_excluded_files_and_the_companions_macos_writes_are_not_frames(tmp_path, ray_session):
    """A collection copied from a Mac carries a "._name.png" beside every picture (AppleDouble metadata named like
    it), each of which failed every night and, given up, kept the alert on; and an archive keeps files it does not
    want restored (versos, rejects) among those it does: `exclude` leaves them out, as `include` could not."""
    from restore.spec import SpecError

    write_collection(tmp_path / "in", 2)
    (tmp_path / "in" / "reel" / "._f000.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (tmp_path / "in" / "reel" / "f001_verso.png").write_bytes(png_bytes(scene(5))[:200])  # and it is damaged
    assert run(job(tmp_path)).counts == {"ok": 2, "failed": 1}  # the verso fails; the companion is no frame
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(str(tmp_path / "out")), "t"))}
    assert set(rows) == {"reel/f000.png", "reel/f001.png", "reel/f001_verso.png"}

    excluding = job(tmp_path, exclude=["*_VERSO.png"])  # as include: the name or the whole key, any case
    context, plan = prepare(parse_spec(excluding))
    assert (plan.tasks, plan.withdrawn) == ([], ["reel/f001_verso.png"])
    run_job(context, plan)
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t"]) == 0  # the alert is off
    (tmp_path / "in" / "reel" / "f002_verso.png").write_bytes(png_bytes(scene(6)))
    assert run(excluding).planned == 0  # nor is a new one read
    # a pattern that also matches the masks leaves them masks: read, and their edits noticed, not a reason to redo
    masks_too = job(tmp_path, exclude=["*_verso.png", "masks/*", "reel/masks/*"])
    assert run(masks_too).planned == 0
    (tmp_path / "in" / "reel" / "masks" / "f000.png").write_bytes(png_bytes(255 - box_mask()))
    assert run(job(tmp_path, exclude=["*_verso.png", "reel/masks/*"], masks={"max_given": 1.0})).planned == 1
    for wrong in ([3], {}, 0, ""):
        with pytest.raises(SpecError, match="exclude: expected a list of glob patterns"):
            parse_spec(job(tmp_path, exclude=wrong))
    with pytest.raises(Exception, match=r"no frames matching .* but not \*"):
        prepare(parse_spec(job(tmp_path, exclude=["*"])))


def test_status_counts_the_ok_frames_the_next_run_restores_again_under_the_spec_now(tmp_path, ray_session, capsys):
    """New weights in an upgrade, or an edited restorer: status said all was done, and the night redid them all."""
    write_collection(tmp_path / "in", 3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    capsys.readouterr()
    assert restore_main(["status", str(spec_file), "--json", str(tmp_path / "s.json")]) == 0
    assert "next run restores them again" not in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["ok_under_other_config"] == 0

    spec_file.write_text(yaml.safe_dump(job(tmp_path, restorer={"name": "navier-stokes"})))
    assert restore_main(["status", str(spec_file), "--json", str(tmp_path / "s.json")]) == 0
    assert "so the next run restores them again, if their originals are still among its frames: 3 of the 3 ok" \
        in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["ok_under_other_config"] == 3
    assert run(job(tmp_path, restorer={"name": "navier-stokes"})).counts == {"ok": 3}  # as it said
    assert restore_main(["status", str(tmp_path / "out")]) == 0  # without a spec the config is not known
    assert "next run" not in capsys.readouterr().out
    # weights at a path only the workers have, or a pin an upgrade no longer meets: status still reports
    spec_file.write_text(yaml.safe_dump(job(tmp_path, restorer={"name": "gan", "weights": str(tmp_path / "g.pt")})))
    assert restore_main(["status", str(spec_file), "--json", str(tmp_path / "s.json")]) == 0
    shown = capsys.readouterr().out
    assert "3 frames: 3 ok" in shown and "which frames the next run restores again is not known here" in shown
    reported = json.loads((tmp_path / "s.json").read_text())
    assert "ok_under_other_config" not in reported and "no generator file" in reported["config_unknown"]


def test_a_failed_frame_whose_original_is_deleted_is_closed_not_reported_for_ever(tmp_path, ray_session, capsys):
    """Deleting a corrupt scan is how an archive deals with it: the alert must clear, and come back with the file."""
    write_collection(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--quiet"]) == 1
    assert restore_main(["status", str(spec_file)]) == 1

    (tmp_path / "in" / "broken.png").unlink()
    capsys.readouterr()
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    assert "closed 1 frame no longer among the job's frames (withdrawn in the manifest): failed or skipped" \
        in capsys.readouterr().out
    assert restore_main(["status", str(spec_file)]) == 0
    assert "3 frames: 2 ok, 1 withdrawn" in capsys.readouterr().out
    assert restore_main(["report", str(spec_file)]) == 0
    assert 'id="count-withdrawn">1<' in (tmp_path / "out" / "report.html").read_text()
    assert run(job(tmp_path)).planned == 0  # closed once

    (tmp_path / "in" / "broken.png").write_bytes(png_bytes(scene(7)))  # a good copy is put back
    assert run(job(tmp_path)).counts == {"ok": 1}


def test_a_mask_added_edited_or_removed_later_restores_the_frame_again(tmp_path, ray_session):
    write_collection(tmp_path / "in", 2)
    masks = tmp_path / "in" / "reel" / "masks"
    (tmp_path / "in" / "reel" / "late.png").write_bytes(png_bytes(scene(5)))  # no mask yet: copied unchanged
    assert run(job(tmp_path)).counts == {"ok": 3}
    assert run(job(tmp_path)).planned == 0

    (masks / "late.png").write_bytes(png_bytes(box_mask()))  # a retoucher marks its damage
    wider = box_mask()
    wider[5:30, 5:40] = 255
    (masks / "f000.png").write_bytes(png_bytes(wider))  # and corrects another frame's mask
    (masks / "f001.png").unlink()  # and finds a third frame needs nothing
    again = run(job(tmp_path))
    assert again.planned == 3 and again.counts == {"ok": 3}
    out = tmp_path / "out" / "reel"
    late = np.asarray(Image.open(out / "late.png"))
    assert np.array_equal(late[box_mask() == 0], scene(5)[box_mask() == 0]) and not np.array_equal(late, scene(5))
    grown = (wider > 0) & (box_mask() == 0)  # only the corrected mask covers these pixels
    assert not np.array_equal(np.asarray(Image.open(out / "f000.png"))[grown], scene(0)[grown])
    assert np.array_equal(np.asarray(Image.open(out / "f001.png")), scene(1))
    assert not (tmp_path / "out" / "_masks" / "reel" / "f001.png.png").exists()  # it no longer says what changed
    assert verify(str(tmp_path / "out"), "t", unknown=True).ok
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(str(tmp_path / "out")), "t"))}
    assert rows["reel/late.png"]["mask_etag"] == open_storage(str(tmp_path / "in")).head("reel/masks/late.png").etag
    assert rows["reel/f001.png"]["mask_etag"] == "" and rows["reel/f001.png"]["protect_etag"] is None
    assert run(job(tmp_path)).planned == 0

    (masks / "f001.png").write_bytes(png_bytes(np.zeros((10, 10), np.uint8)))  # a mask of the wrong size fails
    assert run(job(tmp_path, max_attempts=1)).counts == {"failed": 1}
    assert run(job(tmp_path, max_attempts=1)).planned == 0  # given up...
    (masks / "f001.png").write_bytes(png_bytes(box_mask()))
    assert run(job(tmp_path, max_attempts=1)).counts == {"ok": 1}  # ...until the mask is fixed

    detect = job(tmp_path, masks={"source": "detect"})  # a config that reads no mask file: one rerun, then done
    assert run(detect).planned == 3 and run(detect).planned == 0


def test_masks_in_a_store_of_their_own_are_noticed_when_added_later(tmp_path, ray_session):
    (tmp_path / "in" / "reel").mkdir(parents=True)
    (tmp_path / "in" / "reel" / "f000.png").write_bytes(png_bytes(scene(0)))
    (tmp_path / "store" / "other").mkdir(parents=True)
    (tmp_path / "store" / "other" / "f000.png").write_bytes(png_bytes(box_mask()))  # outside the pattern's folder
    spec = job(tmp_path, masks={"uri": str(tmp_path / "store"), "pattern": "masks/{stem}.png"})
    assert run(spec).counts == {"ok": 1} and run(spec).planned == 0
    (tmp_path / "store" / "masks").mkdir()
    (tmp_path / "store" / "masks" / "f000.png").write_bytes(png_bytes(box_mask()))
    assert run(spec).counts == {"ok": 1}
    restored = np.asarray(Image.open(tmp_path / "out" / "reel" / "f000.png"))
    assert not np.array_equal(restored, scene(0)) and run(spec).planned == 0


def test_s3_job_reads_and_writes_buckets_with_manifests_on_s3(s3_endpoint, ray_session, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="archive-in")
    client.create_bucket(Bucket="archive-out")
    client.put_bucket_versioning(Bucket="archive-in", VersioningConfiguration={"Status": "Enabled"})
    for index in range(3):
        client.put_object(Bucket="archive-in", Key=f"scans/box 1/p{index}.png", Body=png_bytes(scene(index)))
        client.put_object(Bucket="archive-in", Key=f"scans/box 1/masks/p{index}.png", Body=png_bytes(box_mask()))
    client.put_object(Bucket="archive-in", Key="scans/box 1/bad.png", Body=b"\x89PNG broken")
    client.put_object(Bucket="archive-in", Key="scans/box 1/cold.png", Body=png_bytes(scene(5)), StorageClass="GLACIER")
    raw = job(tmp_path, input="s3://archive-in/scans", output="s3://archive-out/restored", endpoint_url=s3_endpoint,
              max_attempts=1)

    result = run(raw)

    assert result.counts == {"ok": 3, "failed": 1}  # the archived frame waits unread, no fault of its own
    assert client.head_object(Bucket="archive-out", Key="restored/box 1/p0.png")["ContentType"] == "image/png"
    [cold] = [row for row in read_manifests(open_storage("s3://archive-out/restored", s3_endpoint), "t").to_pylist()
              if row["status"] == "skipped"]
    assert cold["input_key"] == "box 1/cold.png" and "archival storage (GLACIER) and not restored" in cold["error"]

    keys = {o["Key"] for o in client.list_objects_v2(Bucket="archive-out", Prefix="restored/")["Contents"]}
    assert {f"restored/box 1/p{i}.png" for i in range(3)} <= keys
    assert any(k.startswith("restored/_manifests/t/") and k.endswith(".parquet") for k in keys)
    table = read_manifests(open_storage("s3://archive-out/restored", s3_endpoint), "t")
    assert sorted(table["status"].to_pylist()) == ["failed", "ok", "ok", "ok", "skipped"]
    ok_rows = [row for row in table.to_pylist() if row["status"] == "ok"]
    assert all(row["input_etag"] and row["input_version_id"] for row in ok_rows)  # exactly which version was read
    restored = np.asarray(Image.open(io.BytesIO(client.get_object(Bucket="archive-out", Key="restored/box 1/p0.png")["Body"].read())))
    assert np.array_equal(restored[box_mask() == 0], scene(0)[box_mask() == 0])
    again = run(raw)  # max_attempts 1: the broken frame is given up; the archived one still waits, said once
    assert again.planned == 0 and again.counts == {}
    assert read_manifests(open_storage("s3://archive-out/restored", s3_endpoint), "t").num_rows == table.num_rows


def test_frames_in_archival_storage_wait_unread_until_restored(s3_endpoint, ray_session, tmp_path, capsys):
    """A night spends a HEAD, not a GET, on a master in Glacier, starts no worker for it, and records its state
    once, not every night; the run after its restore completes restores it."""
    import boto3
    from moto.moto_api import state_manager
    from moto.s3.models import s3_backends

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("cold-in", "cold-out"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="cold-in", Key="reel/f000.png", Body=png_bytes(scene(0)))
    client.put_object(Bucket="cold-in", Key="reel/f001.png", Body=png_bytes(scene(1)), StorageClass="DEEP_ARCHIVE")
    raw = job(tmp_path, input="s3://cold-in", output="s3://cold-out/restored", endpoint_url=s3_endpoint)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    output = open_storage("s3://cold-out/restored", s3_endpoint)

    assert restore_main(["run", str(spec_file), "--quiet"]) == 1  # a frame is not restored yet
    assert "frames waiting in archival storage: 1, of which being restored: 0" in capsys.readouterr().out
    [waiting] = [row for row in read_manifests(output, "t").to_pylist() if row["status"] == "skipped"]
    assert waiting["input_key"] == "reel/f001.png" and "(DEEP_ARCHIVE) and not restored" in waiting["error"]
    _, plan = prepare(parse_spec(raw))
    assert plan.tasks == [] and [frame["input_key"] for frame in plan.archived] == ["reel/f001.png"]
    rows = read_manifests(output, "t").num_rows
    assert restore_main(["run", str(spec_file), "--quiet"]) == 1  # the next night: still waiting, nothing new
    assert read_manifests(output, "t").num_rows == rows

    state_manager.set_transition("s3::keyrestore", {"progression": "manual", "times": 10 ** 9})
    try:  # what S3 says for hours after a RestoreObject, where moto would complete it at once
        client.restore_object(Bucket="cold-in", Key="reel/f001.png", RestoreRequest={"Days": 1})
        thawing = s3_backends["123456789012"]["aws"].buckets["cold-in"].keys["reel/f001.png"]
        thawing.status = "IN_PROGRESS"
        assert restore_main(["run", str(spec_file), "--quiet"]) == 1
        assert "frames waiting in archival storage: 1, of which being restored: 1" in capsys.readouterr().out
        [waiting] = [row for row in latest_rows(read_manifests(output, "t")) if row["status"] == "skipped"]
        assert "being restored from archival storage (DEEP_ARCHIVE)" in waiting["error"]
        thawing.status = "RESTORED"  # the object reads now, though it still lists as DEEP_ARCHIVE
    finally:
        state_manager.unset_transition("s3::keyrestore")
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    assert {row["input_key"]: row["status"] for row in latest_rows(read_manifests(output, "t"))} == {
        "reel/f000.png": "ok", "reel/f001.png": "ok"}
    assert restore_main(["status", str(spec_file)]) == 0


def test_a_first_job_whose_masks_are_elsewhere_says_its_frames_came_back_unchanged(tmp_path, ray_session, capsys):
    """A first job over scans with no mask files changes nothing: "3 ok" alone reads as "3 cleaned", so the run,
    its summary and the report say that nothing was masked, and where the masks were looked for."""
    (tmp_path / "in" / "box").mkdir(parents=True)
    for index in range(3):
        (tmp_path / "in" / "box" / f"p{index}.png").write_bytes(png_bytes(scene(index)))
    (tmp_path / "in" / "box" / "masks").mkdir()
    (tmp_path / "in" / "box" / "masks" / "p0.png").write_bytes(png_bytes(box_mask()))  # one frame has its mask
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))

    assert restore_main(["run", str(spec_file), "--json", str(tmp_path / "run.json")]) == 0
    out = capsys.readouterr().out
    assert ("2 of them came back unchanged, as nothing was masked (2 had no mask file where masks.pattern "
            "'{dir}/masks/{stem}.png' looks") in out
    assert json.loads((tmp_path / "run.json").read_text())["nothing_masked"] == 2
    page = (tmp_path / "out" / "report.html").read_text()
    assert "status ok; 2 of them unchanged, as nothing was masked" in page


def test_a_job_with_archive_restore_asks_its_archived_masters_back_and_a_later_run_restores_them(
        s3_endpoint, ray_session, tmp_path, capsys):
    """Asking S3 for each master by hand does not scale to an archive: with `archive_restore` the nightly run that
    finds a master in Deep Archive asks it back (once: not again while it is being restored), a dry run asks
    nothing, and the run after S3 has restored it restores the frame."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("thaw-in", "thaw-out"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="thaw-in", Key="reel/f000.png", Body=png_bytes(scene(0)))
    client.put_object(Bucket="thaw-in", Key="reel/f001.png", Body=png_bytes(scene(1)), StorageClass="DEEP_ARCHIVE")
    raw = job(tmp_path, input="s3://thaw-in", output="s3://thaw-out/restored", endpoint_url=s3_endpoint,
              archive_restore={"days": 2, "tier": "Bulk"})
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    output = open_storage("s3://thaw-out/restored", s3_endpoint)

    assert restore_main(["run", str(spec_file), "--dry-run"]) == 0
    assert "1 would be asked back (archive_restore)" in capsys.readouterr().out
    assert "Restore" not in client.head_object(Bucket="thaw-in", Key="reel/f001.png")  # a dry run asks nothing

    assert restore_main(["run", str(spec_file), "--quiet"]) == 1  # the master is not read this run
    assert "asked back now: 1 (RestoreObject, Bulk tier, kept 2 days)" in capsys.readouterr().out
    assert "Restore" in client.head_object(Bucket="thaw-in", Key="reel/f001.png")
    [waiting] = [row for row in latest_rows(read_manifests(output, "t")) if row["status"] == "skipped"]
    assert waiting["input_key"] == "reel/f001.png" and "being restored" in waiting["error"]

    assert restore_main(["run", str(spec_file), "--quiet"]) == 0  # S3 has restored it (moto at once)
    assert {row["input_key"]: row["status"] for row in latest_rows(read_manifests(output, "t"))} == {
        "reel/f000.png": "ok", "reel/f001.png": "ok"}


def test_outputs_and_masks_are_written_in_the_storage_class_the_job_names_and_manifests_stay_standard(
        s3_endpoint, s3_bucket, ray_session, tmp_path):
    """Millions of derivatives are cheaper in Infrequent Access or Glacier Instant Retrieval from the first write
    than moved there by a lifecycle rule; manifests and the lease, read every run, stay in the default class."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="in/reel/f0.png", Body=png_bytes(scene(0)))
    client.put_object(Bucket=s3_bucket, Key="in/reel/masks/f0.png", Body=png_bytes(box_mask()))
    raw = job(tmp_path, input=f"s3://{s3_bucket}/in", output=f"s3://{s3_bucket}/out",
              endpoint_url=s3_endpoint, output_storage_class="STANDARD_IA")

    assert run(raw).counts == {"ok": 1}
    classes = {o["Key"]: o.get("StorageClass", "STANDARD")
               for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"]}
    assert classes["out/reel/f0.png"] == classes["out/_masks/reel/f0.png.png"] == "STANDARD_IA"
    assert {cls for key, cls in classes.items() if key.startswith("out/_manifests/")} == {"STANDARD"}
    with pytest.raises(ValueError, match="output_storage_class: only an s3:// output has storage classes"):
        parse_spec({**raw, "output": str(tmp_path / "out")})


def test_an_output_a_lifecycle_rule_archived_is_adopted_unread_when_written_again(s3_endpoint, s3_bucket):
    """Outputs are deterministic: the same bytes again are the object already there, even one in Glacier, which
    cannot be read back to compare (the frame would be skipped every night); S3's ETag, its MD5, tells."""
    import boto3

    from restore.pipeline import put_or_adopt

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="out/f.png", Body=b"restored bytes", StorageClass="GLACIER")
    storage = open_storage(f"s3://{s3_bucket}/out", s3_endpoint)

    assert put_or_adopt(storage, "f.png", b"restored bytes", "image/png").storage_class == "GLACIER"
    assert client.head_object(Bucket=s3_bucket, Key="out/f.png")["StorageClass"] == "GLACIER"  # left as it was
    put_or_adopt(storage, "f.png", b"restored BYTES", "image/png")  # other bytes of the same size: written
    assert client.get_object(Bucket=s3_bucket, Key="out/f.png")["Body"].read() == b"restored BYTES"


def test_a_log_scan_is_detected_and_restored_through_its_view_and_written_back_as_log_codes(tmp_path, ray_session):
    """A film scanner's log TIFF is flat and greenish as stored: a restorer trained on pictures fills it with a
    cast. With `transfer: log` detectors and restorers see its view (as for a DPX), and the changes go back into
    log codes; unmasked codes stay exact."""
    import tifffile

    from restore.film import LOG_SCAN, from_view, to_view
    from restore.restorers import build_restorer
    from restore.spec import RestorerSettings

    view = np.repeat(np.repeat(scene(3).astype(np.uint16) * 257, 3, axis=0), 3, axis=1)  # 144 x 192, 16-bit
    codes = from_view(view, LOG_SCAN)
    mask = np.zeros(codes.shape[:2], bool)
    mask[40:80, 60:110] = True
    codes[mask] = 20000  # a blotch
    (tmp_path / "in" / "masks").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "in" / "scan.tif", codes, photometric="rgb")
    (tmp_path / "in" / "masks" / "scan.png").write_bytes(png_bytes(mask.astype(np.uint8) * 255))
    (tmp_path / "in" / "proof.png").write_bytes(png_bytes(scene(4)))  # 8-bit: no log scan
    (tmp_path / "in" / "masks" / "proof.png").write_bytes(png_bytes(box_mask()))
    raw = job(tmp_path, transfer="log", include=["*.tif", "*.png"])

    assert run(raw).counts == {"ok": 1, "failed": 1}
    restored = tifffile.imread(tmp_path / "out" / "scan.tif")
    assert np.array_equal(restored[~mask], codes[~mask])
    fill = build_restorer(RestorerSettings(name="telea"))(to_view(codes, LOG_SCAN), mask)
    expected = codes.copy()
    expected[mask] = from_view(fill[mask], LOG_SCAN)
    assert np.array_equal(restored, expected)  # the restorer saw the view, and its fill went back as log codes
    failed = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(str(tmp_path / "out")), "t"))}
    assert "transfer: log reads 16-bit scans" in failed["proof.png"]["error"]
    assert parse_spec(raw).config_hash(None) != parse_spec({**raw, "transfer": "display"}).config_hash(None)


def test_the_manifest_tells_the_pixels_that_changed_from_those_the_mask_allowed(tmp_path, ray_session):
    """A mask says where pixels may change; QC wants where they did: a fill over clean, even paper keeps its
    values, a fill over a blotch changes them all."""
    flat = np.full((48, 64, 3), 128, np.uint8)
    blotched = scene(1)
    blotched[box_mask() > 0] = 255
    (tmp_path / "in" / "reel" / "masks").mkdir(parents=True)
    for name, pixels in (("flat", flat), ("blotched", blotched)):
        (tmp_path / "in" / "reel" / f"{name}.png").write_bytes(png_bytes(pixels))
        (tmp_path / "in" / "reel" / "masks" / f"{name}.png").write_bytes(png_bytes(box_mask()))

    assert run(job(tmp_path)).counts == {"ok": 2}
    rows = {row["input_key"]: row for row in latest_rows(read_manifests(open_storage(str(tmp_path / "out")), "t"))}
    masked = (box_mask() > 0).mean()
    assert rows["reel/flat.png"]["masked_fraction"] == rows["reel/blotched.png"]["masked_fraction"] == masked
    assert rows["reel/flat.png"]["changed_fraction"] == 0.0
    assert rows["reel/blotched.png"]["changed_fraction"] == masked


def test_output_inside_input_is_refused_before_any_work(tmp_path, ray_session):
    write_collection(tmp_path / "in", 1)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path, output=str(tmp_path / "in" / "restored"))))
    assert restore_main(["run", str(spec_file)]) == 2
    assert not (tmp_path / "in" / "restored").exists()


def test_dry_run_lists_without_processing(tmp_path, capsys):
    write_collection(tmp_path / "in", 3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 would be processed" in out and "reel/f000.png" in out
    assert not (tmp_path / "out").exists()
    for name in ("shot_10.png", "shot_2.png"):  # a scanner that does not pad its numbers
        (tmp_path / "in" / name).write_bytes(png_bytes(scene(1)))
    assert restore_main(["run", str(spec_file), "--dry-run", "--json", str(tmp_path / "dry.json")]) == 0
    keys = json.loads((tmp_path / "dry.json").read_text())["keys"]
    assert keys == ["reel/f000.png", "reel/f001.png", "reel/f002.png", "shot_2.png", "shot_10.png"]


def test_a_missing_input_folder_is_named_with_what_to_check(tmp_path, capsys):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--dry-run"]) == 2
    assert "the folder does not exist: check the path, or that its share is mounted" in capsys.readouterr().err
    (tmp_path / "in").mkdir()  # there but empty: no hint, the include patterns are what to check
    assert restore_main(["run", str(spec_file), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no frames matching *" in err and "does not exist" not in err and "videos" not in err
    (tmp_path / "in" / "reel.MKV").write_bytes(b"a film lab's reel")  # videos are read only when named
    assert restore_main(["run", str(spec_file), "--dry-run"]) == 2
    assert "it holds videos, read only when include names them: include: ['*.mkv']" in capsys.readouterr().err


def test_a_night_of_fewer_frames_than_workers_starts_a_worker_pool_it_can_fill(tmp_path, ray_session):
    """A night's one new frame started every worker of the spec (each loading the model), and Ray Data warned in
    each nightly log that the operator received fewer inputs than its minimum of actors."""
    import warnings

    write_collection(tmp_path / "in", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(job(tmp_path, workers={"count": 2, "cpus": 0.5})).counts == {"ok": 1}
    assert not [w for w in caught if "concurrent actors" in str(w.message)]


def test_a_reader_that_stops_reading_ends_a_listing_quietly(tmp_path, monkeypatch, capsys):
    """`restore run JOB --dry-run | head` printed '[Errno 32] Broken pipe' and exited 2, an error in a script."""
    write_collection(tmp_path / "in", 3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))

    class GoneReader(io.StringIO):  # the standard output of `restore ... | head -1`, once head has exited
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", GoneReader())
    out = tmp_path / "dry.json"
    assert restore_main(["run", str(spec_file), "--dry-run", "--json", str(out)]) == 141  # SIGPIPE's, not 2
    assert capsys.readouterr().err == ""
    assert json.loads(out.read_text())["exit_code"] == 141  # a scheduler reads this run's, not last night's


def test_a_run_started_beside_a_checkout_of_the_project_imports_the_package(tmp_path, ray_session):
    """Ray puts the driver's working directory on its workers' import path: a `restore/` folder there that is not
    the package (the folder a `git clone` makes) must not be imported in its place."""
    write_collection(tmp_path / "in", 1)
    (tmp_path / "restore").mkdir()
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = Path(sys.executable).with_name("restore")  # the installed command, as a user runs it
    done = subprocess.run([str(command), "run", str(spec_file), "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 ok, 0 failed" in done.stdout


def test_a_job_keeps_a_scans_xmp_and_iptc(tmp_path, ray_session):
    """Rights and accession numbers travel with the frame through every stage to the restored TIFF."""
    import tifffile

    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:rights>Museum 1987.4.12</dc:rights></x:xmpmeta>'
    iptc = b"\x1c\x02t\x00\x0f(c) Museum 1987"
    (tmp_path / "in" / "reel" / "masks").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "in" / "reel" / "scan.tif", scene(3), photometric="rgb",
                     extratags=[(700, 1, len(xmp), xmp, True), (33723, 7, len(iptc), iptc, True)])
    (tmp_path / "in" / "reel" / "masks" / "scan.png").write_bytes(png_bytes(box_mask()))
    assert run(job(tmp_path)).counts == {"ok": 1}
    tags = tifffile.TiffFile(tmp_path / "out" / "reel" / "scan.tif").pages.first.tags
    assert (tags[700].value, tags[33723].value) == (xmp, iptc)


def test_a_stopped_run_keeps_its_finished_frames_exits_130_and_status_says_it_is_not_done(tmp_path, ray_session,
                                                                                          capsys):
    """A scheduler's SIGTERM to the installed command, rows not yet due for a part: the frames done are committed
    (a rerun does not restore them again), the exit is 130 (not an abort), and `status` does not call the job done."""
    count = 60
    write_collection(tmp_path / "in", count)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path, batch_size=1, commit_every=64)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = Path(sys.executable).with_name("restore")
    driver = subprocess.Popen([str(command), "run", str(spec_file), "--quiet"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((tmp_path / "out" / "reel").glob("*.png"))) < 3:
            time.sleep(0.05)
        time.sleep(1.0)  # the written frames' rows reach the driver
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, stderr[-2000:]
    assert "interrupted; run the same command again to resume" in stderr

    committed = read_manifests(open_storage(str(tmp_path / "out")), "t")
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_manifests" / "t").glob("*/_summary.json")]
    assert summary["status"] == "interrupted" and summary["planned"] == count
    assert 1 <= committed.num_rows == sum(summary["counts"].values()) < count, "the stop should land part-way"
    capsys.readouterr()
    assert restore_main(["status", str(spec_file)]) == 1
    assert f"was stopped after {committed.num_rows} of its {count} frames" in capsys.readouterr().out

    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    assert f"{count - committed.num_rows} ok, 0 failed" in capsys.readouterr().out  # only the remainder
    assert restore_main(["status", str(spec_file)]) == 0  # finished by the rerun


def test_a_stopped_job_reads_whole_again_once_nothing_is_left_and_a_stop_after_the_last_frame_is_no_stop(
        tmp_path, ray_session, capsys):
    from restore.pipeline import RunInterrupted
    from restore.pipeline import run as run_with_lease

    def stop_after(frames):
        def progress(done, total, failed):
            if done >= frames:
                raise KeyboardInterrupt
        return progress

    write_collection(tmp_path / "in", 4)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path, batch_size=1)))
    spec = parse_spec(job(tmp_path, batch_size=1))
    with pytest.raises(RunInterrupted):
        run_with_lease(spec, progress=stop_after(1))
    assert restore_main(["status", str(spec_file)]) == 1
    done = {row["input_key"] for row in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    for index in range(4):  # the frames the stopped run did not reach leave the collection
        if f"reel/f{index:03d}.png" not in done:
            (tmp_path / "in" / "reel" / f"f{index:03d}.png").unlink()
            (tmp_path / "in" / "reel" / "masks" / f"f{index:03d}.png").unlink()
    assert run_with_lease(spec)[2].planned == 0
    assert restore_main(["status", str(spec_file)]) == 0  # whole again, though that run had nothing to do

    write_collection(tmp_path / "more", 2)
    for path in (tmp_path / "more").rglob("*.png"):  # two new frames, f000 and f001 of another reel
        target = tmp_path / "in" / "reel2" / path.relative_to(tmp_path / "more" / "reel")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    with pytest.raises(RunInterrupted):
        run_with_lease(spec, progress=stop_after(2))  # the stop lands once both have come back
    capsys.readouterr()
    assert restore_main(["status", str(spec_file)]) == 0 and "stopped" not in capsys.readouterr().out


def test_killed_run_resumes_with_only_the_remainder_and_no_duplicates(tmp_path, ray_session):
    count = 12
    write_collection(tmp_path / "in", count)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path, batch_size=1, commit_every=1)))
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "restore.cli", "run", str(spec_file), "--quiet"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifests = tmp_path / "out" / "_manifests" / "t"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(manifests.rglob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    committed = read_manifests(open_storage(str(tmp_path / "out")), "t")
    assert 1 <= committed.num_rows < count, "the kill should land part-way"

    resumed = run(job(tmp_path))

    assert resumed.planned == count - committed.num_rows
    table = read_manifests(open_storage(str(tmp_path / "out")), "t")
    ok_keys = [row["input_key"] for row in table.to_pylist() if row["status"] == "ok"]
    assert sorted(ok_keys) == sorted(f"reel/f{i:03d}.png" for i in range(count))  # each exactly once
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_sequence_windows_hand_each_frame_its_neighbours_within_its_folder():
    keys = ["r1/f3.png", "r1/f1.png", "r1/f2.png", "r2/a.png", "r2/b.png"]
    windows = neighbour_keys(keys, 1)
    assert windows["r1/f1.png"] == ["r1/f2.png"]
    assert windows["r1/f2.png"] == ["r1/f1.png", "r1/f3.png"]
    assert windows["r2/a.png"] == ["r2/b.png"]
    assert neighbour_keys(keys, 0)["r1/f2.png"] == []
    unpadded = neighbour_keys([f"shot_{i}.png" for i in range(1, 12)], 1)  # frame numbers without leading zeros
    assert unpadded["shot_2.png"] == ["shot_1.png", "shot_3.png"]
    assert unpadded["shot_9.png"] == ["shot_8.png", "shot_10.png"] and unpadded["shot_11.png"] == ["shot_10.png"]
    # and the temporal stages are told which of them come before the frame in that same order
    from types import SimpleNamespace

    from restore.pipeline import _still_neighbours

    keys = [f"shot_{i}.png" for i in range(1, 14)]
    context = SimpleNamespace(spec=SimpleNamespace(uses_neighbours=True))
    decoded = {key: np.zeros((4, 4, 3), np.uint8) for key in keys}
    for key, window, before in (("shot_9.png", 1, 1), ("shot_10.png", 1, 1), ("shot_11.png", 2, 2)):
        row = {"input_key": key, "neighbour_keys": neighbour_keys(keys, window)[key]}
        assert _still_neighbours(context, row, decoded)[1] == before, key


def test_worker_pool_larger_than_the_cluster_is_refused_before_any_work(tmp_path, ray_session):
    from restore.pipeline import JobError

    write_collection(tmp_path / "in", 1)
    with pytest.raises(JobError, match="workers: 4 worker"):
        run(job(tmp_path, workers={"count": 4, "cpus": 1}))
    assert not (tmp_path / "out" / "_manifests").exists()


def test_film_output_for_frames_of_another_format_fails_when_planned_not_after_restoring(tmp_path):
    write_collection(tmp_path / "in", 2)
    _, plan = prepare(parse_spec(job(tmp_path, output_format="exr")))
    assert len(plan.tasks) == 2 and all(task["plan_error"] == "exr output needs a EXR input (this frame is named as "
                                        "PNG): write it as png or tiff" for task in plan.tasks)


def test_a_frame_the_output_format_cannot_hold_fails_before_it_is_restored(tmp_path, ray_session):
    write_collection(tmp_path / "in", 1)
    deep = scene(1).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "in" / "reel" / "deep.png"), deep[..., ::-1])  # 16-bit RGB
    Image.fromarray(np.dstack([scene(2), np.full((48, 64), 200, np.uint8)])).save(tmp_path / "in" / "reel" / "cut.png")
    for name in ("deep", "cut"):
        (tmp_path / "in" / "reel" / "masks" / f"{name}.png").write_bytes(png_bytes(box_mask()))
    result = run(job(tmp_path, output_format="jpeg"))
    assert result.counts == {"ok": 2, "failed": 1}
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    assert rows["reel/f000.png"]["output_key"] == "reel/f000.png.jpg"
    assert rows["reel/deep.png"]["bit_depth"] == 8  # a 16-bit scan's JPEG copy: rounded to the 8 bits JPEG holds
    copy = np.asarray(Image.open(tmp_path / "out" / "reel" / "deep.png.jpg"), dtype=int)
    clean = ~(box_mask() > 0)
    assert np.abs(copy[clean] - scene(1)[clean]).mean() < 4  # JPEG's own loss
    assert "JPEG cannot hold an alpha channel" in rows["reel/cut.png"]["error"]
    assert rows["reel/cut.png"]["restore_seconds"] is None  # refused when decoded: no restorer time spent on it
    assert rows["reel/cut.png"]["mask_key"] is None


def test_microfilm_and_negatives_come_back_bilevel_and_white_is_zero_as_scanned(tmp_path, ray_session):
    """A bilevel microfilm page came back as 8-bit greyscale, and a white-is-zero (MinIsWhite) scan as black-is-zero
    with every sample inverted: the same picture to a viewer that honours the tag, another file to the archive."""
    import tifffile

    (tmp_path / "in" / "masks").mkdir(parents=True)
    page = np.zeros((48, 64), bool)
    page[8:12, 4:60] = True  # a line of print
    page[30:34, 4:40] = True
    scratched = page.copy()
    scratched[:, 30:32] = True  # a scratch down the reel
    Image.fromarray(scratched).save(tmp_path / "in" / "page.tif", compression="group4")
    tifffile.imwrite(tmp_path / "in" / "film.tif", ~scratched, photometric="miniswhite")  # as microfilm is stored
    negative = (np.random.default_rng(2).integers(0, 60_000, (48, 64)) + 4_000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in" / "plate.tif", negative, photometric="miniswhite", compression="lzw",
                     resolution=(2400, 2400), resolutionunit="INCH")
    scratch = np.zeros((48, 64), np.uint8)
    scratch[:, 30:32] = 255
    for name in ("page", "film", "plate"):
        (tmp_path / "in" / "masks" / f"{name}.png").write_bytes(png_bytes(scratch))
    assert run(job(tmp_path)).counts == {"ok": 3}
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    assert [rows[key]["bit_depth"] for key in ("page.tif", "film.tif", "plate.tif")] == [1, 1, 16]
    outside = scratch == 0
    with tifffile.TiffFile(tmp_path / "out" / "page.tif") as tif:
        stored = tif.pages.first
        assert stored.bitspersample == 1 and stored.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert np.array_equal(stored.asarray()[outside], scratched[outside])
        assert stored.compression == tifffile.COMPRESSION.ADOBE_DEFLATE  # G4, which tifffile cannot write
    with tifffile.TiffFile(tmp_path / "out" / "film.tif") as tif:
        stored = tif.pages.first
        assert stored.bitspersample == 1 and stored.photometric == tifffile.PHOTOMETRIC.MINISWHITE
        assert np.array_equal(stored.asarray()[outside], ~scratched[outside])  # bit for bit, as scanned
        assert stored.compression == tifffile.COMPRESSION.NONE  # uncompressed, as scanned
    with tifffile.TiffFile(tmp_path / "out" / "plate.tif") as tif:
        stored = tif.pages.first
        assert stored.photometric == tifffile.PHOTOMETRIC.MINISWHITE
        assert stored.compression == tifffile.COMPRESSION.LZW
        assert np.array_equal(stored.asarray()[outside], negative[outside])  # sample for sample, as scanned
    assert verify(str(tmp_path / "out"), "t").ok


def test_a_jpeg_with_nothing_to_restore_keeps_its_own_encoding_in_a_jpeg_output(tmp_path, ray_session):
    """Encoding a JPEG again changes every pixel a little and, at the output's quality, may grow the file: a frame
    with nothing masked is its own bytes, with the provenance comment added; a restored one is encoded anew."""
    from restore.verify import read_provenance

    (tmp_path / "in" / "masks").mkdir(parents=True)
    for name in ("clean", "scratched"):
        Image.fromarray(scene(4)).save(tmp_path / "in" / f"{name}.jpg", quality=80, progressive=True,
                                       comment=b"scan station 3")
    (tmp_path / "in" / "masks" / "scratched.png").write_bytes(png_bytes(box_mask()))
    assert run(job(tmp_path, output_format="jpeg")).counts == {"ok": 2}
    original = (tmp_path / "in" / "clean.jpg").read_bytes()
    kept = (tmp_path / "out" / "clean.jpg").read_bytes()
    provenance = read_provenance(kept)
    assert provenance["Software"].startswith("restore ") and json.loads(provenance["restore:provenance"])["id"]
    comment = json.dumps(provenance, sort_keys=True).encode()
    assert len(kept) == len(original) + 4 + len(comment)  # one segment more, and nothing else changed
    assert kept.replace(b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment, b"") == original
    restored = (tmp_path / "out" / "scratched.jpg").read_bytes()
    assert read_provenance(restored)["Software"].startswith("restore ")
    with Image.open(io.BytesIO(restored)) as picture:
        assert not picture.info.get("progressive")  # encoded anew, as a restored frame must be
    assert verify(str(tmp_path / "out"), "t").ok


def test_masks_of_frames_shown_turned_are_read_as_the_spec_says_they_were_drawn(tmp_path, ray_session):
    """An editor shows a frame with an EXIF orientation turned, and a mask drawn there lies on other pixels than
    the stored ones: restoring it as stored repaints clean pixels and leaves the damage. Until the spec says how
    masks were drawn such a frame fails; then the damage it marks, and only that, is restored."""
    from PIL import ImageOps

    from restore.spec import parse_spec

    pixels = scene(3)
    damage = np.zeros((48, 64), bool)
    damage[5:12, 40:55] = True  # near a corner of the stored pixels: turned, it lies elsewhere
    damaged = pixels.copy()
    damaged[damage] = 255
    (tmp_path / "in" / "masks").mkdir(parents=True)
    for orientation in (3, 6):
        exif = Image.Exif()
        exif[274] = orientation
        buffer = io.BytesIO()
        Image.fromarray(damaged).save(buffer, format="PNG", exif=exif.tobytes())
        (tmp_path / "in" / f"o{orientation}.png").write_bytes(buffer.getvalue())
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB")
        drawn = np.all(np.asarray(shown) == 255, axis=2)  # the damage, as it appears on the screen
        (tmp_path / "in" / "masks" / f"o{orientation}.png").write_bytes(png_bytes(drawn.astype(np.uint8) * 255))
    (tmp_path / "in" / "plain.png").write_bytes(png_bytes(damaged))
    (tmp_path / "in" / "masks" / "plain.png").write_bytes(png_bytes(damage.astype(np.uint8) * 255))
    exif = Image.Exif()
    exif[274] = 8
    for name, picture in (("o8.png", damaged), ("masks/o8.png", damage.astype(np.uint8) * 255)):  # a copy of the
        Image.fromarray(picture).save(tmp_path / "in" / name, exif=exif.tobytes())  # file, tag and all: a viewer
        # shows the mask turned as it shows the frame

    assert run(job(tmp_path)).counts == {"ok": 1, "skipped": 3}  # a setting the spec lacks: never given up
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    assert "turned 180°" in rows["o3.png"]["error"] and "masks.orientation: displayed" in rows["o6.png"]["error"]
    assert rows["o3.png"]["held_for"] == "masks.orientation"
    _, plan = prepare(parse_spec(job(tmp_path)))  # held: not read again while the spec does not say
    assert (plan.tasks, plan.held) == ([], ["o3.png", "o6.png", "o8.png"])
    _, plan = prepare(parse_spec(job(tmp_path, masks={"orientation": "stored"})))  # it says, with the same hash
    assert sorted(task["input_key"] for task in plan.tasks) == ["o3.png", "o6.png", "o8.png"] and plan.held == []
    assert run(job(tmp_path, masks={"orientation": "displayed"})).counts == {"ok": 4}  # a new setting: all again
    for name in ("o3.png", "o6.png", "o8.png", "plain.png"):
        restored = np.asarray(Image.open(tmp_path / "out" / name))
        assert np.array_equal(restored[~damage], pixels[~damage])  # clean pixels, as stored, untouched
        assert not np.any(np.all(restored[damage] == 255, axis=1))  # the damage is gone
    assert parse_spec(job(tmp_path)).config_hash(None) != parse_spec(
        job(tmp_path, masks={"orientation": "displayed"})).config_hash(None)
    assert parse_spec(job(tmp_path)).config_hash(None) == parse_spec(  # as masks were read before: nothing redone
        job(tmp_path, masks={"orientation": "stored"})).config_hash(None)


def test_a_turned_frames_mask_that_fits_it_neither_way_fails_at_once_instead_of_waiting_for_a_setting(
        tmp_path, ray_session):
    """Held for masks.orientation, such a frame waited for a setting under which it could only fail on its size."""
    (tmp_path / "in" / "masks").mkdir(parents=True)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(scene(3)).save(tmp_path / "in" / "turned.png", exif=exif.tobytes())
    (tmp_path / "in" / "masks" / "turned.png").write_bytes(png_bytes(box_mask(40, 40)))  # a mask of another frame
    assert run(job(tmp_path)).counts == {"failed": 1}
    row = read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()[0]
    assert row["held_for"] is None and "is 40x40, and the frame is 64x48 as stored, turned or not" in row["error"]


def test_a_mask_drawn_inverted_is_held_not_repainted_until_the_spec_says_invert(tmp_path, ray_session, capsys):
    """An editor's layer mask shows the damage black on white: read as it is, it repainted 99 % of the frame and
    called it restored. Such a frame is held with the reason; masks.invert reads the damage as black."""
    from restore.spec import SpecError

    write_collection(tmp_path / "in", 2)
    inverted = 255 - box_mask()
    (tmp_path / "in" / "reel" / "masks" / "f001.png").write_bytes(png_bytes(inverted))
    assert run(job(tmp_path)).counts == {"ok": 1, "skipped": 1}
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()}
    held = rows["reel/f001.png"]
    assert held["held_for"] == "masks.max_given" and held["given_fraction"] > 0.95
    assert "drawn the other way round" in held["error"] and "masks.invert: true" in held["error"]
    assert not (tmp_path / "out" / "reel" / "f001.png").exists()
    assert rows["reel/f000.png"]["given_fraction"] == pytest.approx((box_mask() > 0).mean())
    _, plan = prepare(parse_spec(job(tmp_path)))
    assert (plan.tasks, plan.held) == ([], ["reel/f001.png"])  # not read again while the spec is the same
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t", "--json", str(tmp_path / "s.json")]) == 1
    assert "held for review until the spec says more: 1 (1 for masks.max_given)" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["held"] == {"reel/f001.png": "masks.max_given"}

    # the masks of this reel mark damage in black: f000's mask, a box in white, now reads as everything but the box
    (tmp_path / "in" / "reel" / "masks" / "f000.png").write_bytes(png_bytes(inverted))
    assert run(job(tmp_path, masks={"invert": True})).counts == {"ok": 2}
    original = scene(1)
    restored = np.asarray(Image.open(tmp_path / "out" / "reel" / "f001.png"))
    box = box_mask() > 0
    assert np.array_equal(restored[~box], original[~box])  # only the box, the damage, was repainted
    with pytest.raises(SpecError, match="masks.invert: only used with masks.source given, both or given-else-detect"):
        parse_spec(job(tmp_path, masks={"source": "detect", "invert": True}))


def test_damage_is_counted_as_marked_before_dilate_widens_and_joins_it(tmp_path, ray_session):
    """masks.dilate grows every region alike: counted after it, a row of dust specks became one area and a hair
    painted with a broad brush an area too."""
    (tmp_path / "in" / "reel" / "masks").mkdir(parents=True)
    mask = np.zeros((240, 320), np.uint8)
    mask[20:220, 100:106] = 255  # a hair painted 6 px wide
    for x in range(160, 300, 7):
        mask[120:122, x:x + 2] = 255  # dust, 5 px apart: dilate 4 would join it all
    (tmp_path / "in" / "reel" / "f000.png").write_bytes(png_bytes(scene(0, 240, 320)))
    (tmp_path / "in" / "reel" / "masks" / "f000.png").write_bytes(png_bytes(mask))
    assert run(job(tmp_path, masks={"dilate": 4})).counts == {"ok": 1}
    row = read_manifests(open_storage(str(tmp_path / "out")), "t").to_pylist()[0]
    assert (row["speck_count"], row["line_count"], row["area_count"]) == (20, 1, 0)
    assert row["masked_fraction"] > row["speck_fraction"] + row["line_fraction"]  # the dilated mask is wider


def test_a_file_name_with_terminal_escapes_is_printed_escaped(tmp_path, ray_session, capsys):
    """A donor's file name can carry a carriage return and escape codes that would print a false summary over the
    real one in the operator's terminal."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a\r\x1b[2Kjob t: 2 frames: 2 ok.png").write_bytes(b"not an image")
    run(job(tmp_path))
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t"]) == 1
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\r" not in shown and "a\\r\\x1b[2Kjob t: 2 frames: 2 ok.png" in shown


def test_a_mask_whose_frame_is_gone_is_not_taken_for_a_frame(tmp_path):
    write_collection(tmp_path / "in", 2)
    (tmp_path / "in" / "reel" / "f000.png").unlink()  # deleted or renamed upstream: its mask stays behind
    (tmp_path / "in" / "masks" / "gone").mkdir(parents=True)  # the masks of a video since deleted
    (tmp_path / "in" / "masks" / "gone" / "000000.png").write_bytes(png_bytes(box_mask()))
    Image.fromarray(box_mask()).save(tmp_path / "in" / "reel" / "masks" / "f001.jpg")  # a copy in another format
    _, plan = prepare(parse_spec(job(tmp_path)))
    assert [task["input_key"] for task in plan.tasks] == ["reel/f001.png"] and plan.listed == 1
    assert plan.orphan_masks == ["masks/gone/000000.png", "reel/masks/f000.png"] and plan.misformatted_masks == {}
    (tmp_path / "in" / "reel" / "masks" / "f001.png").rename(tmp_path / "in" / "f001-mask.bak")  # only the jpg left
    _, plan = prepare(parse_spec(job(tmp_path)))
    assert [task["input_key"] for task in plan.tasks] == ["reel/f001.png"]  # the mask is no frame, and its frame
    assert plan.misformatted_masks == {"reel/f001.png": "reel/masks/f001.jpg"}  # is told where its mask lies
    (tmp_path / "in" / "f001-mask.bak").rename(tmp_path / "in" / "reel" / "masks" / "f001.png")
    (tmp_path / "in" / "reel" / "masks" / "f001.jpg").unlink()
    # a job that reads no given masks has no mask folders: a picture in a folder named masks is a frame
    _, plan = prepare(parse_spec(job(tmp_path, masks={"source": "detect"})))
    assert "reel/masks/f000.png" in [task["input_key"] for task in plan.tasks] and not plan.orphan_masks
    # nor is a picture with a mask of its own a mask, wherever it lies
    (tmp_path / "in" / "reel" / "masks" / "masks").mkdir()
    (tmp_path / "in" / "reel" / "masks" / "masks" / "f000.png").write_bytes(png_bytes(box_mask()))
    _, plan = prepare(parse_spec(job(tmp_path)))
    assert "reel/masks/f000.png" in [task["input_key"] for task in plan.tasks]
    (tmp_path / "in" / "reel" / "masks" / "masks" / "f000.png").unlink()
    # a pattern without a folder of its own could also name a frame: such a file stays a frame
    (tmp_path / "in" / "reel" / "f002_mask.png").write_bytes(png_bytes(box_mask()))
    _, plan = prepare(parse_spec(job(tmp_path, masks={"pattern": "{dir}/{stem}_mask.png"})))
    assert "reel/f002_mask.png" in [task["input_key"] for task in plan.tasks]


def test_a_second_job_is_refused_an_output_that_holds_another_jobs_manifests(tmp_path, ray_session):
    from restore.pipeline import JobError

    write_collection(tmp_path / "in", 2)
    write_collection(tmp_path / "in2", 1)
    assert run(job(tmp_path, name="reel-1")).counts == {"ok": 2}
    before = tree_digest(tmp_path / "out")
    with pytest.raises(JobError, match="holds the manifests of job\\(s\\) 'reel-1'.*_manifests/reel-1/ to "
                                       "_manifests/reel-2/"):
        run(job(tmp_path, name="reel-2", input=str(tmp_path / "in2")))
    assert tree_digest(tmp_path / "out") == before  # nothing of the first job's was touched
    assert run(job(tmp_path, name="reel-1")).counts == {}  # its own job still runs there: nothing left to do

    from restore.pipeline import check_output_is_the_jobs

    output = open_storage(str(tmp_path / "out"))
    output.put("_manifests/ghost/_lease/000000000001.json", b"{}")  # a run that failed before writing a row
    check_output_is_the_jobs(output, "reel-1")  # has no claim on the output
    [part] = (tmp_path / "out" / "_manifests" / "reel-1").glob("*/part-*.parquet")
    output.put("_manifests/reel-2/r/part-00000.parquet", part.read_bytes())  # shared before this check existed
    check_output_is_the_jobs(output, "reel-2")  # a job already there goes on running there
    with pytest.raises(JobError, match=r"job\(s\) 'reel-1', 'reel-2'"):
        check_output_is_the_jobs(output, "reel-3")


def test_a_job_is_refused_an_output_where_another_job_runs_before_its_first_commit(tmp_path, ray_session):
    """Started moments apart, two jobs would write over each other's outputs and both report ok."""
    from restore.lease import acquire
    from restore.pipeline import JobError, run as run_with_lease

    write_collection(tmp_path / "in", 2)
    output = open_storage(str(tmp_path / "out"))
    with acquire(output, "reel-1"):  # reel-1 is restoring its first batch: no manifest yet
        with pytest.raises(JobError, match="job 'reel-1' is running in .* each job needs an output of its own"):
            run_with_lease(parse_spec(job(tmp_path, name="reel-2")))
    assert not list((tmp_path / "out").glob("reel/*"))  # reel-2 wrote nothing
    assert run_with_lease(parse_spec(job(tmp_path, name="reel-2")))[2].counts == {"ok": 2}  # reel-1 never committed

    [part] = (tmp_path / "out" / "_manifests" / "reel-2").glob("*/part-*.parquet")
    output.put("_manifests/reel-1/r/part-00000.parquet", part.read_bytes())  # they shared it before this rule
    with acquire(output, "reel-1"):
        assert run_with_lease(parse_spec(job(tmp_path, name="reel-2")))[2].planned == 0  # and still may


def test_a_run_from_a_machine_whose_clock_is_behind_is_refused_before_it_writes(tmp_path, ray_session, monkeypatch):
    """Rows are ordered by run id, a start time: a run a day behind would be taken for older than the last one, its
    fixes hidden from status, verify and resume."""
    import restore.pipeline
    from restore.pipeline import JobError

    write_collection(tmp_path / "in", 2)
    assert run(job(tmp_path)).counts == {"ok": 2}
    before = tree_digest(tmp_path / "out")
    yesterday = time.strftime("%Y%m%dT%H%M%S000Z-abcdef", time.gmtime(time.time() - 86_400))
    monkeypatch.setattr(restore.pipeline, "new_run_id", lambda: yesterday)
    with pytest.raises(JobError, match="clock is behind"):
        run(job(tmp_path, restorer={"name": "navier-stokes"}))
    assert tree_digest(tmp_path / "out") == before


def test_a_stop_while_a_part_is_committed_keeps_its_rows(tmp_path, ray_session, monkeypatch):
    """Ctrl-C may land while a part is being written: its frames are done, and a rerun must not redo them."""
    from restore.manifest import ManifestWriter
    from restore.pipeline import RunInterrupted

    write_collection(tmp_path / "in", 6)
    real_commit, calls = ManifestWriter.commit, []

    def stopped_in_the_second(writer, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # before the part was written
        return real_commit(writer, rows)

    monkeypatch.setattr(ManifestWriter, "commit", stopped_in_the_second)
    with pytest.raises(RunInterrupted) as stopped:
        run(job(tmp_path, batch_size=2, commit_every=2))
    committed = read_manifests(open_storage(str(tmp_path / "out")), "t")
    assert committed.num_rows == sum(stopped.value.result.counts.values()) >= 4

    monkeypatch.setattr(ManifestWriter, "commit", real_commit)  # and a stop between commits, after the first

    def stop_at_the_sixth(done, planned, failed):
        if done >= 6:
            raise KeyboardInterrupt

    write_collection(tmp_path / "in2", 8)
    context, plan = prepare(parse_spec(job(tmp_path, input=str(tmp_path / "in2"), output=str(tmp_path / "out2"),
                                           batch_size=2, commit_every=4)))
    with pytest.raises(RunInterrupted):
        run_job(context, plan, progress=stop_at_the_sixth)
    assert read_manifests(open_storage(str(tmp_path / "out2")), "t").num_rows == 6


def test_status_tells_a_run_that_never_finished_until_a_run_ends_well(tmp_path, ray_session, capsys, monkeypatch):
    """A run killed or failed (exit 2) writes no end of its own; its committed rows are all ok, so without its start
    on record `status` would call the job whole."""
    import restore.pipeline

    write_collection(tmp_path / "in", 3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    real_run_job = restore.pipeline.run_job

    def fails_after_one_commit(context, plan, progress=None, lease=None):
        real_run_job(context, type(plan)(**{**vars(plan), "tasks": plan.tasks[:1]}), progress, lease)
        raise OSError("the machine's disk went away")

    monkeypatch.setattr(restore.pipeline, "run_job", fails_after_one_commit)
    assert restore_main(["run", str(spec_file), "--quiet"]) == 2
    capsys.readouterr()
    assert restore_main(["status", str(spec_file)]) == 1
    assert "set out to restore 3 frames and never finished" in capsys.readouterr().out
    monkeypatch.setattr(restore.pipeline, "run_job", real_run_job)
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0
    assert restore_main(["status", str(spec_file)]) == 0


def test_cli_run_then_status_verify_and_report_agree(tmp_path, ray_session, capsys):
    import json

    write_collection(tmp_path / "in", 3)
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--quiet", "--json", str(tmp_path / "run.json")]) == 1  # a frame failed
    assert "  not restored bad.png: not an image" in capsys.readouterr().out  # which, in the run's own log
    run_summary = json.loads((tmp_path / "run.json").read_text())
    assert run_summary["counts"] == {"ok": 3, "failed": 1}
    assert (tmp_path / "out" / "report.html").is_file()

    assert restore_main(["status", str(tmp_path / "out"), "--job", "t", "--json", str(tmp_path / "status.json")]) == 1
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["by_status"] == {"ok": 3, "failed": 1}
    assert status["failures"][0]["input_key"] == "bad.png"
    assert status["damage"] == {"speck": {"regions": 0, "frames": 0}, "line": {"regions": 0, "frames": 0},
                                "area": {"regions": 3, "frames": 3}}  # each restored frame's mask is one box
    assert restore_main(["status", str(tmp_path / "out")]) == 1  # the output's one job, found there
    printed = capsys.readouterr().out
    assert "job t: 4 frames: 1 failed, 3 ok" in printed
    assert "damage masked in the frames restored: 3 areas (blotches, stains, tears, losses)" in printed
    assert restore_main(["status", str(tmp_path / "typo")]) == 2
    assert "no manifests under" in capsys.readouterr().err
    assert restore_main(["status", str(tmp_path / "out"), "--job", "tt"]) == 2  # a mistyped job is no "all well"
    assert restore_main(["status", str(spec_file), "--job", "other"]) == 2
    assert "no manifests under" in capsys.readouterr().err
    assert restore_main(["status", str(tmp_path / "jobb.yaml")]) == 2  # a spec's name mistyped
    assert "no job spec at" in capsys.readouterr().err

    assert restore_main(["verify", str(spec_file), "--json", str(tmp_path / "verify.json")]) == 0
    assert json.loads((tmp_path / "verify.json").read_text())["verified"] == 3
    (tmp_path / "out" / "reel" / "f000.png").write_bytes(png_bytes(scene(99)))  # tampered output
    (tmp_path / "out" / "reel" / "f001.png").unlink()  # lost output
    (tmp_path / "out" / "_masks" / "reel" / "f002.png.png").write_bytes(png_bytes(np.zeros((48, 64), np.uint8)))
    assert restore_main(["verify", str(spec_file)]) == 1
    printed = capsys.readouterr().out
    assert "checksum reel/f000.png" in printed and "mask_checksum reel/f002.png" in printed  # the audit mask too
    assert "`restore run JOB.yaml --repair` restores those frames again" in printed
    assert restore_main(["run", str(spec_file), "--quiet"]) == 1  # a plain rerun trusts the manifests
    assert restore_main(["run", str(spec_file), "--dry-run", "--repair", "--json", str(tmp_path / "dry.json")]) == 0
    repairing = ["reel/f000.png", "reel/f001.png", "reel/f002.png"]
    assert json.loads((tmp_path / "dry.json").read_text())["repairing"] == repairing
    assert restore_main(["run", str(spec_file), "--quiet", "--repair", "--json", str(tmp_path / "fix.json")]) == 1
    assert json.loads((tmp_path / "fix.json").read_text())["repairing"] == repairing
    assert restore_main(["verify", str(spec_file)]) == 0


def test_status_writes_every_frames_newest_row_as_csv_a_spreadsheet_cannot_run(tmp_path, ray_session, capsys):
    """A collection-management system or a spreadsheet reads CSV, not Parquet; a donor's file name that begins like a
    formula is kept as text there, not run."""
    import csv

    write_collection(tmp_path / "in", 2)
    hostile = '=HYPERLINK("example.invalid","open").png'
    (tmp_path / "in" / hostile).write_bytes(b"not a png")
    run(job(tmp_path))
    run(job(tmp_path))  # a second run adds no rows for frames done, and retries the failed one: one row each still
    table = tmp_path / "frames.csv"
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t", "--csv", str(table)]) == 1
    assert "3 frames written to" in capsys.readouterr().out
    assert table.read_bytes().startswith(b"\xef\xbb\xbf")  # UTF-8 as Excel knows it: names beyond ASCII read right
    with table.open(newline="", encoding="utf-8-sig") as opened:
        rows = {row["input_key"]: row for row in csv.DictReader(opened)}
    assert sorted(rows) == sorted(["'" + hostile, "reel/f000.png", "reel/f001.png"])
    assert rows["'" + hostile]["status"] == "failed" and "not an image" in rows["'" + hostile]["error"]
    for key in ("reel/f000.png", "reel/f001.png"):
        assert (rows[key]["status"], rows[key]["area_count"], rows[key]["line_count"]) == ("ok", "1", "0")
        assert len(rows[key]["output_sha256"]) == 64 and rows[key]["config_hash"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[key]["finished_at"])  # a spreadsheet's time


def test_the_demo_command_makes_its_frames_and_restores_them(tmp_path, ray_session):
    import json

    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "demo", "input": "frames", "output": "restored",
                                         "restorer": {"name": "telea"}}))
    assert restore_main(["demo", str(spec_file), "--frames", "2", "--quiet", "--json", str(tmp_path / "d.json")]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["counts"] == {"ok": 2}
    assert len(list((tmp_path / "restored" / "reel-01").glob("frame_*.png"))) == 2


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(signal.SIGTERM)])  # Ctrl-C; Ray's SIGTERM handler
def test_a_run_stopped_while_ray_starts_says_interrupted_not_started(tmp_path, monkeypatch, capsys, stop):
    """A stop in a run's first seconds, before any frame was read, left its summary saying `started`: `status`
    then reported a run killed or failed, where it had been stopped and exited 130."""
    import restore.pipeline
    from restore.manifest import last_run_summary

    write_collection(tmp_path / "in", 3)

    def stopped():
        raise stop

    monkeypatch.setattr(restore.pipeline, "start_ray", stopped)
    with pytest.raises(type(stop)):
        restore.pipeline.run(parse_spec(job(tmp_path)))
    summary = last_run_summary(open_storage(str(tmp_path / "out")), "t")
    assert summary["status"] == "interrupted" and summary["planned"] == 3 and summary["counts"] == {}
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t"]) == 1
    shown = capsys.readouterr().out
    assert "0 frames: none done (no run has committed a frame yet)" in shown and "was stopped after 0" in shown


def test_a_stop_while_ray_shuts_down_keeps_the_commands_exit_code(monkeypatch):
    """A Ctrl-C in the seconds Ray takes to shut down after a run printed a traceback and killed the command by
    the signal, although the run had ended and committed everything: Ray shuts down with stops ignored."""
    import types

    import restore.cli

    during = []
    monkeypatch.setattr(restore.cli, "main", lambda: 0)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(
        is_initialized=lambda: True,
        shutdown=lambda: during.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as ended:
            restore.cli.console()
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert ended.value.code == 0 and during == [(signal.SIG_IGN, signal.SIG_IGN)]


def test_a_stopped_driver_has_the_time_it_needs_to_commit_after_sigterm(tmp_path):
    """Ray put Abseil's failure handler in front of Python's for SIGTERM: a scheduler's stop logged a stack trace
    as if the driver had crashed, and aborted the process (exit 134) 3 s later, while a stopped run was still
    committing its finished frames and writing its summary."""
    script = (
        "import os, signal, time\n"
        "from restore.pipeline import start_ray\n"
        "start_ray()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except SystemExit:\n"
        "    time.sleep(4)  # a commit to slow storage\n"
        "    print('committed', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.returncode == 0 and done.stdout == "committed\n", done.stderr[-2000:]
    assert "SIGTERM received" not in done.stderr


def test_an_interrupted_or_stopped_run_says_how_to_resume_exits_130_and_writes_its_json(monkeypatch, capsys,
                                                                                        tmp_path):
    import json
    import signal

    import restore.cli

    def stopped(args):  # a scheduler's SIGTERM, before Ray starts
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    def stopped_in_ray(args):  # Ray's own SIGTERM handler, once it has started
        sys.exit(signal.SIGTERM)

    assert restore_main(["run", str(tmp_path / "missing.yaml"), "--json", str(tmp_path / "error.json")]) == 2
    assert json.loads((tmp_path / "error.json").read_text())["status"] == "error"
    assert restore_main(["run", str(tmp_path / "missing.yaml"), "--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "cannot write" in capsys.readouterr().err  # a --json that cannot be written is said, not a traceback
    previous = signal.getsignal(signal.SIGTERM)
    try:
        for command in (stopped, stopped_in_ray):
            monkeypatch.setattr(restore.cli, "cmd_run", command)
            out = tmp_path / f"{command.__name__}.json"
            assert restore_main(["run", "job.yaml", "--json", str(out)]) == 130  # not 1, which says frames failed
            assert "interrupted; run the same command again to resume" in capsys.readouterr().err
            assert json.loads(out.read_text())["exit_code"] == 130  # not last night's summary
    finally:
        signal.signal(signal.SIGTERM, previous)

    def failed_in_ray(args):  # what Ray raises when a task dies of an error of ours or of a library's
        raise RuntimeError("ray.exceptions.RayTaskError(OverflowError): int too big to convert")

    monkeypatch.setattr(restore.cli, "cmd_run", failed_in_ray)
    out = tmp_path / "unexpected.json"
    assert restore_main(["run", "job.yaml", "--json", str(out)]) == 2  # not 1, which says frames failed
    assert "failed unexpectedly: RuntimeError: ray.exceptions.RayTaskError" in capsys.readouterr().err
    assert json.loads(out.read_text())["status"] == "error"


def test_a_frame_that_keeps_failing_is_given_up_after_max_attempts_until_it_changes(tmp_path, ray_session, capsys):
    import json

    from restore.pipeline import run as run_with_lease

    write_collection(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    spec = parse_spec(job(tmp_path, max_attempts=2))
    assert run_with_lease(spec)[2].counts == {"ok": 1, "failed": 1}
    assert run_with_lease(spec)[2].counts == {"failed": 1}
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path, max_attempts=2)))
    # Nothing is retried, but the frame is still failed: the nightly run keeps alerting and says why.
    assert restore_main(["run", str(spec_file), "--quiet", "--json", str(tmp_path / "run.json")]) == 1
    assert json.loads((tmp_path / "run.json").read_text())["given_up"] == ["broken.png"]
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "out" / "_manifests" / "t").glob("*/_summary.json")
                 if json.loads(p.read_text())["planned"] == 0]
    assert summary["status"] == "failed" and summary["given_up"] == ["broken.png"]
    capsys.readouterr()
    assert restore_main(["run", str(spec_file), "--dry-run"]) == 0  # a dry run says so too
    assert "0 would be processed (0.0 MB to read); 1 left failed after max_attempts" in capsys.readouterr().out
    # status tells the failures only a person can mend from those the next run tries again
    assert restore_main(["status", str(spec_file), "--json", str(tmp_path / "status.json")]) == 1
    shown = capsys.readouterr().out
    assert "given up after 2 failed attempts (max_attempts), not tried again until they change: 1" in shown
    assert "not restored broken.png (given up): " in shown
    assert json.loads((tmp_path / "status.json").read_text())["given_up"] == ["broken.png"]
    assert restore_main(["report", str(spec_file)]) == 0
    assert "1 given up after 2 attempts: not tried again until they change" in (
        tmp_path / "out" / "report.html").read_text()
    assert restore_main(["status", str(tmp_path / "out"), "--job", "t", "--json", str(tmp_path / "status.json")]) == 1
    assert "given_up" not in json.loads((tmp_path / "status.json").read_text())  # no spec: max_attempts unknown
    (tmp_path / "in" / "broken.png").write_bytes(png_bytes(scene(3)))  # fixed upstream: a new ETag
    assert run_with_lease(spec)[2].counts == {"ok": 1}
    assert restore_main(["run", str(spec_file), "--quiet"]) == 0


def test_a_frame_given_up_is_tried_again_once_a_new_version_is_installed():
    """A new version may read what the old one could not (a 16-bit frame written as JPEG, which 0.6 refused): the
    failures of other versions do not count towards max_attempts, so status does not call such a frame given up."""
    from datetime import datetime, timezone

    from restore.manifest import SOFTWARE, history, summarize

    def failed(software: str, run: int) -> dict:
        return {"job": "t", "run_id": f"2026112{run}T000000000Z-aaaaaa", "input_key": "deep.png", "input_etag": "e1",
                "config_hash": "c", "software": software, "status": "failed", "error": "JPEG holds only 8 bits",
                "finished_at": datetime(2026, 11, 20 + run, tzinfo=timezone.utc)}

    older = pa.Table.from_pylist([failed("restore 0.6.0", run) for run in range(3)], schema=MANIFEST_SCHEMA)
    assert history(older, "c").failures == {("deep.png", "e1"): 0}
    assert summarize(older, 3).given_up == []
    now = pa.Table.from_pylist([failed(SOFTWARE, run) for run in range(3)], schema=MANIFEST_SCHEMA)
    assert history(now, "c").failures == {("deep.png", "e1"): 3}
    assert summarize(now, 3).given_up == ["deep.png"]


def test_runs_write_a_summary_and_a_second_concurrent_run_is_refused(tmp_path, ray_session, capsys):
    from restore.lease import LeaseHeldError, acquire
    from restore.pipeline import run as run_with_lease

    write_collection(tmp_path / "in", 2)
    spec = parse_spec(job(tmp_path))
    _, _, result = run_with_lease(spec)
    summary = json.loads((tmp_path / "out" / result.manifest_prefix / "_summary.json").read_text())
    assert summary["counts"] == {"ok": 2} and summary["status"] == "ok" and summary["run_id"] == result.run_id
    manifests = pyarrow.dataset.dataset(tmp_path / "out" / "_manifests" / "t", format="parquet").to_table()
    assert manifests.num_rows == 2  # the whole folder reads as one dataset: the summary and lease stay out of it
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    with acquire(open_storage(str(tmp_path / "out")), "t", run_id="night-2"):  # another run holds the job
        with pytest.raises(LeaseHeldError):
            run_with_lease(spec)
        capsys.readouterr()
        assert restore_main(["status", str(spec_file)]) == 0 and restore_main(["run", str(spec_file), "--dry-run"]) == 0
        told = capsys.readouterr().out  # both say who runs it now; the dry run, that a run would be refused
        assert told.count("(run night-2)") == 2 and "a run now would be refused" in told
        assert restore_main(["run", str(spec_file), "--json", str(tmp_path / "refused.json")]) == 2
        refused = json.loads((tmp_path / "refused.json").read_text())
        assert refused["status"] == "already_running" and "(run night-2)" in refused["error"]  # not an outage


def test_compaction_keeps_what_resume_needs_without_rewriting_parts(tmp_path, ray_session):
    from restore.manifest import compact, history

    write_collection(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    run(job(tmp_path))
    run(job(tmp_path))  # retries the broken frame: two failures on record
    storage = open_storage(str(tmp_path / "out"))
    config_hash = prepare(parse_spec(job(tmp_path)))[0].config_hash
    parts = {p: p.read_bytes() for p in (tmp_path / "out" / "_manifests").rglob("part-*.parquet")}
    before = history(read_manifests(storage, "t"), config_hash)

    run_id = prepare(parse_spec(job(tmp_path)))[0].run_id
    assert compact(storage, "t", run_id) is not None  # as a run does before planning, once parts pile up
    assert compact(storage, "t", run_id) is None  # every part is covered

    compacted = read_manifests(storage, "t")
    after = history(compacted, config_hash)
    assert after.done == before.done and after.failures == before.failures == {("broken.png", after_etag(tmp_path)): 2}
    assert compacted.num_rows == sum(pq.read_table(p).num_rows for p in parts)  # every row still needed
    assert {p: p.read_bytes() for p in parts} == parts  # parts are never rewritten
    assert [task["input_key"] for task in prepare(parse_spec(job(tmp_path)))[1].tasks] == ["broken.png"]
    (tmp_path / "in" / "new.png").write_bytes(png_bytes(scene(5)))
    run(job(tmp_path))  # parts committed after the snapshot are read on top of it
    assert ("new.png", open_storage(str(tmp_path / "in")).head("new.png").etag) in history(
        read_manifests(storage, "t"), config_hash).done


def test_a_run_compacts_the_parts_of_nights_stopped_part_way_before_planning(tmp_path, ray_session, monkeypatch):
    """A night stopped part-way (the scheduler's 23 h stop) never reaches a run's end, and its parts would pile up
    for every later plan, status and report to read one by one."""
    import restore.pipeline
    from restore.manifest import _manifest_keys

    monkeypatch.setattr(restore.pipeline, "COMPACT_AFTER_PARTS", 2)
    frames = write_collection(tmp_path / "in", 4)
    storage = open_storage(str(tmp_path / "out"))
    context, plan = prepare(parse_spec(job(tmp_path)))
    run_job(context, plan)  # a run's frames and parts, without the end of `run` (as a stopped run leaves them)
    assert len(_manifest_keys(storage, "t")[1]) == 2  # parts no snapshot covers
    before = read_manifests(storage, "t")
    (tmp_path / "in" / "new.png").write_bytes(png_bytes(scene(9)))
    _, plan, result = restore.pipeline.run(parse_spec(job(tmp_path)))
    assert [task["input_key"] for task in plan.tasks] == ["new.png"] and result.counts == {"ok": 1}
    assert len(_manifest_keys(storage, "t")[1]) == 1  # the older parts went into a snapshot; this run's is read on top
    after = read_manifests(storage, "t")
    assert sorted(after["input_key"].to_pylist()) == sorted([*frames, "new.png"])
    assert after.num_rows == before.num_rows + 1


def test_a_part_committed_after_a_snapshot_was_cut_is_read_whatever_its_run_id(tmp_path):
    """A writer whose lease lapsed can land a part just after the next run compacted; a host with a fast clock
    names its parts after a later run's. Run ids order neither: the snapshot's list of covered parts does."""
    from datetime import datetime, timezone

    from restore.manifest import ManifestWriter, compact

    storage = open_storage(str(tmp_path / "out"))

    def commit(run_id: str, key: str) -> None:
        ManifestWriter(storage, "t", run_id).commit([{"input_key": key, "run_id": run_id, "status": "ok",
                                                      "finished_at": datetime.now(timezone.utc)}])

    commit("20261127T010000000Z-aaaaaa", "a.png")
    commit("20261127T090000000Z-ffffff", "fast-clock.png")  # a host whose clock runs hours ahead
    assert compact(storage, "t", "20261127T030000000Z-cccccc") is not None
    commit("20261127T020000000Z-bbbbbb", "stale.png")  # after the cut, by a writer whose lease had lapsed
    commit("20261127T030000000Z-cccccc", "same-run.png")  # the compacting run's own
    assert sorted(read_manifests(storage, "t")["input_key"].to_pylist()) == [
        "a.png", "fast-clock.png", "same-run.png", "stale.png"]
    assert compact(storage, "t", "20261127T040000000Z-dddddd") is not None  # the next cut covers them all, once
    assert sorted(read_manifests(storage, "t")["input_key"].to_pylist()) == [
        "a.png", "fast-clock.png", "same-run.png", "stale.png"]
    for covered in (tmp_path / "out").rglob("*.parts.json"):
        covered.unlink()  # as snapshots cut before the lists: they cover the runs up to their name
    assert set(read_manifests(storage, "t")["input_key"].to_pylist()) == {
        "a.png", "fast-clock.png", "same-run.png", "stale.png"}


def after_etag(tmp_path) -> str:
    return open_storage(str(tmp_path / "in")).head("broken.png").etag


def test_a_manifest_part_that_cannot_be_read_is_named(tmp_path):
    from restore.storage import StorageError

    (tmp_path / "_manifests" / "j" / "r1").mkdir(parents=True)
    (tmp_path / "_manifests" / "j" / "r1" / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(StorageError, match="manifest part .*_manifests/j/r1/part-00000.parquet cannot be read"):
        read_manifests(open_storage(str(tmp_path)), "j")


def test_a_flipped_bit_in_a_manifest_is_found_not_read_as_another_value(tmp_path):
    """Bit rot in a part must not quietly become another checksum or a run id that sorts as newest for good."""
    from restore.manifest import ManifestWriter
    from restore.storage import StorageError

    storage = open_storage(str(tmp_path))
    rows = [{"job": "j", "run_id": "20261127T100000Z-a", "input_key": f"f{i}.png", "status": "ok",
             "input_sha256": f"{i:064x}", "masked_fraction": i / 10} for i in range(6)]
    part = tmp_path / ManifestWriter(storage, "j", "20261127T100000Z-a").commit(rows)
    expected, data = read_manifests(storage, "j"), part.read_bytes()
    metadata = pq.ParquetFile(part).metadata.row_group(0)
    chunks = [metadata.column(MANIFEST_SCHEMA.names.index(name)) for name in ("run_id", "input_sha256",
                                                                              "masked_fraction")]
    silent = []
    for chunk in chunks:
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        for offset in range(start, start + chunk.total_compressed_size):
            flipped = bytearray(data)
            flipped[offset] ^= 1
            part.write_bytes(bytes(flipped))
            try:
                if not read_manifests(storage, "j").equals(expected):
                    silent.append(offset)
            except StorageError as error:
                assert "cannot be read" in str(error)
    assert silent == []


def test_masks_uri_written_out_as_the_input_is_the_input(s3_endpoint, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="same-in")
    for key in ("reel/f0.png", "reel/masks/f0.png"):
        client.put_object(Bucket="same-in", Key=key, Body=png_bytes(box_mask()))
    raw = job(tmp_path, input="s3://same-in/reel", endpoint_url=s3_endpoint, masks={"uri": "s3://same-in/reel/"})
    _, plan = prepare(parse_spec(raw))
    assert [task["input_key"] for task in plan.tasks] == ["f0.png"]  # its mask is not a frame


def test_manifests_from_before_a_column_existed_still_read(tmp_path):
    old_schema = pa.schema([column for column in MANIFEST_SCHEMA
                            if column.name not in ("input_frames", "temporal_fill_fraction", "infrared")])
    old = pa.Table.from_pylist([{"job": "j", "run_id": "r1", "input_key": "a.png", "status": "ok"}], schema=old_schema)
    (tmp_path / "_manifests" / "j" / "r1").mkdir(parents=True)
    pq.write_table(old, tmp_path / "_manifests" / "j" / "r1" / "part-00000.parquet")
    [row] = read_manifests(open_storage(str(tmp_path)), "j").to_pylist()
    assert row["input_key"] == "a.png" and row["status"] == "ok"
    assert row["input_frames"] is None and row["temporal_fill_fraction"] is None and row["infrared"] is None


def test_progress_can_be_json_lines_for_scripts(tmp_path, ray_session, capsys):
    import json

    write_collection(tmp_path / "in", 3)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job(tmp_path)))
    assert restore_main(["run", str(spec_file), "--progress-json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["done"] == lines[-1]["total"] == 3 and lines[-1]["failed"] == 0
