"""Jobs with `masks: detect`: detected damage is restored, undamaged frames come back identical, protect wins;
the infrared plane of RGBI scans as mask source; temporal fill from neighbours before the restorer."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from restore.frames import decode_frame
from restore.manifest import read_manifests
from restore.report import write_report
from restore.pipeline import prepare, run_job, run_summary
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


def job(tmp_path, max_attempts=3, **masks):
    return parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "masks": {"source": "detect", "detector": "temporal", **masks}, "sequence": {"window": 1},
                       "restorer": {"name": "telea"}, "batch_size": 2, "max_attempts": max_attempts})


def rows(tmp_path):
    return {row["input_key"]: row for row in read_manifests(open_storage(str(tmp_path / "out")), "detect").to_pylist()}


def test_undamaged_frames_come_back_pixel_identical_with_nothing_masked(tmp_path, ray_session):
    frames = sequence()
    write(tmp_path / "in", frames)
    assert run_job(*prepare(job(tmp_path))).counts == {"ok": len(frames)}
    ends = {"reel/f000.png", f"reel/f{len(frames) - 1:03d}.png"}  # one neighbour each: classical ran there
    for key, row in rows(tmp_path).items():
        assert row["masked_fraction"] == 0 and row["mask_key"] is None
        assert row["detector"] == ("classical" if key in ends else "temporal") and row["mask_source"] == "detect"
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
    assert [rows(tmp_path)[f"reel/f00{i}.png"]["detector"] for i in (1, 2, 4)] == ["temporal", "classical", "classical"]


def test_a_rescanned_frame_redoes_its_neighbours_so_the_outputs_are_what_a_fresh_run_gives(tmp_path, ray_session):
    """Temporal detection compares each frame with its neighbours: when one is replaced by a new scan, the frames
    beside it must be detected again, or the archive holds outputs that its own inputs no longer reproduce."""
    import shutil

    write(tmp_path / "in", sequence())
    assert run_job(*prepare(job(tmp_path))).counts == {"ok": 5}
    (tmp_path / "in" / "reel" / "f002.png").write_bytes(png(sequence(blotch_on=2)[2]))  # rescanned, with dirt
    context, plan = prepare(job(tmp_path))
    assert sorted(task["input_key"] for task in plan.tasks) == ["reel/f001.png", "reel/f002.png", "reel/f003.png"]
    run_job(context, plan)

    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "in", fresh / "in")
    run_job(*prepare(job(fresh)))
    for index in range(5):
        key = f"reel/f{index:03d}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / key)), np.asarray(Image.open(fresh / "out" / key)))

    (tmp_path / "in" / "reel" / "f004.png").write_bytes(b"corrupt")  # changed: redoes f003 once
    assert sorted(task["input_key"] for task in prepare(job(tmp_path))[1].tasks) == ["reel/f003.png", "reel/f004.png"]
    run_job(*prepare(job(tmp_path)))
    assert [task["input_key"] for task in prepare(job(tmp_path))[1].tasks] == ["reel/f004.png"]  # a retry alone

    given_up = job(tmp_path, max_attempts=1)  # f004 has failed: given up, and not redone for a neighbour
    (tmp_path / "in" / "reel" / "f003.png").write_bytes(png(sequence(blotch_on=3)[3]))
    plan = prepare(given_up)[1]
    assert sorted(task["input_key"] for task in plan.tasks) == ["reel/f002.png", "reel/f003.png"]
    assert plan.given_up == ["reel/f004.png"]


def rgbi_scan(seed: int, height=64, width=80) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A 16-bit RGBI TIFF as film scanners write it, with dust: dark in the infrared plane, dimming the colour too.

    Returns (file bytes, the infrared plane, where the dust is)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = np.stack([0.5 + 0.3 * np.sin(x / 11 + seed), 0.4 + 0.2 * np.cos(y / 9), 0.3 + 0.1 * np.sin((x + y) / 15)],
                      axis=2)
    infrared = 0.8 + 0.05 * x / width + rng.normal(0, 0.005, (height, width))  # dyes are transparent to infrared
    dust = np.zeros((height, width), bool)
    dust[10 + seed:13 + seed, 20:24] = dust[40:42, 50 + seed:53 + seed] = dust[55, 5:25] = True  # specks and a hair
    colour[dust] *= 0.4
    infrared[dust] = 0.25
    planes = np.round(np.clip(np.dstack([colour, infrared]), 0, 1) * 65535).astype(np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, photometric="rgb", extrasamples=("unspecified",))
    return buffer.getvalue(), planes[..., 3], dust


def test_an_infrared_job_masks_the_dust_of_rgbi_scans_and_keeps_their_infrared(tmp_path, ray_session):
    (tmp_path / "in").mkdir()
    scans = {}
    for seed in (0, 1):
        data, infrared, dust = rgbi_scan(seed)
        (tmp_path / "in" / f"scan{seed}.tif").write_bytes(data)
        scans[f"scan{seed}.tif"] = (decode_frame(data).pixels, infrared, dust)
    (tmp_path / "in" / "print.png").write_bytes(png(sequence(1)[0]))  # no infrared channel
    for output_format, infrared_state in (("same", "kept"), ("png", "dropped")):
        spec = parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / output_format),
                           "masks": {"source": "detect", "detector": "infrared"}, "output_format": output_format})
        assert run_job(*prepare(spec)).counts == {"ok": 2, "failed": 1}
        manifest = {row["input_key"]: row for row in read_manifests(open_storage(str(tmp_path / output_format)),
                                                                    "detect").to_pylist()}
        assert manifest["print.png"]["status"] == "failed"
        assert "has no infrared channel" in manifest["print.png"]["error"]
        for key, (colour, infrared, dust) in scans.items():
            row = manifest[key]
            assert row["detector"] == "infrared" and row["infrared"] == infrared_state
            assert row["mask_seconds"] > 0 and row["read_seconds"] >= 0  # detecting is timed apart from reading
            assert row["masked_fraction"] == dust.mean()
            mask = np.asarray(Image.open(tmp_path / output_format / row["mask_key"])) > 0
            assert np.array_equal(mask, dust)  # exactly the dust, nothing else
            restored = decode_frame((tmp_path / output_format / row["output_key"]).read_bytes())
            changed = np.any(restored.pixels != colour, axis=2)
            assert changed.any() and not (changed & ~dust).any()  # only the dust changed
            if infrared_state == "kept":
                assert restored.mode == "RGBI;16" and restored.alpha is None
                assert np.array_equal(restored.infrared, infrared)  # written back untouched
            else:
                assert restored.infrared is None and restored.alpha is None


def test_temporal_fill_copies_a_one_frame_blotch_from_its_neighbours(tmp_path, ray_session):
    frames = sequence(blotch_on=2)  # panning 2 px a frame: the neighbours need motion compensation
    clean = sequence()[2]
    write(tmp_path / "in", frames)
    blotch = np.zeros(frames[0].shape[:2], bool)
    blotch[40:48, 60:70] = True
    (tmp_path / "in" / "reel" / "masks").mkdir()
    (tmp_path / "in" / "reel" / "masks" / "f002.png").write_bytes(png(blotch.astype(np.uint8) * 255))
    spec = parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "masks": {"source": "given", "temporal_fill": True}, "sequence": {"window": 1},
                       "restorer": {"name": "none"}})  # the restorer changes nothing: every fill is temporal
    assert run_job(*prepare(spec)).counts == {"ok": 5}
    manifest = rows(tmp_path)
    row = manifest["reel/f002.png"]
    assert row["masked_fraction"] == blotch.mean()
    assert row["temporal_fill_fraction"] >= 0.9 * blotch.mean()
    assert row["changed_fraction"] == row["temporal_fill_fraction"]  # the copy changed them; the restorer, nothing
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["mask_key"])) > 0, blotch)  # the whole mask
    restored = np.asarray(Image.open(tmp_path / "out" / "reel/f002.png"))
    assert np.array_equal(restored[~blotch], frames[2][~blotch])  # only masked pixels change
    assert np.abs(restored[blotch].astype(int) - clean[blotch].astype(int)).mean() < 3  # the neighbours' picture
    assert {manifest[key]["temporal_fill_fraction"] for key in manifest if key != "reel/f002.png"} == {0.0}


def test_a_neighbour_of_another_size_is_left_out_not_compared(tmp_path, ray_session):
    frames = sequence(count=3)
    frames[2] = frames[2][:64, :64]  # another shot, another size
    write(tmp_path / "in", frames)
    assert run_job(*prepare(job(tmp_path, temporal_fill=True))).counts == {"ok": 3}


def starry_sky(seed=0, height=160, width=200, stars=700) -> np.ndarray:
    """A dark sky with many small bright stars: to a single-frame detector, each is a speck of dust."""
    rng = np.random.default_rng(seed)
    sky = np.clip(rng.normal(18, 2, (height, width, 3)), 0, 255).astype(np.uint8)
    for y, x in zip(rng.integers(2, height - 2, stars), rng.integers(2, width - 2, stars)):
        sky[y - 1:y + 1, x - 1:x + 1] = 235
    return sky


def test_a_frame_whose_detected_damage_is_implausibly_large_is_held_unchanged_until_the_spec_says_more(
        tmp_path, ray_session):
    """A night sky's stars or a book cover's lettering are damage to a single-frame detector, and a restore would
    paint them out: such a frame is held (skipped, nothing written) with the reason and what to do, and restored
    once the spec raises the limit; a frame with ordinary damage is not held."""
    sky, dusty = starry_sky(), sequence(count=1)[0]
    dusty[40:44, 60:64] = 250  # one speck of dust
    (tmp_path / "in" / "reel").mkdir(parents=True)
    (tmp_path / "in" / "reel" / "sky.png").write_bytes(png(sky))
    (tmp_path / "in" / "reel" / "dusty.png").write_bytes(png(dusty))

    def spec(**masks):
        return parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                           "masks": {"source": "detect", **masks}, "restorer": {"name": "telea"}})

    assert run_job(*prepare(spec())).counts == {"ok": 1, "skipped": 1}
    held = rows(tmp_path)["reel/sky.png"]
    assert held["status"] == "skipped" and "more than masks.max_detected (5 %)" in held["error"]
    assert "held unchanged for review" in held["error"] and held["output_key"] is None
    assert not (tmp_path / "out" / "reel" / "sky.png").exists()
    assert rows(tmp_path)["reel/dusty.png"]["masked_fraction"] > 0
    assert held["held_for"] == "masks.max_detected" and held["detected_fraction"] > 0.05
    page = Path(write_report(spec()).uri).read_text()  # held apart from what storage will serve another night
    assert re.search(r'id="count-held"[^>]*>1<', page) and "1 for masks.max_detected" in page
    assert 'id="count-skipped"' not in page
    # the reviewer sees the stars the detector flagged, tinted, beside the sky as it is
    assert "reel/sky.png with the damage the detector flagged tinted magenta" in page

    # the next nights read it no more (nor, in Glacier, ask it back): the same spec and masks would hold it again
    context, plan = prepare(spec())
    assert (plan.tasks, plan.held, plan.already_done) == ([], ["reel/sky.png"], 1)
    assert run_summary(context, plan, run_job(context, plan))["status"] == "failed"  # an alert stays on for it
    _, plan = prepare(spec(max_detected=held["detected_fraction"] - 0.01))  # raised, but not as far as its share
    assert plan.held == ["reel/sky.png"]
    context, plan = prepare(spec(max_detected=1.0))  # the spec now says it is damage
    assert [task["input_key"] for task in plan.tasks] == ["reel/sky.png"] and plan.held == []
    assert run_job(context, plan).counts == {"ok": 1}
    assert rows(tmp_path)["reel/sky.png"]["status"] == "ok"


def test_given_else_detect_takes_a_frames_own_mask_and_finds_the_damage_of_the_others(tmp_path, ray_session):
    """An archive draws masks for its worst frames and wants the rest found: both would add the detector's guesses
    to every hand mask, and detect ignored the hand masks, silently."""
    from restore.spec import SpecError

    frames = sequence(count=2)
    for frame in frames:
        frame[40:44, 60:64] = 250  # a speck of dust on each
    (tmp_path / "in" / "reel" / "masks").mkdir(parents=True)
    for index, frame in enumerate(frames):
        (tmp_path / "in" / "reel" / f"f{index:03d}.png").write_bytes(png(frame))
    drawn = np.zeros(frames[0].shape[:2], np.uint8)
    drawn[10:20, 10:30] = 255  # the hand mask of f000 marks a tear elsewhere, and not the speck
    (tmp_path / "in" / "reel" / "masks" / "f000.png").write_bytes(png(drawn))

    def spec(**masks):
        return parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                           "masks": masks, "restorer": {"name": "telea"}})

    assert run_job(*prepare(spec(source="given-else-detect"))).counts == {"ok": 2}
    own, found = rows(tmp_path)["reel/f000.png"], rows(tmp_path)["reel/f001.png"]
    assert own["given_fraction"] == pytest.approx((drawn > 0).mean()) and own["detected_fraction"] is None
    assert own["masked_fraction"] == pytest.approx((drawn > 0).mean())  # its own mask, and only that
    assert found["given_fraction"] is None and found["detected_fraction"] > 0  # the speck, found
    assert (own["mask_source"], found["mask_source"]) == ("given", "detect")  # as it went for each frame
    for wrong in ({"source": "detect", "pattern": "{dir}/hand/{stem}.png"}, {"source": "detect", "required": True},
                  {"source": "given-else-detect", "required": True}):
        with pytest.raises(SpecError, match="masks.(pattern|required)"):
            spec(**wrong)


def test_a_border_keeps_a_plates_tape_and_rebate_from_the_detector(tmp_path, ray_session):
    """A glass plate's binding tape and clear rebate run along its edges: the detector took their edges for damage
    and repainted them (and a held frame's share of damage was mostly tape). masks.border protects the band."""
    plate = sequence(count=1)[0]
    plate[:, :6] = 0  # black tape down the left edge, with a torn, bright rebate beside it
    plate[::7, 6:9] = 255
    plate[40:44, 60:64] = 250  # a speck of dust on the picture
    (tmp_path / "in" / "reel").mkdir(parents=True)
    (tmp_path / "in" / "reel" / "plate.png").write_bytes(png(plate))

    def detect(**masks):
        return parse_spec({"name": "detect", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                           "masks": {"source": "detect", **masks}, "restorer": {"name": "telea"}})

    assert run_job(*prepare(detect())).counts == {"ok": 1}
    edges = np.asarray(Image.open(tmp_path / "out" / "_masks" / "reel" / "plate.png.png")) > 0
    assert edges[:, :12].any()  # the tape's edge taken for damage
    assert run_job(*prepare(detect(border=12))).counts == {"ok": 1}  # a new setting: restored again
    kept = np.asarray(Image.open(tmp_path / "out" / "_masks" / "reel" / "plate.png.png")) > 0
    restored = np.asarray(Image.open(tmp_path / "out" / "reel" / "plate.png"))
    assert not kept[:, :12].any() and np.array_equal(restored[:, :12], plate[:, :12])
    assert kept[40:44, 60:64].all()  # the dust is still found and filled
    assert detect(border=12).config_hash(None) != detect().config_hash(None)
    assert run_job(*prepare(detect(border=48))).counts == {"failed": 1}  # nothing left to restore: said, not hidden
    assert "masks.border 48 px leaves nothing of this 128x96 frame" in rows(tmp_path)["reel/plate.png"]["error"]
