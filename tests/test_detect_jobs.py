"""Jobs with `masks: detect`: detected damage is restored, undamaged frames come back identical, protect wins."""
import io

import numpy as np
from PIL import Image

from restore.manifest import read_manifests
from restore.pipeline import prepare, run_job
from restore.spec import parse_spec
from restore.storage import open_storage


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def sequence(count=5, height=96, width=128, blotch_on=None) -> list[np.ndarray]:
    """A slowly panning smooth scene; optionally a dark blotch on one frame only (film dirt)."""
    frames = []
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        shifted = x + 2 * index
        image = np.stack([120 + 60 * np.sin(shifted / 17), 110 + 50 * np.cos(y / 13), 90 + 40 * np.sin((shifted + y) / 23)], 2)
        frame = np.clip(image, 0, 255).astype(np.uint8)
        if index == blotch_on:
            frame[40:48, 60:70] = 10
        frames.append(frame)
    return frames


def write(root, frames):
    (root / "reel").mkdir(parents=True)
    for index, frame in enumerate(frames):
        (root / "reel" / f"f{index:03d}.png").write_bytes(png(frame))


def job(tmp_path, **masks):
    return parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "masks": {"source": "detect", "detector": "temporal", **masks}, "sequence": {"window": 1},
                       "restorer": {"name": "telea"}, "batch_size": 2})


def rows(tmp_path):
    return {row["input_key"]: row for row in read_manifests(open_storage(str(tmp_path / "out")), "detect").to_pylist()}


def test_undamaged_frames_come_back_pixel_identical_with_nothing_masked(tmp_path, ray_session):
    frames = sequence()
    write(tmp_path / "in", frames)
    assert run_job(*prepare(job(tmp_path))).counts == {"ok": len(frames)}
    for key, row in rows(tmp_path).items():
        assert row["masked_fraction"] == 0 and row["mask_key"] is None
        assert row["detector"] == "temporal" and row["mask_source"] == "detect"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / key)), np.asarray(Image.open(tmp_path / "in" / key)))


def test_a_one_frame_blotch_is_found_and_only_masked_pixels_change(tmp_path, ray_session):
    frames = sequence(blotch_on=2)
    write(tmp_path / "in", frames)
    run_job(*prepare(job(tmp_path)))
    manifest = rows(tmp_path)
    blotched = manifest["reel/f002.png"]
    assert blotched["masked_fraction"] > 0
    mask = np.asarray(Image.open(tmp_path / "out" / blotched["mask_key"])) > 0
    assert mask[40:48, 60:70].mean() > 0.8  # the blotch is found
    restored = np.asarray(Image.open(tmp_path / "out" / "reel/f002.png"))
    changed = np.any(restored != frames[2], axis=2)
    assert changed.any() and not (changed & ~mask).any()  # nothing outside the detected mask changed
    assert restored[40:48, 60:70].mean() > 60  # the dark blotch is filled from its surroundings
    for key in ("reel/f001.png", "reel/f003.png"):  # neighbours of the blotch are not flagged
        assert manifest[key]["masked_fraction"] < 0.001


def test_protect_masks_override_the_detector(tmp_path, ray_session):
    frames = sequence(blotch_on=2)
    write(tmp_path / "in", frames)
    protect = np.zeros(frames[0].shape[:2], dtype=np.uint8)
    protect[30:60, 50:80] = 255  # say the "blotch" is a stamp the archive keeps
    (tmp_path / "in" / "reel" / "protect").mkdir()
    (tmp_path / "in" / "reel" / "protect" / "f002.png").write_bytes(png(protect))
    assert run_job(*prepare(job(tmp_path, protect="{dir}/protect/{stem}.png"))).counts == {"ok": 5}  # not a frame
    restored = np.asarray(Image.open(tmp_path / "out" / "reel/f002.png"))
    assert np.array_equal(restored[30:60, 50:80], frames[2][30:60, 50:80])


def test_a_corrupt_neighbour_fails_only_itself(tmp_path, ray_session):
    frames = sequence(blotch_on=2)
    write(tmp_path / "in", frames)
    (tmp_path / "in" / "reel" / "f003.png").write_bytes(b"corrupt")
    result = run_job(*prepare(job(tmp_path)))
    assert result.counts == {"ok": 4, "failed": 1}
    assert rows(tmp_path)["reel/f003.png"]["status"] == "failed"
