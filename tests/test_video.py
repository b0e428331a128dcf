"""Video inputs: generated clips decoded in order and in chunks, and restored by a job as image sequences."""
import io
import shutil

import numpy as np
import pytest

from restore.frames import FrameError

av = pytest.importorskip("av", reason="video needs PyAV")
from restore.video import VideoFrame, iter_video_frames, probe_video  # noqa: E402

COUNT, HEIGHT, WIDTH = 48, 48, 64


def picture(index: int) -> np.ndarray:
    """A moving ramp under a top band of six black/white blocks: the frame's index in binary, legible after lossy coding."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.stack([(x * 3 + index * 2) % 256, (y * 4 + index) % 256, (x + y) % 256], axis=2)
    for bit in range(6):
        image[:16, bit * 10:(bit + 1) * 10] = 255 * ((index >> bit) & 1)
    return image.astype(np.uint8)


def clip(codec: str, container: str, pix_fmt: str, options=None, count: int = COUNT) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.options = options or {}
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(picture(index), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buffer.getvalue()


@pytest.fixture(scope="module", params=[("libx264", "mp4", "yuv420p", {"bf": "2", "g": "12"}),
                                        ("mpeg4", "avi", "yuv420p", {"g": "10"}), ("ffv1", "matroska", "bgr0", {})],
                ids=["h264-bframes", "mpeg4", "ffv1"])
def video(request):
    codec, container, pix_fmt, options = request.param
    return clip(codec, container, pix_fmt, options)


def shown_index(frame: VideoFrame) -> int:
    return sum(1 << bit for bit in range(6) if frame.pixels[4:12, bit * 10 + 2:bit * 10 + 8].mean() > 128)


def test_probe_counts_frames_without_decoding(video):
    info = probe_video(video)
    assert info.frames == COUNT and info.fps == 24 and (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.bit_depth == 8 and list(info.pts) == sorted(info.pts)


def test_frames_come_out_in_order_whole_and_in_chunks(video):
    info = probe_video(video)
    frames = list(iter_video_frames(video, info=info))
    assert [f.index for f in frames] == list(range(COUNT))
    assert [shown_index(f) for f in frames] == list(range(COUNT))  # the pictures, not just the numbers, in order
    for start, stop in ((0, 7), (13, 30), (40, 99)):
        chunk = list(iter_video_frames(video, start, stop, info=info))
        assert [f.index for f in chunk] == list(range(start, min(stop, COUNT)))
        assert all(np.array_equal(c.pixels, frames[c.index].pixels) for c in chunk)  # seeking decodes the same


def test_sixteen_bit_video_decodes_to_sixteen_bits():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "gbrp16le"
        for index in range(3):
            ramp = np.linspace(0, 65535, HEIGHT * WIDTH * 3).reshape(HEIGHT, WIDTH, 3).astype(np.uint16) ^ index
            frame = av.VideoFrame.from_ndarray(ramp, format="rgb48le")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    info = probe_video(buffer.getvalue())
    frames = list(iter_video_frames(buffer.getvalue(), info=info))
    assert info.bit_depth == 16 and frames[0].pixels.dtype == np.uint16 and len(np.unique(frames[0].pixels)) > 256
    assert len(frames) == 3 and np.array_equal(frames[2].pixels, frames[0].pixels ^ 2)  # every bit as encoded


@pytest.mark.parametrize("codec, container, pix_fmt", [("mpeg4", "avi", "yuv420p"), ("ffv1", "matroska", "bgr0")])
def test_a_video_cut_short_is_refused_not_read_as_a_shorter_one(codec, container, pix_fmt):
    whole = clip(codec, container, pix_fmt)
    assert probe_video(whole).frames == COUNT
    with pytest.raises(FrameError, match="truncated video: its header"):
        probe_video(whole[:int(len(whole) * 0.8)])


def test_a_video_that_starts_late_or_skips_frames_is_no_truncated_one():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        for index, pts in enumerate([240, 241, 242, 250, 251, 263]):  # from 10 s on, with gaps
            frame = av.VideoFrame.from_ndarray(picture(index), format="rgb24")
            frame.pts = pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    assert probe_video(buffer.getvalue()).frames == 6


def test_a_file_without_video_is_refused_with_the_reason():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    with pytest.raises(FrameError, match=r"no video stream in this file \(it holds audio\)"):
        probe_video(buffer.getvalue())
    with pytest.raises(FrameError, match="not a readable video"):
        probe_video(b"this is a text file, not a video")


def test_a_video_goes_through_a_job_frame_by_frame_in_order_and_resumes_without_rereading(tmp_path, ray_session):
    from PIL import Image

    from restore.frames import encode_mask
    from restore.manifest import read_manifests
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage

    (tmp_path / "in" / "masks" / "clip").mkdir(parents=True)
    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0"))
    hole = np.zeros((HEIGHT, WIDTH), bool)
    hole[30:40, 20:40] = True
    (tmp_path / "in" / "masks" / "clip" / "000005.png").write_bytes(encode_mask(hole))
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
           "include": ["*.mkv", "*.png"], "restorer": {"name": "telea"}, "batch_size": 4}  # the masks are listed too

    context, plan = prepare(parse_spec(raw))
    assert plan.frames == plan.listed == COUNT and plan.bytes_to_read == (tmp_path / "in" / "clip.mkv").stat().st_size
    result = run_job(context, plan)

    assert result.counts == {"ok": COUNT} and result.planned == COUNT  # frames, not chunks of them
    for index in range(COUNT):
        restored = np.asarray(Image.open(tmp_path / "out" / "clip.mkv.frames" / f"{index:06d}.png"))
        if index == 5:
            assert np.array_equal(restored[~hole], picture(index)[~hole])
            assert not np.array_equal(restored[hole], picture(index)[hole])
        else:
            assert np.array_equal(restored, picture(index))  # lossless source, no mask: unchanged, in order
    rows = read_manifests(open_storage(str(tmp_path / "out")), "video").to_pylist()
    assert sorted(row["input_key"] for row in rows) == [f"clip.mkv#{i:06d}" for i in range(COUNT)]
    assert {row["input_frames"] for row in rows} == {COUNT}
    assert {row["frame_rate"] for row in rows} == {"24"}  # what the sequence is put back together at
    times = sorted(row["frame_time"] for row in rows)  # as the file stores them: Matroska to the millisecond
    assert times == pytest.approx([i / 24 for i in range(COUNT)], abs=0.0005)
    context, plan = prepare(parse_spec(raw))
    assert plan.tasks == [] and plan.already_done == COUNT

    from restore.pictures import REPORT_ROOT
    from restore.report import _digest, write_report

    thumbs = tmp_path / "out" / REPORT_ROOT / "video" / "thumbs"
    made_in_run = {path.name: path.read_bytes() for path in thumbs.iterdir()}  # as each frame was written
    assert len(made_in_run) == 2 * COUNT + 1  # original and restored of every frame, the mask over frame 5
    shutil.rmtree(thumbs)
    report = write_report(parse_spec(raw))  # the video read once, each frame's pictures from its own frame
    assert (report.pictures_made, report.pictures_unavailable) == (COUNT, 0)
    assert {path.name: path.read_bytes() for path in thumbs.iterdir()} == made_in_run  # the same either way
    for row in rows:
        thumb = Image.open(tmp_path / "out" / REPORT_ROOT / "video" / "thumbs" / f"{_digest(row)}-o.jpg")
        shown = VideoFrame(0, None, np.asarray(thumb.convert("RGB").resize((WIDTH, HEIGHT))))
        assert shown_index(shown) == int(row["input_key"].rsplit("#", 1)[1])

    audit = tmp_path / "out" / "_masks" / "clip.mkv#000005.png"
    assert audit.is_file()
    (tmp_path / "in" / "masks" / "clip" / "000005.png").unlink()  # the frame needs nothing after all
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 1}
    assert not audit.exists()


def test_a_videos_frames_spread_over_the_workers(tmp_path, ray_session):
    """A chunk of a video is many frames: they came out of the read stage as one block, which one worker restored
    while the other idled."""
    from restore.frames import encode_mask
    from restore.manifest import read_manifests
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:  # one chunk of frames of 320x240
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 5 * WIDTH, 5 * HEIGHT, "bgr0"
        for index in range(32):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.tile(picture(index), (5, 5, 1)), format="rgb24")))
        out.mux(stream.encode())
    (tmp_path / "in" / "masks" / "reel").mkdir(parents=True)
    (tmp_path / "in" / "reel.mkv").write_bytes(buffer.getvalue())
    hole = np.zeros((5 * HEIGHT, 5 * WIDTH), bool)
    hole[100:140, 100:200] = True  # work for the generator on every frame, so the second worker has time to start
    for index in range(32):
        (tmp_path / "in" / "masks" / "reel" / f"{index:06d}.png").write_bytes(encode_mask(hole))
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
           "include": ["*.mkv", "*.png"], "batch_size": 4, "workers": {"count": 2, "cpus": 0.25}}
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 32}
    rows = read_manifests(open_storage(str(tmp_path / "out")), "video").to_pylist()
    assert len({row["worker"] for row in rows}) == 2


def test_the_frames_a_video_replaced_by_a_shorter_one_no_longer_has_are_withdrawn(tmp_path, ray_session, monkeypatch):
    """A reel's video replaced by a shorter cut kept the old frames past its new end: ok in the manifest and in
    status, and their outputs, from the video it was, at the end of the restored sequence, which verify found fine."""
    from restore.manifest import latest_rows, read_manifests, summarize
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage
    from restore.verify import verify

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0", count=6))
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "include": ["*.mkv"],
           "restorer": {"name": "telea"}, "batch_size": 4}
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 6}
    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0", count=4))
    context, plan = prepare(parse_spec(raw))
    assert plan.withdrawn == ["clip.mkv#000004", "clip.mkv#000005"]
    assert run_job(context, plan).counts == {"ok": 4}
    table = read_manifests(open_storage(str(tmp_path / "out")), "video")
    assert summarize(table).by_status == {"ok": 4, "withdrawn": 2}
    assert {row["input_key"]: row["status"] for row in latest_rows(table)}["clip.mkv#000005"] == "withdrawn"
    stale = verify(str(tmp_path / "out"), "video", unknown=True).problems
    assert sorted(problem.key for problem in stale) == ["clip.mkv.frames/000004.png", "clip.mkv.frames/000005.png"]
    assert all("withdrawn" in problem.detail for problem in stale)
    assert prepare(parse_spec(raw))[1].withdrawn == []  # closed once

    import restore.pipeline  # a video shortened and restored whole by a version that withdrew nothing

    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0", count=6))
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 6}
    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0", count=3))
    monkeypatch.setattr(restore.pipeline, "_frames_beyond", lambda recorded, count: [])
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": 3}
    monkeypatch.undo()
    assert prepare(parse_spec(raw))[1].withdrawn == ["clip.mkv#000003", "clip.mkv#000004", "clip.mkv#000005"]


def test_a_broken_video_becomes_one_failed_row_with_the_reason_until_a_good_copy_replaces_it(tmp_path, ray_session):
    from restore.manifest import read_manifests, summarize
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 a matroska header and nothing else")
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "include": ["*.mkv"],
           "restorer": {"name": "telea"}, "max_attempts": 2}
    assert run_job(*prepare(parse_spec(raw))).counts == {"failed": 1}
    row, = read_manifests(open_storage(str(tmp_path / "out")), "video").to_pylist()
    assert row["input_key"] == "broken.mkv" and "video" in row["error"].lower()

    assert run_job(*prepare(parse_spec(raw))).counts == {"failed": 1}
    _, plan = prepare(parse_spec(raw))  # given up after max_attempts, until the file changes
    assert plan.tasks == [] and plan.given_up == ["broken.mkv"] and plan.already_done == 0

    (tmp_path / "in" / "broken.mkv").write_bytes(clip("ffv1", "matroska", "bgr0"))  # a good copy replaces it
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": COUNT}
    summary = summarize(read_manifests(open_storage(str(tmp_path / "out")), "video"))
    assert summary.by_status == {"ok": COUNT} and summary.failures == []  # the old failure is gone from status


def test_a_truncated_video_gets_a_failed_row_and_one_over_max_pixels_fails_its_frames(tmp_path, ray_session):
    from restore.manifest import read_manifests
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage

    whole = clip("ffv1", "matroska", "bgr0")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.mkv").write_bytes(whole[:600])  # a header that promises a stream, then nothing
    (tmp_path / "in" / "half.mkv").write_bytes(whole[:len(whole) // 2])  # a copy still being written
    (tmp_path / "in" / "whole.mkv").write_bytes(whole)
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "include": ["*.mkv"],
           "restorer": {"name": "telea"}, "max_pixels": WIDTH * HEIGHT - 1}
    assert run_job(*prepare(parse_spec(raw))).counts == {"failed": 2 + COUNT}  # the big one: each of its frames
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "video").to_pylist()}
    assert "truncated" in rows["cut.mkv"]["error"]
    assert "its header says it runs to 2.00 s, its frames stop at 1.00 s" in rows["half.mkv"]["error"]
    assert not any(key.startswith("half.mkv#") for key in rows)  # not restored as a reel of half its length
    assert all("over the limit" in rows[f"whole.mkv#{i:06d}"]["error"] for i in range(COUNT))


def test_a_video_chunk_that_cannot_be_read_fails_its_own_frames_not_the_whole_video(tmp_path):
    import pyarrow as pa

    from restore.manifest import MANIFEST_SCHEMA, latest_rows
    from restore.pipeline import TASK_SCHEMA, load_frames, prepare
    from restore.spec import parse_spec

    (tmp_path / "in").mkdir()
    good = clip("ffv1", "matroska", "bgr0")
    (tmp_path / "in" / "clip.mkv").write_bytes(good)
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "include": ["*.mkv"],
           "restorer": {"name": "telea"}}
    context, plan = prepare(parse_spec(raw))
    (tmp_path / "in" / "clip.mkv").write_bytes(b"\x1aE\xdf\xa3 cut short")  # replaced between planning and reading
    rows = pa.concat_tables(load_frames(pa.Table.from_pylist(plan.tasks, schema=TASK_SCHEMA), context)).to_pylist()
    assert [row["input_key"] for row in rows] == [f"clip.mkv#{i:06d}" for i in range(COUNT)]
    assert {row["status"] for row in rows} == {"failed"}

    # Status: a whole video's failure goes once a later run restores its frames, not for a frame of the same run.
    failed = {"input_key": "clip.mkv", "status": "failed", "run_id": "r1"}
    frame = {"input_key": "clip.mkv#000000", "status": "ok"}
    same_run = pa.Table.from_pylist([failed, {**frame, "run_id": "r1"}], schema=MANIFEST_SCHEMA)
    later_run = pa.Table.from_pylist([failed, {**frame, "run_id": "r2"}], schema=MANIFEST_SCHEMA)
    assert [row["input_key"] for row in latest_rows(same_run)] == ["clip.mkv", "clip.mkv#000000"]
    assert [row["input_key"] for row in latest_rows(later_run)] == ["clip.mkv#000000"]


def test_frame_masks_named_with_digits_after_the_index_are_not_planned_as_frames(tmp_path):
    from restore.pipeline import prepare
    from restore.spec import parse_spec

    (tmp_path / "in" / "masks" / "clip").mkdir(parents=True)
    (tmp_path / "in" / "clip.mkv").write_bytes(clip("ffv1", "matroska", "bgr0"))
    (tmp_path / "in" / "masks" / "clip" / "000005.20240101.png").write_bytes(b"a mask")
    (tmp_path / "in" / "still.png").write_bytes(b"a frame")
    raw = {"name": "video", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
           "include": ["*.mkv", "*.png"], "masks": {"pattern": "masks/{stem}.20240101.png"}}
    _, plan = prepare(parse_spec(raw))
    assert sorted({task["input_key"] for task in plan.tasks}) == ["clip.mkv", "still.png"]


def test_a_restored_video_moved_to_glacier_is_not_checked_nor_held_as_waiting(s3_endpoint, s3_bucket, ray_session):
    """Planning asks S3 about archived originals it would read; a video whose every frame is done is not read, so
    a lifecycle rule moving it to Glacier afterwards must not turn it into a frame waiting for a restore."""
    import boto3

    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="in/clip.mkv", Body=clip("ffv1", "matroska", "bgr0"))
    raw = {"name": "video", "input": f"s3://{s3_bucket}/in", "output": f"s3://{s3_bucket}/out",
           "endpoint_url": s3_endpoint, "include": ["*.mkv"], "restorer": {"name": "telea"}, "batch_size": 8}
    assert run_job(*prepare(parse_spec(raw))).counts == {"ok": COUNT}
    client.copy_object(Bucket=s3_bucket, Key="in/clip.mkv", CopySource={"Bucket": s3_bucket, "Key": "in/clip.mkv"},
                       StorageClass="GLACIER")

    _, plan = prepare(parse_spec(raw))
    assert plan.archived == [] and plan.tasks == [] and plan.already_done == plan.listed == COUNT
