"""The Ray Data graph of a job: plan on the driver, pixels on the workers, manifests committed by the driver.

    plan (list inputs, drop what the manifests say is done)
      → load: read + checksum + decode + mask            (tasks)
      → restore: the restorer, loaded once per actor     (actor pool, CPUs/GPUs from the spec)
      → write: encode + put output, mask and thumbnails (tasks; see _write_thumbs)
      → driver: manifest parts, block by block

Frames travel between stages as raw pixel buffers in Arrow binary columns: no re-encoding, and numpy views
on the receiving side.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import signal
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .captions import read_caption
from .condition import census
from .film import LOG_SCAN, FilmFrame, restore_codes, to_view
from .frames import (CONTENT_TYPES, OUTPUT_FORMATS, PROVENANCE_KEY, Frame, FrameError, as_displayed, as_stored,
                     check_encodable, check_pixel_limit, decode_frame, decode_mask, encode_frame, encode_mask,
                     extension_for, jpeg_with_provenance)
from .grain import regrain
from .manifest import (CENSUS_FIELDS, MANIFEST_ROOT, MANIFEST_SCHEMA, NOT_RESTORED, RUN_SUMMARY, SOFTWARE, WITHDRAWN,
                       History, ManifestWriter, compact, history, is_video, jobs_in, last_run_summary, latest,
                       VIDEO_EXTENSIONS, new_run_id, provenance_id, read_manifests, run_prefix, split_frame_key,
                       video_frame_key)
from .pictures import (REPORT_ROOT, REVIEW_QUALITY, REVIEW_SIZE, THUMB_QUALITY, THUMB_SIZE, as_shown, fit,
                       held_pictures_name, picture_set, pictures_name, pictures_prefix, review_set, shrink,
                       store_pictures)
from .restorers import RestorerError, build_restorer, check_weights, resolve_weights
from .spec import NEVER_FRAMES, JobSpec
from .storage import (ARCHIVAL_CLASSES, ArchivedObjectError, LocalStorage, NoSuchObjectError, ObjectInfo, Storage,
                      StorageError, StorageUnavailableError, check_no_overlap, key_matches, open_storage, same_location)

logger = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A job that cannot start (not enough cluster resources, storage unusable): nothing was processed."""


MASK_PREFIX = "_masks"
OWN_OUTPUT_FOLDERS = {MASK_PREFIX: "audit masks", MANIFEST_ROOT: "manifests", REPORT_ROOT: "report"}

TASK_SCHEMA = pa.schema([
    ("input_key", pa.string()),
    ("input_size", pa.int64()),
    ("input_etag", pa.string()),
    ("input_version_id", pa.string()),
    ("frame_indices", pa.list_(pa.int32())),  # videos: the frames this task decodes; null for a still image
    ("neighbour_keys", pa.list_(pa.string())),
    ("plan_error", pa.string()),  # a frame planning already knows must fail, with the reason
    # the task's frames whose newest ok row names an audit mask: a fill that now changes nothing removes it, as
    # `_masks/` shows what the outputs changed, not what an earlier run did
    ("audited_frames", pa.list_(pa.string())),
])

FRAME_FIELDS = [
    ("input_frames", pa.int32()),  # frames in the input object: a video's count, null for a still image
    ("frame_rate", pa.string()),  # see MANIFEST_SCHEMA
    ("frame_time", pa.float64()),
    ("caption", pa.string()),  # see MANIFEST_SCHEMA
    ("status", pa.string()),
    ("error", pa.string()),
    ("input_sha256", pa.string()),
    ("pixels", pa.large_binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int8()),
    ("dtype", pa.string()),
    ("alpha", pa.large_binary()),
    ("infrared", pa.large_binary()),  # an RGBI scan's infrared plane: a mask source, never restored
    ("source_format", pa.string()),
    ("source_mode", pa.string()),
    ("min_is_white", pa.bool_()),  # see Frame.min_is_white
    ("tiff_compression", pa.string()),  # see Frame.tiff_compression
    ("icc_profile", pa.binary()),
    ("exif", pa.binary()),
    ("xmp", pa.binary()),
    ("iptc", pa.binary()),
    ("png_text", pa.string()),  # JSON object
    ("png_colour", pa.binary()),
    ("dpi", pa.list_(pa.float64())),
    ("resolution_per_cm", pa.bool_()),
    ("orientation", pa.int8()),  # EXIF/TIFF Orientation: how viewers turn the frame, and so its thumbnails
    ("original_thumb", pa.binary()),  # (h, w, 3) uint8: the original as its thumbnail shows it (`_original_thumb`)
    ("film_header", pa.string()),  # DPX/EXR: how to write the samples back exactly (see film.py)
    ("film_source", pa.large_binary()),  # DPX/EXR: the samples as stored; `pixels` is their display view
    ("source_jpeg", pa.large_binary()),  # a JPEG written as JPEG with nothing masked: its own bytes (`_kept_jpeg`)
    ("mask", pa.large_binary()),  # one byte per pixel, 1 = hole
    ("mask_etag", pa.string()),  # the mask files read: see MANIFEST_SCHEMA
    ("protect_etag", pa.string()),
    ("masked_fraction", pa.float64()),
    ("given_fraction", pa.float64()),
    ("detected_fraction", pa.float64()),
    ("detector", pa.string()),  # the detector that ran on the frame (see frame_mask)
    ("held_for", pa.string()),
    # a held frame's review pictures (`_held_pictures`), written with its row: JPEGs by name (pictures.review_set)
    ("held_pictures", pa.list_(pa.struct([("name", pa.string()), ("jpeg", pa.binary())]))),
    *CENSUS_FIELDS,  # what kinds of damage the mask holds (restore/condition.py)
    ("restore_mask", pa.large_binary()),  # the part of `mask` temporal fill left to the restorer; null = all of it
    ("temporal_fill_fraction", pa.float64()),
    ("changed_fraction", pa.float64()),  # set by the restore stage
    ("deepest_fill_px", pa.float64()),  # set by the restore stage (see the manifest's column)
    ("read_seconds", pa.float64()),
    ("mask_seconds", pa.float64()),
    ("restore_seconds", pa.float64()),
    ("worker", pa.string()),
]
FRAME_SCHEMA = pa.schema(list(TASK_SCHEMA) + FRAME_FIELDS)


@dataclass(frozen=True)
class JobContext:
    """Everything a stage needs, resolved once on the driver and shipped to the workers."""

    spec: JobSpec
    input_storage: Storage
    output_storage: Storage
    mask_storage: Storage
    run_id: str
    config_hash: str
    weights_sha256: str | None
    detector_sha256: str | None = None  # the learned detector's weights, when the job uses it


@dataclass
class Plan:
    tasks: list[dict]
    listed: int
    already_done: int
    bytes_to_read: int
    given_up: list[str] = field(default_factory=list)  # frames that failed max_attempts times: not retried
    held: list[str] = field(default_factory=list)  # frames held until the spec says more (held_for): not read
    repairing: list[str] = field(default_factory=list)  # frames restored again because their outputs failed verify
    orphan_masks: list[str] = field(default_factory=list)  # files in mask folders whose frames are gone: not frames
    # frame → its mask as found, saved in another format than masks.pattern names (`f001.jpg` for `f001.png`): the
    # file is no frame, and the frame has no mask until it is saved as the pattern says
    misformatted_masks: dict[str, str] = field(default_factory=dict)
    withdrawn: list[str] = field(default_factory=list)  # frames not restored whose originals left the input
    # frames whose originals wait in archival storage: not read this run; each a task's input fields, its `error`,
    # whether a restore (S3 RestoreObject) is bringing it back (`restoring`), and whether its newest row already
    # says so (`recorded`: no row is added every night)
    archived: list[dict] = field(default_factory=list)
    asked_back: int = 0  # archived originals this run asked back (`archive_restore`)
    not_asked_back: list[str] = field(default_factory=list)  # why asking some back failed, one line each

    @property
    def being_restored(self) -> int:
        return sum(frame["restoring"] for frame in self.archived)

    @property
    def frames(self) -> int:
        """Frames to process: a video's chunk task holds several (one that could not be probed counts as one)."""
        return sum(max(1, len(task["frame_indices"] or ())) for task in self.tasks)


@dataclass
class RunResult:
    run_id: str
    manifest_prefix: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    planned: int = 0
    already_done: int = 0
    interrupted: bool = False  # stopped (Ctrl-C, SIGTERM) before every planned frame came back
    nothing_masked: int = 0  # frames ok with nothing masked: copied as they were
    no_mask_file: int = 0  # of those, frames whose given mask file was not there
    not_restored: list[tuple[str, str]] = field(default_factory=list)  # (input key, reason): failed or skipped

    @property
    def frames_per_second(self) -> float:
        return self.planned / self.seconds if self.seconds > 0 else 0.0


class RunInterrupted(KeyboardInterrupt):
    """A run stopped part-way, carrying what it did; a KeyboardInterrupt still, so callers stop as for Ctrl-C."""

    def __init__(self, result: RunResult):
        super().__init__(f"run {result.run_id} interrupted")
        self.result = result


def is_stop(error: BaseException) -> bool:
    """Ctrl-C, or a scheduler's SIGTERM: ours raises KeyboardInterrupt, Ray's handler exits with the signal's number."""
    return isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and error.code == signal.SIGTERM)


# ---------------------------------------------------------------------------------------------- planning

VIDEO_CHUNK = 32  # frames of one video decoded by one load task


def mask_key_for(pattern: str, input_key: str) -> str:
    """A still's mask, or a video frame's: `{stem}` of `reel.mkv#000123` is `reel/000123` (a folder per video)."""
    object_key, index = split_frame_key(input_key)
    directory, name = posixpath.split(object_key)
    stem = posixpath.splitext(name)[0] + ("" if index is None else f"/{index:06d}")
    return posixpath.normpath(pattern.format(stem=stem, name=name, dir=directory or "."))


_FRAME_INDEX = re.compile(r"(?<=/)\d{6,}")  # in a video frame's mask key the index follows its video's folder


def _index_splits(key: str):
    """Each (head, tail) of `key` around a frame index it may hold: 6 or more digits just after a '/'."""
    for run in _FRAME_INDEX.finditer(key):
        for end in range(run.start() + 6, run.end() + 1):
            yield key[:run.start()], key[end:]


def _video_mask_shape(pattern: str, video_key: str) -> tuple[str, str | None]:
    """The keys of a video's frame masks (`{dir}/masks/{stem}.png` → `masks/reel/000123.png`) as the (head, tail)
    around their frame index; (key, None) when the pattern names no index (one mask key for every frame)."""
    first = mask_key_for(pattern, video_frame_key(video_key, 0))
    head, index, tail = first.rpartition(f"{0:06d}")
    return (head, tail) if index else (first, None)


def _mask_folder_shape(pattern: str) -> re.Pattern | None:
    """The keys a pattern that keeps masks in a folder of their own (`{dir}/masks/{stem}.png`) can name, as a
    regex, so that a mask whose frame was deleted or renamed is still no frame; None for a pattern without such a
    folder (`{dir}/{stem}_mask.png`), whose shape could also be a frame's name."""
    # a video frame's stem is `reel/000123`
    fields = {"{dir}/": "(?:.*/)?", "{dir}": ".*", "{stem}": r"[^/]+(?:/\d{6,})?", "{name}": "[^/]+"}
    parts = re.split(r"(\{dir\}/|\{dir\}|\{stem\}|\{name\})", posixpath.normpath(pattern))
    if ".." in pattern or not any(re.search(r"[^/]+/", literal) for literal in parts[::2]):  # no folder named
        return None
    return re.compile("".join(fields[part] if index % 2 else re.escape(part) for index, part in enumerate(parts)),
                      re.DOTALL)


def frames_folder(video_key: str) -> str:
    """Where a video's restored frames are written: `reel.mkv` → `reel.mkv.frames/`."""
    return f"{video_key}.frames/"


def output_key_for(input_key: str, fmt: str) -> str:
    """Same key when the format is kept; otherwise the new extension is appended, so keys never collide.

    A video comes back as an image sequence beside it: `reel.mkv#000123` → `reel.mkv.frames/000123.png`.
    """
    extension = extension_for(fmt)
    video, index = split_frame_key(input_key)
    if index is not None:
        return f"{frames_folder(video)}{index:06d}{extension}"
    if posixpath.splitext(input_key)[1].lower() in _SAME_EXTENSIONS.get(extension, (extension,)):
        return input_key
    return input_key + extension


_SAME_EXTENSIONS = {".tif": (".tif", ".tiff"), ".jpg": (".jpg", ".jpeg")}


def lossless_format(source_format: str, output_format: str) -> str:
    """'same' keeps PNG, TIFF, DPX and EXR; any other source becomes PNG, since outputs are lossless unless asked."""
    if output_format != "same":
        return output_format
    return {"PNG": "png", "TIFF": "tiff", "DPX": "dpx", "EXR": "exr"}.get(source_format, "png")


def frame_order(key: str) -> list:
    """Sort key of a frame in its sequence: numbers in names count as numbers, so `shot_2` comes before `shot_10`
    (scanners do not always pad frame numbers)."""
    return [(0, int(part), part) if part.isdecimal() else (1, 0, part) for part in re.split(r"(\d+)", key)]


def neighbour_keys(keys: list[str], window: int) -> dict[str, list[str]]:
    """For each key, the up-to-`window` frames before and after it in its folder's sequence (`frame_order`)."""
    if window == 0:  # no temporal stage: nothing to order
        return {key: [] for key in keys}
    by_folder: dict[str, list[str]] = {}
    for key in sorted(keys, key=frame_order):
        by_folder.setdefault(posixpath.dirname(key), []).append(key)
    neighbours: dict[str, list[str]] = {}
    for sequence in by_folder.values():
        for index, key in enumerate(sequence):
            neighbours[key] = sequence[max(0, index - window):index] + sequence[index + 1:index + 1 + window]
    return neighbours


def check_output_is_the_jobs(output_storage: Storage, job: str) -> None:
    """One output, one job: two jobs in one output would overwrite each other's `report.html`, list each other's
    frames as unknown in `verify`, and could write one output key from two inputs that no plan sees together.
    A job already in an output that others share (from before this check) goes on running there."""
    jobs = jobs_in(output_storage)
    others = [name for name in jobs if name != job]
    if others and job not in jobs:
        raise JobError(
            f"output: {output_storage.uri} holds the manifests of job(s) {', '.join(map(repr, others))}, and each job "
            "needs an output of its own, beside the others rather than inside them; if this job was renamed, go "
            f"back to its old name or move {MANIFEST_ROOT}/{others[0]}/ to {MANIFEST_ROOT}/{job}/")


def check_no_other_job_runs_there(output_storage: Storage, job: str) -> None:
    """Under this job's lease: a job started in the same output moments before has no manifests yet, only its live
    lease, and the two would write over each other's outputs. Two that start together both stop here."""
    from .lease import run_in_progress

    keys = [info.key.split("/") for info in output_storage.list(prefix=f"{MANIFEST_ROOT}/")]
    leased = {parts[1] for parts in keys if parts[2:3] == ["_lease"]}
    recorded = {parts[1] for parts in keys if len(parts) > 2 and parts[-1].endswith(".parquet")}
    sharing = recorded if job in recorded else set()  # jobs that shared the output before the one-job rule
    for other in sorted(leased - {job} - sharing):
        holder = run_in_progress(output_storage, other)
        if holder:
            raise JobError(f"output: job {other!r} is running in {output_storage.uri} ({holder}), and each job needs "
                           "an output of its own: give this one another output")


def open_job_storages(spec: JobSpec) -> tuple[Storage, Storage, Storage]:
    check_no_overlap(spec.input, spec.output)
    input_storage = open_storage(spec.input, spec.endpoint_url)
    output_storage = open_storage(spec.output, spec.endpoint_url)
    check_output_is_the_jobs(output_storage, spec.name)
    mask_uri = spec.masks.uri or spec.input
    mask_storage = input_storage if same_location(mask_uri, spec.input) else open_storage(mask_uri, spec.endpoint_url)
    return input_storage, output_storage, mask_storage


def _recorded_frames(table: pa.Table, video_keys: list[str]) -> dict[str, pa.Table]:
    """The manifest rows of each video's frames (`reel.mp4#000012`; not a still named `reel.mp4#cover.png`), in
    written order, from one pass over the manifest: a filter per video read every row once per video, every
    night (minutes for an archive of thousands of reels)."""
    video = pc.struct_field(pc.extract_regex(table["input_key"], r"^(?P<video>.*)#[0-9]+$"), "video")
    codes = pc.index_in(video, value_set=pa.array(video_keys, pa.string()))  # null: a still, or a video not listed
    frames, codes = table.filter(pc.is_valid(codes)), codes.drop_null().to_numpy()
    order = np.argsort(codes, kind="stable")  # by video, each in written order
    ends = np.cumsum(np.bincount(codes, minlength=len(video_keys)))
    frames = frames.take(order)
    return {key: frames.slice(end - count, count)
            for key, end, count in zip(video_keys, ends, np.diff(ends, prepend=0))}


def _video_done(info: ObjectInfo, skip: Callable[[str, str], bool], recorded: pa.Table) -> int | None:
    """The frames of a video that needs no reading: 1 when it was given up whole (it could not be planned or
    probed), its count when every frame is done; None when it is to be read. `recorded`: its `_recorded_frames`."""
    if skip(info.key, info.etag):
        return 1
    counts = [n for n in recorded["input_frames"].to_pylist() if n is not None]
    if counts and all(skip(video_frame_key(info.key, i), info.etag) for i in range(counts[-1])):
        return counts[-1]
    return None


def _frames_beyond(recorded: pa.Table, count: int) -> list[str]:
    """The frames of a video (`recorded`: its `_recorded_frames`) past its `count` frames, not yet withdrawn: a video
    replaced by a shorter one left them ok, and their outputs at the end of the restored sequence, from the video
    it was."""
    return [row["input_key"] for row in latest(recorded).select(["input_key", "status"]).to_pylist()
            if split_frame_key(row["input_key"])[1] >= count and row["status"] != WITHDRAWN]


def _video_tasks(info: ObjectInfo, input_storage: Storage, skip: Callable[[str, str], bool], window: int,
                 audited: set[str]) -> tuple[list[dict], int, int]:
    """Chunk tasks for the frames of a video to read (not `_video_done`); returns (tasks, frames in the video,
    frames done)."""
    from .video import probe_video

    base = {"input_key": info.key, "input_size": info.size, "input_etag": info.etag,
            "input_version_id": info.version_id, "neighbour_keys": []}
    try:
        count = probe_video(input_storage.get(info.key)).frames
    except Exception:  # noqa: BLE001 - the load stage reads it again and fails it with the reason
        return [{**base, "frame_indices": []}], 1, 0  # the load stage reads it again and records why it fails
    wanted = [i for i in range(count) if not skip(video_frame_key(info.key, i), info.etag)]
    tasks = []
    for start in range(0, len(wanted), VIDEO_CHUNK):
        chunk = wanted[start:start + VIDEO_CHUNK]
        neighbours = sorted({j for i in chunk for j in range(i - window, i + window + 1) if 0 <= j < count} - set(chunk))
        tasks.append({**base, "frame_indices": chunk,
                      "neighbour_keys": [video_frame_key(info.key, j) for j in neighbours],
                      "audited_frames": [video_frame_key(info.key, i) for i in chunk
                                         if video_frame_key(info.key, i) in audited]})
    return tasks, count, count - len(wanted)


_FORMAT_BY_EXTENSION = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".dpx": "DPX", ".exr": "EXR"}


def planned_output_key(input_key: str, output_format: str) -> str:
    """The output key planning expects, from the input's name (its content is only known once decoded)."""
    source = _FORMAT_BY_EXTENSION.get(posixpath.splitext(input_key)[1].lower(), "")
    return output_key_for(input_key, lossless_format(source, output_format))


def _refuse_shared_outputs(tasks: list[dict], stills: list[ObjectInfo], output_format: str) -> list[dict]:
    """Two inputs must never write one output (`scan.jpg` → `scan.jpg.png` beside a real `scan.jpg.png`): the
    input listed under the output's own key keeps it; the other fails with the reason instead of overwriting it,
    also when one of them was restored in an earlier run. Returns the tasks that fail a frame otherwise done."""
    listed = {info.key: info for info in stills}
    by_lower = {key.lower(): key for key in listed}  # outputs may land on a case-insensitive file system
    planned = {task["input_key"]: task for task in tasks}
    extensions = tuple(sorted(set(OUTPUT_FORMATS.values())))
    refused = []
    for owner in listed:  # a key that is another input's key plus an output extension
        if not owner.lower().endswith(extensions):
            continue
        other = by_lower.get(owner.rsplit(".", 1)[0].lower())
        if other is None or planned_output_key(other, output_format).lower() != owner.lower():
            continue
        reason = (f"its output would be {owner!r}, which is the name (and the output) of another input; rename "
                  "one of the two, or set output_format so that neither keeps its format")
        if other in planned:
            planned[other]["plan_error"] = reason
        elif owner in planned:  # the frame named like the output is new: the other's old output is now its own
            info = listed[other]
            refused.append({"input_key": other, "input_size": info.size, "input_etag": info.etag,
                            "input_version_id": info.version_id, "frame_indices": None, "neighbour_keys": [],
                            "plan_error": reason})
    return refused


def _mask_listing(patterns: list[str]) -> tuple[tuple[str, ...], str]:
    """What to list to find the mask files: (globs of their extensions, or everything when a pattern ends in a
    field; the folder all of them lie in, from the patterns' fixed start)."""
    extensions = [posixpath.splitext(pattern)[1] for pattern in patterns]
    globs = tuple("*" if not ext or "}" in ext else f"*{ext}" for ext in extensions)
    fixed = os.path.commonprefix([pattern.split("{", 1)[0] for pattern in patterns])
    folder = posixpath.normpath(fixed[:fixed.rfind("/") + 1] or ".")  # as mask keys are: `./masks/` is `masks`
    climbs = any(".." in pattern for pattern in patterns)  # `masks/{dir}/../x.png` can lead out of the folder
    return globs, "" if folder == "." or climbs else folder + "/"


@dataclass
class InputListing:
    """What one listing of the input found: its frames, the keys of each frame's mask files (given mask, protected
    region), the ETag of every mask file listed, and files in mask folders whose frames are gone."""

    frames: list[ObjectInfo]
    mask_keys: dict[str, list[str]]
    mask_etags: dict[str, str]
    orphan_masks: list[str]
    misformatted_masks: dict[str, str] = field(default_factory=dict)  # see Plan


def _videos_left_out(input_storage: Storage) -> str:
    """A hint where an input of videos lists no frame: a job reads videos only when `include` names them."""
    kinds = sorted({posixpath.splitext(info.key)[1].lower() for info in input_storage.list(
        [f"*{extension}" for extension in VIDEO_EXTENSIONS])})
    return f" (it holds videos, read only when include names them: include: {['*' + k for k in kinds]})" if kinds else ""


def list_input(context: JobContext) -> InputListing:
    """The job's frames and mask files, in one listing of the input where the masks lie there too."""
    spec, input_storage = context.spec, context.input_storage
    patterns, read = spec.masks.file_patterns, spec.masks.read_patterns
    mask_globs, mask_folder = _mask_listing(read)
    masks_with_input = same_location(spec.masks.uri or spec.input, spec.input)
    extra = tuple(glob for glob in mask_globs if glob not in spec.include) if masks_with_input else ()
    found = list(input_storage.list(spec.include + extra))  # frames and masks in one listing
    left_out = spec.exclude + NEVER_FRAMES  # from the frames; a mask matching these is still a mask
    listed: list[ObjectInfo] = [info for info in found if (not extra or key_matches(info.key, spec.include))
                                and not key_matches(info.key, left_out)]
    if not listed:
        missing = isinstance(input_storage, LocalStorage) and not input_storage.root.exists()
        raise JobError(f"input: no frames matching {', '.join(spec.include)} under {spec.input}"
                       + (f" but not {', '.join(spec.exclude)}" if spec.exclude else "")
                       + (" (the folder does not exist: check the path, or that its share is mounted; for the demo "
                          "job, `restore demo SPEC` makes it)"
                          if missing else _videos_left_out(input_storage)))
    mask_keys = {info.key: [mask_key_for(pattern, info.key) for pattern in patterns] for info in listed}
    if not masks_with_input:  # the mask store is listed under the patterns' fixed folder only
        mask_listing = list(context.mask_storage.list(mask_globs, prefix=mask_folder)) if mask_globs else []
        return InputListing(listed, mask_keys, {info.key: info.etag for info in mask_listing}, [])
    mask_files = {key for keys in mask_keys.values() for key in keys}
    shapes = {_video_mask_shape(pattern, info.key) for info in listed if is_video(info.key) for pattern in patterns}
    mask_folders = [shape for shape in map(_mask_folder_shape, read) if shape is not None]
    found_keys = {info.key for info in found}

    # a frame's mask saved in another format than the pattern names: a mask, not a frame, and its frame is told
    expected = {posixpath.splitext(keys[0])[0]: frame for frame, keys in mask_keys.items()} \
        if spec.masks.reads_given else {}
    other_formats = {info.key: expected[root] for info in found if (root := posixpath.splitext(info.key)[0])
                     in expected and info.key != mask_keys[expected[root]][0]}
    mask_files |= set(other_formats)
    misformatted = {frame: key for key, frame in other_formats.items() if mask_keys[frame][0] not in found_keys}

    def is_mask(key: str) -> bool:
        return key in mask_files or (key, None) in shapes or any(split in shapes for split in _index_splits(key))

    def is_orphan_mask(key: str) -> bool:
        """In a folder of masks, and without a given mask of its own: a mask whose frame is gone."""
        return (any(shape.fullmatch(key) for shape in mask_folders)
                and not (spec.masks.reads_given and mask_keys[key][0] in found_keys))

    listed = [info for info in listed if not is_mask(info.key)]  # a mask is not a frame
    orphans = {info.key for info in listed if is_orphan_mask(info.key)} if mask_folders else set()
    return InputListing([info for info in listed if info.key not in orphans], mask_keys,
                        {info.key: info.etag for info in found}, sorted(orphans),
                        {frame: key for frame, key in misformatted.items() if frame not in mask_files})


def check_run_is_newest(table: pa.Table, context: JobContext) -> None:
    """Rows are ordered by run id, which is a start time: a run from a clock behind would be taken for older."""
    newest_run = pc.max(table["run_id"]).as_py()
    if newest_run is not None and newest_run >= context.run_id:
        raise JobError(f"this run's id {context.run_id} does not sort after run {newest_run} of job "
                       f"{context.spec.name!r}: this machine's clock is behind the clock of the one that started that "
                       "run (or that one's was ahead); set them right (NTP) and run again, or this run's rows would "
                       "be taken for older")


@dataclass
class FramesToLeave:
    """Which frames a run leaves alone: done with this input, masks and config (or given up on), and not to redo."""

    spec: JobSpec
    listing: InputListing
    past: History
    exhausted: set[tuple[str, str]]  # (frame, ETag) failed max_attempts times: left alone until it changes
    redo: frozenset[str]

    def masks_unchanged(self, key: str) -> bool:
        """A mask added, edited or removed since the frame's newest row is a change (a row that read no mask
        file, or predates the ETag columns, records none: nothing to compare)."""
        recorded = self.past.mask_etags.get(key, (None, None))
        if recorded == (None, None):
            return True
        masks, etags = self.spec.masks, self.listing.mask_etags
        keys = self.listing.mask_keys.get(key) or [mask_key_for(pattern, key) for pattern in masks.file_patterns]
        current = (etags.get(keys[0], "") if masks.reads_given else None,  # keys: a video frame's are not listed
                   etags.get(keys[1], "") if masks.protect else None)
        return all(was is None or was == now for was, now in zip(recorded, current))

    def still_held(self, key: str, etag: str) -> bool:
        """A frame held for a setting (SettingNeededError) that the spec still does not give: reading it again
        would hold it again (its input, masks and config as they were), at the cost of a read, a detection and, for
        a master in Glacier, a restore request each night."""
        setting, given, detected = self.past.held.get((key, etag), (None, None, None))
        if setting == "masks.orientation":
            return self.spec.masks.orientation is None  # "stored" hashes as unset did: the hash cannot tell
        if setting == "masks.max_given":  # not in the hash either: it changes no output
            return given is not None and given > self.spec.masks.max_given
        if setting == "masks.max_detected":
            return detected is not None and detected > self.spec.masks.max_detected
        return False

    def skip(self, key: str, etag: str) -> bool:
        return ((key, etag) in self.past.done or (key, etag) in self.exhausted or self.still_held(key, etag)) \
            and self.masks_unchanged(key) and key not in self.redo


def _still_tasks(stills: list[ObjectInfo], leave: FramesToLeave) -> list[dict]:
    """Tasks for the stills to restore, and for those that fail at once for another input's output name."""
    spec, past = leave.spec, leave.past
    neighbours = neighbour_keys([info.key for info in stills], spec.sequence.window)
    pending = {info.key for info in stills if not leave.skip(info.key, info.etag)}
    if spec.uses_neighbours:  # what a frame became depends on its neighbours: one new or rescanned redoes them too
        rescanned = {info.key for info in stills if info.key in pending and past.etags.get(info.key) != info.etag}
        pending |= {info.key for info in stills if rescanned.intersection(neighbours[info.key])
                    and (info.key, info.etag) not in leave.exhausted}  # one given up stays given up
    tasks = [{
        "input_key": info.key,
        "input_size": info.size,
        "input_etag": info.etag,
        "input_version_id": info.version_id,
        "frame_indices": None,
        "neighbour_keys": neighbours[info.key],
        "audited_frames": [info.key] if info.key in past.audited else [],
    } for info in stills if info.key in pending]
    refused = [task for task in _refuse_shared_outputs(tasks, stills, spec.output_format)
               if (task["input_key"], task["input_etag"]) not in leave.exhausted]  # given up: already on record
    return tasks + refused


ARCHIVE_CHECKS = 32  # originals in an archival class checked at once when planning (one HEAD each)


def waiting_in_archive(storage: Storage, originals: list[ObjectInfo]) -> dict[str, str]:
    """Originals in an archival storage class that cannot be read now → `archived` or `restoring` (see
    `Storage.archive_state`): planning leaves them out, so a night spends one HEAD on each instead of a worker's GET
    (and Ray's start, when nothing else is to do)."""
    archival = [info for info in originals if info.storage_class in ARCHIVAL_CLASSES]
    if not archival:
        return {}

    def state(info: ObjectInfo) -> str | None:
        try:
            return storage.archive_state(info.key)
        except StorageError:  # not known now: a worker's read records what storage says
            return None

    with ThreadPoolExecutor(ARCHIVE_CHECKS) as pool:
        states = list(pool.map(state, archival))
    return {info.key: state for info, state in zip(archival, states) if state}


def _archive_reason(storage_class: str, state: str) -> str:
    if state == "restoring":
        return (f"its original is being restored from archival storage ({storage_class}): the first run after "
                "the restore completes reads it")
    return (f"its original is in archival storage ({storage_class}) and not restored: restore it (S3 "
            "RestoreObject, or the job's archive_restore) and the next run reads it")


def ask_back_archived(context: JobContext, plan: Plan) -> None:
    """Ask the plan's archived originals back (`archive_restore`), so the first run after their restore completes
    reads them; each asked one counts as being restored from now on, and one that could not be asked stays
    archived, with the reason in `plan.not_asked_back`."""
    settings = context.spec.archive_restore
    waiting = [frame for frame in plan.archived if not frame["restoring"]]

    def ask(frame: dict) -> str | None:
        try:
            context.input_storage.request_restore(frame["input_key"], frame["input_version_id"], settings.days,
                                                  settings.tier)
        except StorageError as error:
            return str(error)
        return None

    with ThreadPoolExecutor(ARCHIVE_CHECKS) as pool:
        errors = list(pool.map(ask, waiting))
    for frame, error in zip(waiting, errors):
        if error is None:
            frame.update(restoring=True, error=_archive_reason(frame["storage_class"], "restoring"), recorded=False)
    plan.asked_back = errors.count(None)
    plan.not_asked_back = [error for error in errors if error is not None]


def _refuse_misplaced_inputs(tasks: list[dict], listed: list[ObjectInfo], output_format: str) -> None:
    """Fail at once (`plan_error`) the frames a film format cannot be written from, and inputs that lie where the
    job keeps its own files: outputs mirror input keys, so they would write over them."""
    if output_format in ("dpx", "exr"):  # film formats are written back into their own format only: say so
        wanted = output_format.upper()  # before a frame of another one is decoded, detected and restored
        for task in tasks:
            source = _FORMAT_BY_EXTENSION.get(posixpath.splitext(task["input_key"])[1].lower(), "")
            if source != wanted and not task.get("plan_error"):
                task["plan_error"] = (f"{output_format} output needs a {wanted} input (this frame is named as "
                                      f"{source or 'another format'}): write it as png or tiff")
    videos = {frames_folder(info.key): info.key for info in listed if is_video(info.key)}
    for task in tasks:
        key, folder = task["input_key"], task["input_key"].split("/", 1)[0]
        if task.get("plan_error"):
            continue
        if folder in OWN_OUTPUT_FOLDERS and "/" in key:
            task["plan_error"] = (f"{folder}/ is where a job's output keeps its {OWN_OUTPUT_FOLDERS[folder]}: an "
                                  "input there would write over them; rename the input's folder")
        elif task["frame_indices"] is None and key.startswith(tuple(videos)):
            folder = next(prefix for prefix in videos if key.startswith(prefix))
            task["plan_error"] = (f"the frames of the video {videos[folder]!r} are written to {folder}: an input "
                                  "there would write over one of them; rename the input's folder")


def plan_job(context: JobContext, redo: frozenset[str] = frozenset()) -> Plan:
    """What is new, changed or failed, plus the frames in `redo` (input keys: outputs that failed verification)."""
    spec = context.spec
    listing = list_input(context)
    table = read_manifests(context.output_storage, spec.name)
    check_run_is_newest(table, context)
    past = history(table, context.config_hash)
    exhausted = {frame for frame, attempts in past.failures.items() if 0 < spec.max_attempts <= attempts}
    leave = FramesToLeave(spec, listing, past, exhausted, redo)
    stills = [info for info in listing.frames if not is_video(info.key)]
    tasks = _still_tasks(stills, leave)
    videos = [info for info in listing.frames if is_video(info.key)]
    recorded = _recorded_frames(table, [info.key for info in videos])  # for both uses
    videos_done = {info.key: _video_done(info, leave.skip, recorded[info.key]) for info in videos}
    to_read = {task["input_key"] for task in tasks if not task.get("plan_error")}
    to_read |= {key for key, done in videos_done.items() if done is None}
    waiting = waiting_in_archive(context.input_storage, [info for info in listing.frames if info.key in to_read])
    tasks = [task for task in tasks if task["input_key"] not in waiting]
    frames = len(stills)
    frames_done = frames - len(tasks) - sum(info.key in waiting for info in stills)
    gone = []  # the frames of videos replaced by shorter ones, beyond their new ends
    for info in listing.frames:
        done = videos_done.get(info.key)
        if info.key in waiting:  # a video in archival storage is not probed (a GET): one frame, as if unreadable
            frames += 1
        elif done is not None:  # given up, or known complete: not read again
            frames, frames_done = frames + done, frames_done + done
            if not leave.skip(info.key, info.etag):  # complete at its newest count, which a shorter copy set
                gone += _frames_beyond(recorded[info.key], done)
        elif is_video(info.key):
            video_tasks, count, count_done = _video_tasks(info, context.input_storage, leave.skip,
                                                          spec.sequence.window, past.audited)
            tasks += video_tasks
            frames, frames_done = frames + count, frames_done + count_done
            if not (video_tasks and video_tasks[0]["frame_indices"] == []):  # probed: its count is known
                gone += _frames_beyond(recorded[info.key], count)
    _refuse_misplaced_inputs(tasks, listing.frames, spec.output_format)
    listed_etags = {info.key: info.etag for info in listing.frames}
    given_up = sorted(key for key, etag in exhausted
                      if listed_etags.get(split_frame_key(key)[0]) == etag and leave.masks_unchanged(key))
    planned = {key for task in tasks for key in _frame_keys(task)}  # a held frame beside a rescanned one is read
    held = sorted(key for key, etag in past.held if listed_etags.get(split_frame_key(key)[0]) == etag
                  and split_frame_key(key)[0] not in waiting and leave.skip(key, etag) and key not in planned)
    repairing = sorted(redo.intersection(planned))
    # a corrupt scan deleted, or replaced under another name: its failure must not keep an alert on for good
    withdrawn = sorted({key for key in past.not_restored if split_frame_key(key)[0] not in listed_etags} | set(gone))
    reasons = {info.key: _archive_reason(info.storage_class, waiting[info.key])
               for info in listing.frames if info.key in waiting}
    archived = [{"input_key": info.key, "input_size": info.size, "input_etag": info.etag,
                 "input_version_id": info.version_id, "storage_class": info.storage_class, "error": reasons[info.key],
                 "restoring": waiting[info.key] == "restoring",
                 "recorded": past.skipped.get(info.key) == (info.etag, reasons[info.key])}
                for info in listing.frames if info.key in waiting]
    return Plan(tasks=tasks, listed=frames, already_done=frames_done - len(given_up) - len(held),
                bytes_to_read=sum({task["input_key"]: task["input_size"] for task in tasks}.values()),  # a video once
                given_up=given_up, held=held, repairing=repairing, orphan_masks=listing.orphan_masks,
                misformatted_masks=listing.misformatted_masks,
                withdrawn=withdrawn, archived=archived)


# ---------------------------------------------------------------------------------------------- stages

def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _frame_columns(frame: Frame, mask: np.ndarray) -> dict:
    height, width, channels = frame.pixels.shape
    return {
        "pixels": frame.pixels.tobytes(),
        "height": height,
        "width": width,
        "channels": channels,
        "dtype": frame.pixels.dtype.str,
        "alpha": None if frame.alpha is None else frame.alpha.tobytes(),
        "infrared": None if frame.infrared is None else frame.infrared.tobytes(),
        "source_format": frame.format,
        "source_mode": frame.mode,
        "min_is_white": frame.min_is_white,
        "tiff_compression": frame.tiff_compression,
        "icc_profile": frame.icc_profile,
        "exif": frame.exif,
        "xmp": frame.xmp,
        "iptc": frame.iptc,
        "png_text": json.dumps(frame.png_text) if frame.png_text else None,
        "png_colour": frame.png_colour,
        "dpi": list(frame.dpi) if frame.dpi else None,
        "resolution_per_cm": frame.resolution_per_cm,
        "orientation": frame.orientation,
        "mask": mask.astype(np.uint8).tobytes(),
        "masked_fraction": float(mask.mean()),
        **(frame.columns() if isinstance(frame, FilmFrame) else {"film_header": None, "film_source": None}),
    }


def _pixels(row: dict) -> np.ndarray:
    return np.frombuffer(row["pixels"], dtype=np.dtype(row["dtype"])).reshape(row["height"], row["width"], row["channels"])


def _mask(row: dict, column: str = "mask") -> np.ndarray:
    return np.frombuffer(row[column], dtype=np.uint8).reshape(row["height"], row["width"]).astype(bool)


def _restore_mask(row: dict) -> np.ndarray:
    """What the restorer fills: the mask, less the pixels temporal fill already copied from neighbours."""
    return _mask(row, "mask" if row["restore_mask"] is None else "restore_mask")


_TURNS = {2: "mirrored left to right", 3: "turned 180°", 4: "mirrored top to bottom",
          5: "mirrored along its diagonal", 6: "turned 90° clockwise", 7: "mirrored along its other diagonal",
          8: "turned 90° anticlockwise"}  # how a viewer shows a frame of each EXIF orientation


def _read_mask(context: JobContext, pattern: str, input_key: str, frame: Frame, required: bool,
               etags: dict[str, str | None], field: str) -> np.ndarray | None:
    """The mask file the pattern names for this frame, on its stored pixels, or None when there is none (and none
    is required). The ETag of what was read goes into `etags[field]` ("" for no file) before the mask is checked,
    so a frame that fails on a bad mask is tried again once the mask is fixed.

    A frame with an EXIF Orientation is shown turned: a mask drawn in an editor is most likely drawn on that view,
    one made by a program on the stored pixels. Guessing wrong restores clean pixels and leaves the damage, so
    `masks.orientation` must say which (until it does, such a frame is skipped). "displayed" takes both files as
    a viewer shows them: a mask saved with an orientation of its own is turned by it first."""
    mask_key = mask_key_for(pattern, input_key)
    inverted = context.spec.masks.invert and field == "mask_etag"  # the damage masks; protect masks as they are
    try:
        data, info = context.mask_storage.read(mask_key)
    except NoSuchObjectError:
        etags[field] = ""
        if required:
            raise FrameError(f"no mask at {mask_key!r} (masks.required is true)") from None
        return None
    etags[field] = info.etag
    orientation, drawn = frame.orientation, context.spec.masks.orientation
    try:
        mask = decode_mask(data, context.spec.max_pixels, displayed=drawn == "displayed", inverted=inverted)
    except FrameError as error:
        raise FrameError(f"mask {mask_key!r}: {error}") from None
    if orientation != 1 and drawn is None:
        readings = _readings(data, mask, frame, context.spec.max_pixels, inverted)
        if not readings:  # whichever the spec says, it would fail on its size: say so now
            raise FrameError(f"mask {mask_key!r} is {mask.shape[1]}x{mask.shape[0]}, and the frame is "
                             f"{frame.pixels.shape[1]}x{frame.pixels.shape[0]} as stored, turned or not")
        raise SettingNeededError(f"this frame is shown {_TURNS[orientation]} (EXIF orientation {orientation}): say "
                                 f"whether its mask {mask_key!r} is drawn on the picture as shown (masks.orientation: "
                                 "displayed) or on the pixels as stored (masks.orientation: stored)",
                                 "masks.orientation", readings if field == "mask_etag" else
                                 {f"protect-{reading}": mask for reading, mask in readings.items()})
    if drawn == "displayed":
        mask = as_stored(mask, orientation)
    height, width = frame.pixels.shape[:2]
    if mask.shape != (height, width):
        turned = " (as stored: masks.orientation is displayed)" if drawn == "displayed" and orientation != 1 else ""
        raise FrameError(f"mask {mask_key!r} is {mask.shape[1]}x{mask.shape[0]}{turned}, frame is {width}x{height}")
    return mask


def _readings(data: bytes, stored: np.ndarray, frame: Frame, max_pixels: int, inverted: bool) -> dict[str, np.ndarray]:
    """A turned frame's mask read each way masks.orientation offers, on the stored pixels, where it fits the frame:
    pictures of both show the reviewer which lines up with the damage."""
    shape = frame.pixels.shape[:2]
    displayed = as_stored(decode_mask(data, max_pixels, displayed=True, inverted=inverted), frame.orientation)
    return {reading: mask for reading, mask in (("displayed", displayed), ("stored", stored)) if mask.shape == shape}


@functools.cache
def _detector(name: str, weights: str | None = None):
    """Built once per worker process, not once per frame."""
    from .detect import build_detector

    return build_detector(name, **({"weights": weights} if weights else {}))


def frame_mask(context: JobContext, input_key: str, frame: Frame, motion: Callable[[], tuple | None],
               recorded: dict[str, str | float | None]) -> np.ndarray:
    """Given ∪ detected (given-else-detect: detected only where no mask is given), grown by `dilate`, minus what the
    user protects and the frame's `border`: the exact set of pixels that may change.

    `motion` gives the frame's neighbours motion-compensated onto it (see `_motion`), for a temporal detector.
    What the frame's row records of its masks goes into `recorded` as it is found: the ETags of the mask files as
    they are read, so a frame that fails on its mask records which version failed, and the shares its given mask
    marks and the detector flags, so a frame held for either (masks.max_given, masks.max_detected) is read again
    only once the spec allows that share; and the kinds of damage it holds (`census`).
    """
    from .detect import refine_mask

    settings = context.spec.masks
    pixels = to_view(frame.pixels, LOG_SCAN) if context.spec.reads_log(frame.format) else frame.pixels
    shape = pixels.shape[:2]
    mask = np.zeros(shape, dtype=bool)
    given = None
    if settings.reads_given:
        given = _read_mask(context, settings.pattern, input_key, frame, settings.required, recorded, "mask_etag")
        if given is not None:
            recorded["given_fraction"] = float(given.mean())
            drawn, other = (("white on black", "white on black: masks.invert: false") if settings.invert else (
                "black on white, as an editor's layer mask shows it", "black on white: masks.invert: true"))
            _hold_if_too_much(recorded["given_fraction"], "masks.max_given", settings.max_given, "its mask marks",
                              f"most likely a mask drawn the other way round (the damage {drawn}), which would "
                              "repaint all but the damage, so it is held unchanged for review; if so, invert this "
                              f"file, or, if every mask of the job is drawn so, read them all {other}; if the frame "
                              "is that damaged, raise masks.max_given", {"given": given})
            mask |= given
    detects = settings.source in ("detect", "both") or (settings.source == "given-else-detect" and given is None)
    if detects:
        detector = _detector(settings.detector, settings.detector_weights)
        if context.detector_sha256 and detector.info["sha256"] != context.detector_sha256:
            raise FrameError(f"masks.detector_weights: this worker's file has sha256 {detector.info['sha256']}, not "
                             f"the {context.detector_sha256} the job checked: install the same weights on every node")
        if detector.infrared and frame.infrared is None:
            raise FrameError(f"masks.detector infrared: this {frame.format} frame has no infrared channel"
                             " (expected an RGBI TIFF: RGB plus an unspecified extra sample, as film scanners write)")
        ran = settings.detector
        if detector.temporal:
            compensated = motion()
            detected = detector.detect(pixels, compensated)
            if compensated is None:  # a side missing or another shot's: a folder's end, a cut, a failed or odd frame
                ran = "classical"  # its single-frame fallback is what ran
        else:
            detected = detector(frame.infrared if detector.infrared else pixels)
        detected = refine_mask(detected, min_area=settings.min_area)
        mask |= detected
    marked = mask  # the damage as marked: its kinds are counted before dilate widens every stroke alike
    if settings.dilate:
        mask = refine_mask(mask, dilate=settings.dilate)
    if settings.protect:
        protected = _read_mask(context, settings.protect, input_key, frame, False, recorded, "protect_etag")
        if protected is not None:
            mask &= ~protected
            marked = marked & ~protected
    if settings.border:  # the frame's edges, protected alike
        if 2 * settings.border >= min(shape):
            raise FrameError(f"masks.border {settings.border} px leaves nothing of this {shape[1]}x{shape[0]} frame "
                             "to restore: give frames this small a job of their own")
        inside = np.zeros(shape, dtype=bool)
        inside[settings.border:-settings.border, settings.border:-settings.border] = True
        mask &= inside
        marked = marked & inside
    if detects:
        recorded["detected_fraction"] = float((detected & mask).mean())  # what protect leaves of it
        recorded["detector"] = ran
        _hold_if_too_much(recorded["detected_fraction"], "masks.max_detected", settings.max_detected,
                          "the detector flagged", "more likely lettering, stars or fine lines than damage, so it is "
                          "held unchanged for review; if it is damage, raise masks.max_detected, else give its mask "
                          "(masks.source: given) or protect what must stay (masks.protect)",
                          {"detected": detected & mask})
    recorded.update(census(marked))
    return mask


def _hold_if_too_much(share: float, setting: str, limit: float, found: str, likely: str,
                      review: dict[str, np.ndarray]) -> None:
    """Hold a frame whose mask covers more than `limit` of it. Archive damage covers a few percent of a frame; far
    more detected is most likely content the detector takes for damage (a book cover's lettering, a night sky's
    stars, a fence's pickets), and far more given most likely a mask drawn inverted. Either way a restore would
    paint out the picture: a person looks first, and the spec says what then."""
    if share > limit:
        raise SettingNeededError(f"{found} {100 * share:.2f} % of the frame, more than {setting} ({100 * limit:g} %): "
                                 f"{likely}", setting, review)


MAX_REASON = 2000  # characters of a failure reason kept in the manifest: some errors quote a whole input


class SettingNeededError(FrameError):
    """A frame the job's spec does not yet say how to treat: no fault of the frame, so not one to give up on; and
    not one to read again every night, as only the spec or its masks can change the answer. `setting` names what
    the spec must say (the manifest's `held_for`); `review`, the masks a person must look at to say it, on the stored
    pixels, by reading (pictures.REVIEW_READINGS)."""

    def __init__(self, message: str, setting: str, review: dict[str, np.ndarray]):
        super().__init__(message)
        self.setting = setting
        self.review = review


def not_restored(error: Exception) -> dict:
    """The status and reason of a frame that could not be restored.

    Errors about the object itself (corrupt, truncated, a missing key, one too long or too large) fail it, and a
    frame that keeps failing is given up after `max_attempts`. What is no fault of the frame makes it `skipped`,
    never given up, so that a few bad nights do not retire a reel: storage that could not serve it (throttled,
    failing, unreachable, full, denying access, in an archival class) and any other error a library raised on it
    (an overflow, an allocation it could not have, a module missing on one worker), tried again every run: one
    hostile file must not stop a night's run, nor a broken install give up the archive; and a setting the spec
    still lacks for it (`held_for`), tried again once the spec gives it (`FramesToLeave.still_held`)."""
    expected = isinstance(error, (StorageError, FrameError))
    skipped = isinstance(error, (StorageUnavailableError, SettingNeededError)) or not expected
    status = "skipped" if skipped else "failed"
    reason = (str(error) if expected else f"{type(error).__name__}: {error}").strip()  # OpenCV's end in a newline
    return {"status": status, "error": reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "…",
            "held_for": error.setting if isinstance(error, SettingNeededError) else None}


def _frame_row(context: JobContext, row: dict, frame: Frame, neighbours: list[np.ndarray] = (),
               n_previous: int = 0) -> dict:
    """The row of one decoded frame with its mask; a frame-level problem (its mask) fails only this frame."""
    thumb = _original_thumb(context, row["input_key"], frame)  # timed as reading: made from the decoded original
    started = time.perf_counter()
    motion = _motion(frame.pixels, list(neighbours), n_previous)
    recorded = {"mask_etag": None, "protect_etag": None, "given_fraction": None, "detected_fraction": None,
                "detector": None}
    try:
        mask = frame_mask(context, row["input_key"], frame, motion, recorded)
    except SettingNeededError as error:
        return {**row, **recorded, **not_restored(error), "held_pictures": _held_pictures(context, row["input_key"],
                                                                                          frame, error.review)}
    except Exception as error:  # noqa: BLE001 - the frame's failure (not_restored), not the run's
        return {**row, **recorded, **not_restored(error)}
    columns = _frame_columns(frame, mask)
    if context.spec.masks.temporal_fill:
        columns.update(_fill_from_neighbours(frame.pixels, mask, motion() if mask.any() else None))
    return {**row, **columns, **recorded, "original_thumb": thumb, "mask_seconds": time.perf_counter() - started}


def _original_thumb(context: JobContext, key: str, frame: Frame) -> bytes | None:
    """The original brought down to the report's thumbnails, as they show it: here, before temporal fill and the
    restorer replace its pixels, is the last stage that holds it; the write stage makes the thumbnails. None when
    it cannot be made: the report then makes that frame's from the input."""
    try:
        return shrink(as_shown(frame.pixels, frame.orientation, context.spec.reads_log(frame.format)),
                      THUMB_SIZE).tobytes()
    except Exception as error:  # noqa: BLE001 - a picture is never a reason to fail a frame
        logger.warning("%s: its thumbnails are left to the report: %s", key, error)
        return None


def _held_pictures(context: JobContext, key: str, frame: Frame, review: dict[str, np.ndarray]) -> list[dict] | None:
    """The pictures of a frame held for review (`pictures.review_set`): the report shows them beside the reason, so a
    person can say what the spec must say without fetching the master. Made here, as only here are the frame and
    the masks that held it at hand; held frames are not read again, so this is their one chance. None when they
    cannot be made."""
    try:
        original = shrink(as_shown(frame.pixels, frame.orientation, context.spec.reads_log(frame.format)), REVIEW_SIZE)
        masks = {reading: as_displayed(mask, frame.orientation) for reading, mask in review.items()}
        pictures = review_set(original, masks, REVIEW_QUALITY, frame.icc_profile, frame.pixels.shape[2])
    except Exception as error:  # noqa: BLE001 - a picture is never a reason to fail a frame
        logger.warning("%s: its review pictures could not be made: %s", key, error)
        return None
    return [{"name": name, "jpeg": jpeg} for name, jpeg in pictures.items()]


def _motion(pixels: np.ndarray, neighbours: list[np.ndarray], n_previous: int) -> Callable[[], tuple | None]:
    """The neighbours motion-compensated onto the frame, estimated on first use and at most once: optical flow is
    the costliest step of both temporal detection and temporal fill, and they share it."""
    from .detect.temporal import compensated

    return functools.cache(lambda: compensated(pixels, neighbours, n_previous))


def _fill_from_neighbours(pixels: np.ndarray, mask: np.ndarray, frames: tuple | None) -> dict:
    """Masked pixels on which the motion-compensated neighbours agree, copied from them; the restorer gets the rest.

    Film dirt is on one frame only, so its neighbours hold the real picture; the mask written beside the output
    stays the whole mask, since every pixel in it may have changed.
    """
    from .detect.temporal import temporal_fill

    filled, rest = temporal_fill(pixels, mask, frames)
    return {"pixels": filled.tobytes(), "restore_mask": rest.astype(np.uint8).tobytes(),
            "temporal_fill_fraction": float((mask & ~rest).mean())}


def _still_neighbours(context: JobContext, row: dict, decoded: dict[str, np.ndarray | None]
                      ) -> tuple[list[np.ndarray], int]:
    """Decoded neighbour frames for a temporal detector or temporal fill (previous first), and how many come
    before the frame.

    `decoded` holds the batch's frames by key, so consecutive frames share their decodes; a neighbour that cannot
    be read is left out (it is reported as its own frame's failure, not this one's), and so is one of another size
    or layout (another shot, not this frame's picture).
    """
    if not context.spec.uses_neighbours:
        return [], 0
    for key in row["neighbour_keys"]:
        if key not in decoded:
            try:
                decoded[key] = decode_frame(context.input_storage.get(key), context.spec.max_pixels).pixels
            except Exception:  # noqa: BLE001 - a neighbour that cannot be read is one the frame goes without
                decoded[key] = None
    shape = decoded[row["input_key"]].shape
    keys = [key for key in row["neighbour_keys"] if decoded[key] is not None and decoded[key].shape == shape]
    before = frame_order(row["input_key"])
    return [decoded[key] for key in keys], sum(frame_order(key) < before for key in keys)  # the sequence's order


def _video_rows(context: JobContext, row: dict, data: bytes) -> list[dict]:
    """One row per wanted frame of a video chunk, in order; frames the decoder never yields fail with the reason."""
    from .video import iter_video_frames, probe_video

    info = probe_video(data)  # raises FrameError for a broken file or one without a video stream
    check_pixel_limit(info.width, info.height, context.spec.max_pixels, "each video frame")
    wanted = row["frame_indices"]
    if not wanted:
        raise FrameError(f"video {row['input_key']!r}: no frames could be planned")
    window = context.spec.sequence.window if context.spec.uses_neighbours else 0
    first, last = max(0, wanted[0] - window), min(info.frames - 1, wanted[-1] + window)
    decoded = {frame.index: frame.pixels for frame in iter_video_frames(data, first, last + 1, info=info)}
    base = {**row, "input_frames": info.frames, "frame_rate": str(info.fps) if info.fps else None}
    rows = []
    for i in wanted:
        key = video_frame_key(row["input_key"], i)
        seconds = float((info.pts[i] - info.pts[0]) * info.time_base) if i < info.frames else None
        timed = {**base, "input_key": key, "frame_time": seconds}
        if i not in decoded:
            rows.append({**timed, "status": "failed", "error": f"frame {i} of {info.frames} could not be decoded"})
            continue
        before = [decoded[j] for j in range(i - window, i) if j in decoded]
        after = [decoded[j] for j in range(i + 1, i + window + 1) if j in decoded]
        frame = Frame(pixels=decoded[i], alpha=None, format="VIDEO", mode="RGB", icc_profile=None, exif=None)
        rows.append(_frame_row(context, timed, frame, before + after, len(before)))
    return rows


@contextlib.contextmanager
def _warnings_named(key: str):
    """A decoder's warnings (Pillow's "Corrupt EXIF data", "Possibly corrupt TIFF"), logged with the frame they are
    about: printed bare, a night's log of thousands of frames cannot say which file to look at."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:  # a frame that then fails to decode most needs them
            for message in dict.fromkeys(str(warning.message) for warning in caught):  # once each, in order
                logger.warning("%s: %s", key, message)


def _kept_jpeg(spec: JobSpec, frame: Frame, row: dict) -> bool:
    """A JPEG with nothing masked, written as JPEG: its output is its own bytes with the provenance comment
    (`jpeg_with_provenance`), not a new encoding, which would change every pixel a little and grow the file."""
    return row["status"] == "ok" and not row["masked_fraction"] and frame.format == "JPEG" \
        and spec.output_format == "jpeg"


def load_frames(batch: pa.Table, context: JobContext) -> Iterator[pa.Table]:
    """Read, checksum, decode and attach the mask; a bad frame becomes a failed row and the batch goes on. Yields
    the frames a batch at a time: a video chunk is many, which then spread over the workers (`FRAME_BLOCK_BYTES`)
    and are not all held at once."""
    rows = []
    size = context.spec.batch_size
    decoded: dict[str, np.ndarray | None] = {}  # this batch's frames by key, for temporal neighbours
    for row in batch.to_pylist():
        started = time.perf_counter()
        out = {**row, "status": "ok", "error": None}
        try:
            if row["plan_error"]:
                raise FrameError(row["plan_error"])
            data, info = context.input_storage.read(row["input_key"])
            # Record what was really read: the object may have changed since it was listed.
            out.update(input_etag=info.etag, input_version_id=info.version_id, input_size=info.size,
                       input_sha256=hashlib.sha256(data).hexdigest())
            if row["frame_indices"] is None:
                with _warnings_named(row["input_key"]):
                    frame = decode_frame(data, context.spec.max_pixels)
                    out["caption"] = read_caption(frame.iptc, frame.xmp, frame.exif, frame.png_text)
                if context.spec.reads_log(frame.format) and frame.pixels.dtype != np.uint16:
                    raise FrameError(f"transfer: log reads 16-bit scans (printing density codes scaled to 16 bits); "
                                     f"this {frame.format} frame is {frame.bit_depth}-bit: give it its own job with "
                                     "transfer: display")
                decoded[row["input_key"]] = frame.pixels
                check_encodable(frame, lossless_format(frame.format, context.spec.output_format))  # before restoring
                loaded = [_frame_row(context, out, frame, *_still_neighbours(context, row, decoded))]
                if _kept_jpeg(context.spec, frame, loaded[0]):
                    loaded[0]["source_jpeg"] = data
            else:
                loaded = _video_rows(context, out, data)
        except Exception as error:  # noqa: BLE001 - the frame's failure (not_restored), not the run's
            # a video chunk that cannot be read fails its own frames; a row keyed by the video itself means that
            # the whole video could not be planned.
            keys = [video_frame_key(row["input_key"], index) for index in row["frame_indices"] or []]
            loaded = [{**out, "input_key": key, **not_restored(error)} for key in keys or [row["input_key"]]]
        # reading and decoding, shared among a video chunk's frames; finding each frame's mask is its own
        seconds = (time.perf_counter() - started - sum(r.get("mask_seconds") or 0.0 for r in loaded)) / len(loaded)
        rows += [{**frame_row, "read_seconds": seconds} for frame_row in loaded]
        while len(rows) >= size:
            yield pa.Table.from_pylist(rows[:size], schema=FRAME_SCHEMA)
            rows = rows[size:]
    if rows:
        yield pa.Table.from_pylist(rows, schema=FRAME_SCHEMA)


def deepest_fill(mask: np.ndarray) -> float | None:
    """How deep the restorer reconstructs: the largest distance from a filled pixel to the nearest kept one (a
    scratch's fill is a pixel or two from the picture; a tear's, tens). Where it is large, the fill is invented
    rather than continued, and a person should look; None where nothing is filled."""
    import cv2

    if not mask.any():
        return None
    if mask.all():  # nothing kept to measure from: the whole frame is invented
        return float(max(mask.shape))
    return float(cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).max())


class RestoreFrames:
    """One per actor: the restorer (and its weights) is loaded once and serves every batch."""

    def __init__(self, context: JobContext):
        # Pinned to the weights the driver checked and the manifest records: a node whose install holds other
        # weights refuses to start instead of restoring with them.
        settings = replace(context.spec.restorer, weights_sha256=context.weights_sha256)
        self.restorer = build_restorer(settings, threads=max(1, int(context.spec.workers.cpus)))
        if context.spec.workers.gpus and getattr(self.restorer, "device", None) is not None \
                and self.restorer.device.type != "cuda":  # a torch build or driver that sees no GPU: say so
            raise RestorerError(f"workers.gpus is {context.spec.workers.gpus}, but this worker's torch sees no CUDA "
                                "device (a CPU build of torch, or a GPU driver older than its CUDA)")
        self.worker = _worker_name()
        self.spec = context.spec

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [row for row in rows if row["status"] == "ok"]
        started = time.perf_counter()
        try:
            views = [self._view(row) for row in todo]
            filled = self.restorer.restore_batch(views, [_restore_mask(row) for row in todo])
            restored = [self._codes(row, view, self._grained(row, fill))
                        for row, view, fill in zip(todo, views, filled)]
        except Exception:  # noqa: BLE001 - one bad frame must not fail its batch-mates: retry one by one
            restored = [self._restore_one(row) for row in todo]
        seconds = (time.perf_counter() - started) / max(1, len(todo))
        for row, pixels in zip(todo, restored):
            if isinstance(pixels, str):
                row.update(status="failed", error=pixels, pixels=None)
            else:
                # what the mask allowed is not what changed: a fill may keep a value, and a neighbour's copy is a
                # change (temporal fill copies only where it changes the frame)
                filled = (pixels != _pixels(row)).any(axis=2).mean()
                row["changed_fraction"] = float(filled) + (row["temporal_fill_fraction"] or 0.0)
                row["deepest_fill_px"] = deepest_fill(_restore_mask(row)) if filled else None  # none filled
                row["pixels"] = pixels.tobytes()
            row["restore_seconds"] = seconds
            row["worker"] = self.worker
        return pa.Table.from_pylist(rows, schema=FRAME_SCHEMA)

    def _view(self, row: dict) -> np.ndarray:
        """What the restorer sees: a log scan's view, else the pixels themselves."""
        return to_view(_pixels(row), LOG_SCAN) if self.spec.reads_log(row["source_format"]) else _pixels(row)

    def _codes(self, row: dict, view: np.ndarray, filled: np.ndarray) -> np.ndarray:
        """The frame's pixels with the restorer's changes to `view`, which `_view` gave it."""
        return restore_codes(_pixels(row), view, filled, LOG_SCAN) if self.spec.reads_log(row["source_format"]) \
            else filled

    def _grained(self, row: dict, filled: np.ndarray) -> np.ndarray:
        """The restorer's output with the frame's film grain in its fill, where the job asks for it: not in what
        temporal fill copied from neighbours, which carries their real grain. Seeded by the frame's key, so a rerun
        writes the same bytes."""
        if not self.spec.regrains(row["source_format"]):
            return filled
        return regrain(filled, _restore_mask(row), seed=row["input_key"])

    def _restore_one(self, row: dict) -> np.ndarray | str:
        try:
            view = self._view(row)
            return self._codes(row, view, self._grained(row, self.restorer(view, _restore_mask(row))))
        except Exception as error:  # noqa: BLE001 - recorded as the frame's failure reason
            return f"restorer {self.restorer.name} failed: {type(error).__name__}: {error}"


def provenance(context: JobContext, row: dict) -> dict[str, str]:
    """Deterministic, timestamp-free metadata linking an output to its manifest row."""
    return {
        "Software": SOFTWARE,
        PROVENANCE_KEY: json.dumps({
            "id": provenance_id(row["input_key"], row["input_etag"], context.config_hash),
            "input_key": row["input_key"],
            "input_sha256": row["input_sha256"],
            "restorer": context.spec.restorer.name,
            "weights_sha256": context.weights_sha256,
            "config_hash": context.config_hash,
            "masked_fraction": round(row["masked_fraction"], 6),
        }, sort_keys=True),
    }


def put_or_adopt(storage: Storage, key: str, data: bytes, content_type: str,
                 storage_class: str | None = None) -> ObjectInfo:
    """Outputs are deterministic: an identical object already there (left by a crashed run, or moved to an archival
    class by a lifecycle rule) is adopted, not rewritten. S3 names an object put whole by its MD5 (its ETag), which
    tells without reading it back."""
    existing = storage.head(key)
    if existing is None or existing.size != len(data):
        return storage.put(key, data, content_type=content_type, storage_class=storage_class)
    if existing.etag == hashlib.md5(data, usedforsecurity=False).hexdigest():
        return existing
    try:
        same = hashlib.sha256(storage.get(key)).digest() == hashlib.sha256(data).digest()
    except ArchivedObjectError:  # archived, and its ETag is no MD5 (put in parts, or encrypted with KMS)
        same = False
    return existing if same else storage.put(key, data, content_type=content_type, storage_class=storage_class)


def _mask_source(source: str, row: dict) -> str:
    """given-else-detect as it went for the frame: `given` (its own mask) or `detect` (the damage found); the
    spec's source where the frame stopped before either."""
    if source != "given-else-detect":
        return source
    return "detect" if row["detected_fraction"] is not None else "given" if row["given_fraction"] is not None \
        else source


def write_outputs(batch: pa.Table, context: JobContext) -> pa.Table:
    """Encode and store outputs and masks; returns manifest rows (no pixels travel further)."""
    spec = context.spec
    rows = []
    for row in batch.to_pylist():
        started = time.perf_counter()
        out = {
            "job": spec.name, "run_id": context.run_id,
            "input_key": row["input_key"], "input_size": row["input_size"], "input_etag": row["input_etag"],
            "input_version_id": row["input_version_id"], "input_sha256": row["input_sha256"],
            "input_frames": row["input_frames"], "caption": row["caption"],
            "frame_rate": row["frame_rate"], "frame_time": row["frame_time"],
            "mask_source": _mask_source(spec.masks.source, row), "masked_fraction": row["masked_fraction"],
            "changed_fraction": row["changed_fraction"], "deepest_fill_px": row["deepest_fill_px"],
            **{name: row[name] for name in CENSUS_FIELDS.names},
            "mask_etag": row["mask_etag"], "protect_etag": row["protect_etag"],
            "given_fraction": row["given_fraction"], "detected_fraction": row["detected_fraction"],
            "held_for": row["held_for"],
            "temporal_fill_fraction": row["temporal_fill_fraction"],
            # what found the damage, where a detector ran on the frame (given-else-detect: not on a frame's own mask;
            # temporal: classical, its fallback, on a frame without a neighbour on each side)
            "detector": row["detector"],
            "detector_sha256": context.detector_sha256 if row["detected_fraction"] is not None else None,
            "restorer": spec.restorer.name, "weights_sha256": context.weights_sha256,
            "config_hash": context.config_hash, "software": SOFTWARE, "status": row["status"], "error": row["error"],
            "width": row["width"], "height": row["height"],
            "read_seconds": row["read_seconds"], "mask_seconds": row["mask_seconds"],
            "restore_seconds": row["restore_seconds"],
            "worker": row["worker"],
        }
        if row["status"] == "ok":
            try:
                out.update(_write_one(context, row))
            except Exception as error:  # noqa: BLE001 - the frame's failure (not_restored), not the run's
                out.update(not_restored(error))
        elif row["held_pictures"]:
            _write_held_pictures(context, row)
        out["write_seconds"] = time.perf_counter() - started
        out["finished_at"] = datetime.now(timezone.utc)
        rows.append(out)
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


EXACT_FORMATS = ("png", "tiff")  # outputs that decode to the very pixels encoded


def _write_one(context: JobContext, row: dict) -> dict:
    pixels = _pixels(row)
    alpha = None
    if row["alpha"] is not None:
        alpha = np.frombuffer(row["alpha"], dtype=pixels.dtype).reshape(row["height"], row["width"])
    infrared = None
    if row["infrared"] is not None:
        infrared = np.frombuffer(row["infrared"], dtype=pixels.dtype).reshape(row["height"], row["width"])
    frame = Frame(pixels=pixels, alpha=alpha, format=row["source_format"], mode=row["source_mode"],
                  icc_profile=row["icc_profile"], exif=row["exif"], dpi=tuple(row["dpi"]) if row["dpi"] else None,
                  resolution_per_cm=row["resolution_per_cm"], infrared=infrared, xmp=row["xmp"], iptc=row["iptc"],
                  png_text=json.loads(row["png_text"]) if row["png_text"] else None, png_colour=row["png_colour"],
                  min_is_white=bool(row["min_is_white"]), tiff_compression=row["tiff_compression"])
    mask = _mask(row)
    if frame.premultiplied and mask.any():  # a fill mixes neighbours' samples: one may not exceed its own alpha
        frame.pixels = pixels = pixels.copy()
        pixels[mask] = np.minimum(pixels[mask], alpha[mask][:, None])
    if frame.mode == "1" and mask.any():  # a bilevel scan (line art, a typescript) stays black and white
        frame.pixels = pixels = pixels.copy()
        pixels[mask] = np.where(pixels[mask] >= 128, 255, 0).astype(pixels.dtype)
    if row["film_header"]:
        frame = FilmFrame.from_columns(frame, row["film_header"], row["film_source"])
    fmt = lossless_format(row["source_format"], context.spec.output_format)
    if row["source_jpeg"] is not None:
        data = jpeg_with_provenance(row["source_jpeg"], provenance(context, row))
    else:
        data = encode_frame(frame, pixels, fmt, text=provenance(context, row), jpeg_quality=context.spec.jpeg_quality)
    output_key = output_key_for(row["input_key"], fmt)
    if output_key != planned_output_key(row["input_key"], context.spec.output_format) \
            and key_matches(output_key, context.spec.include) and context.input_storage.head(output_key) is not None:
        raise FrameError(f"it holds {row['source_format']} data, which its name does not say, so its output would "
                         f"be {output_key!r}, which is the name (and the output) of another input; rename it to say "
                         "its format, or set output_format")
    stored = put_or_adopt(context.output_storage, output_key, data, CONTENT_TYPES[fmt],
                          context.spec.output_storage_class)
    result = {
        "output_key": output_key, "output_sha256": hashlib.sha256(data).hexdigest(),
        "output_version_id": stored.version_id, "output_format": fmt,
        "bit_depth": 8 if fmt == "jpeg" else frame.bit_depth,
        "mask_key": None, "mask_sha256": None,
        # only a TIFF output carries the infrared plane on (unchanged); an archivist must know when it is gone
        "infrared": None if infrared is None else ("kept" if fmt == "tiff" else "dropped"),
    }
    mask_key = f"{MASK_PREFIX}/{row['input_key']}.png"
    if mask.any():
        encoded = encode_mask(mask)
        result.update(mask_key=mask_key, mask_sha256=hashlib.sha256(encoded).hexdigest())
        put_or_adopt(context.output_storage, mask_key, encoded, CONTENT_TYPES["png"], context.spec.output_storage_class)
    elif row["input_key"] in (row["audited_frames"] or ()):  # the earlier audit mask would say it was repainted
        context.output_storage.delete(mask_key)
    _write_thumbs(context, row, pixels if fmt in EXACT_FORMATS else None, data, mask, result["output_sha256"])
    return result


def _write_thumbs(context: JobContext, row: dict, pixels: np.ndarray | None, data: bytes, mask: np.ndarray,
                  output_sha256: str) -> None:
    """The frame's report thumbnails, the same as the report would make from the files just written, made while
    they are in memory: the report then reads no original, output or mask again for them. `pixels`: the restored
    pixels, None where the output format does not hold them as they are (jpeg loses some; dpx and exr store codes
    whose view is taken again): then the output's bytes are decoded, as the report would, with no read. Video
    frames and film scans are handled alike: their original is the one the load stage decoded, as the report's.
    A picture is never a reason to fail a frame: one not made here is left to the report, which makes it."""
    if row["original_thumb"] is None:
        return
    try:
        restored = pixels if pixels is not None else decode_frame(data, context.spec.max_pixels).pixels
        orientation = row["orientation"]
        restored = as_shown(restored, orientation, context.spec.reads_log(row["source_format"]))
        width, height = fit(restored.shape[1], restored.shape[0], THUMB_SIZE)  # the size `_original_thumb` made
        original = np.frombuffer(row["original_thumb"], dtype=np.uint8).reshape(height, width, 3)
        shown_mask = as_displayed(mask, orientation) if mask.any() else None  # the audit mask, when one is written
        store_pictures(context.output_storage, pictures_prefix(context.spec.name), "thumbs",
                       pictures_name(row["input_sha256"], output_sha256, "thumbs"),
                       picture_set(original, shown_mask, restored, THUMB_QUALITY, row["icc_profile"]))
    except Exception as error:  # noqa: BLE001 - a picture is never a reason to fail a frame
        logger.warning("%s: its thumbnails are left to the report: %s", row["input_key"], error)


def _write_held_pictures(context: JobContext, row: dict) -> None:
    """A held frame's review pictures (`_held_pictures`), where the report finds them (`held_pictures_name`)."""
    try:
        name = held_pictures_name(row["input_key"], row["input_sha256"], row["mask_etag"], row["protect_etag"],
                                  context.config_hash, row["held_for"])
        store_pictures(context.output_storage, pictures_prefix(context.spec.name), "held", name,
                       {picture["name"]: picture["jpeg"] for picture in row["held_pictures"]})
    except Exception as error:  # noqa: BLE001 - a picture is never a reason to fail a frame
        logger.warning("%s: its review pictures are not written: %s", row["input_key"], error)


# ---------------------------------------------------------------------------------------------- driver

IO_TASK_CPUS = 0.5  # each load and write task: decoding and encoding are real CPU work


def _check_resources(spec: JobSpec) -> None:
    """Refuse up front a pool that could never be scheduled, instead of a job that waits forever."""
    import ray

    available = ray.cluster_resources()
    needed = {"CPU": spec.workers.count * spec.workers.cpus + 2 * IO_TASK_CPUS,
              "GPU": spec.workers.count * spec.workers.gpus}
    for resource, amount in needed.items():
        if amount > available.get(resource, 0):
            raise JobError(
                f"workers: {spec.workers.count} worker(s) of {spec.workers.cpus:g} CPU and {spec.workers.gpus:g} GPU, "
                f"plus one load and one write task of {IO_TASK_CPUS:g} CPU, need {amount:g} {resource}; "
                f"the Ray cluster has {available.get(resource, 0):g}")


def open_job(spec: JobSpec) -> JobContext:
    """Storages, weights and config hash of a new run: everything but the plan."""
    input_storage, output_storage, mask_storage = open_job_storages(spec)
    _, weights_sha256 = check_weights(spec.restorer)
    detector_sha256 = _check_detector_weights(spec)
    return JobContext(spec=spec, input_storage=input_storage, output_storage=output_storage,
                      mask_storage=mask_storage, run_id=new_run_id(),
                      config_hash=spec.config_hash(weights_sha256, detector_sha256),
                      weights_sha256=weights_sha256, detector_sha256=detector_sha256)


def config_hash_now(spec: JobSpec) -> str:
    """The config hash a run of the spec would write here, from its weights files' bytes alone (no model loaded, as
    `restore status` needs); raises RestorerError or OSError where a file is missing or not the one pinned."""
    from .models.weights import file_sha256

    _, weights_sha256 = resolve_weights(spec.restorer)
    detector = _detector_weights(spec)
    return spec.config_hash(weights_sha256, file_sha256(detector) if detector else None)


def _detector_weights(spec: JobSpec) -> Path | None:
    """The learned detector's weights file the spec's job reads; None where it runs no learned detector."""
    if spec.masks.source == "given" or spec.masks.detector != "learned":
        return None
    from .detect.learned import SHIPPED_WEIGHTS

    return Path(spec.masks.detector_weights) if spec.masks.detector_weights else SHIPPED_WEIGHTS


def _check_detector_weights(spec: JobSpec) -> str | None:
    """The learned detector's weights sha256, loaded once on the driver: a bad file stops the job before any work."""
    path = _detector_weights(spec)
    if path is None:
        return None
    from .detect.learned import load_detector_net
    from .models.weights import WeightsError

    try:
        return load_detector_net(path)[1]["sha256"]
    except WeightsError as error:
        raise JobError(f"masks.detector_weights: {error}") from None


def _frame_keys(task: dict) -> list[str]:
    """The frame keys a task restores: a still's own, or those of a video chunk's frames."""
    if task["frame_indices"] is None:
        return [task["input_key"]]
    return [video_frame_key(task["input_key"], index) for index in task["frame_indices"]]


def frames_to_repair(spec: JobSpec) -> frozenset[str]:
    """The frames whose output or mask `restore verify` finds missing or altered (every output is read)."""
    from .verify import FRAME_PROBLEMS, verify

    report = verify(spec.output, spec.name, spec.endpoint_url)
    return frozenset(problem.key for problem in report.problems if problem.kind in FRAME_PROBLEMS)


def prepare(spec: JobSpec, repair: bool = False) -> tuple[JobContext, Plan]:
    """A run's context and what is left to do, without taking the job's lease (dry runs, tests)."""
    context = open_job(spec)
    return context, plan_job(context, frames_to_repair(spec) if repair else frozenset())


ProgressCallback = Callable[[int, int, int], None]  # (frames done, frames planned, failures so far)


def start_ray() -> None:
    """Join the Ray cluster there is, or start a local instance, unless this process already did.

    Ray puts the driver's working directory on its workers' import path. From a folder that holds a checkout of
    this project (a `restore/` folder that is not the package itself), workers would import that folder instead
    of the package: so Ray is started from the folder that holds the package."""
    import ray

    if ray.is_initialized():
        return
    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        ray.init(configure_logging=False, log_to_driver=False, include_dashboard=False)
    finally:
        os.chdir(here)
    handler = signal.getsignal(signal.SIGTERM)  # None where one was set outside Python: left as it is
    if threading.current_thread() is threading.main_thread() and handler is not None:
        # Ray's core worker puts Abseil's failure handler in front of Python's for SIGTERM: it logs a stack trace
        # as if the driver had crashed, and aborts the process (exit 134) 3 s later, whatever a stopped run still
        # has to commit. Python's handler (Ray's: SystemExit) is put back in its place. (A Ray this process
        # started otherwise, before, keeps Abseil's.)
        signal.signal(signal.SIGTERM, handler)


MAX_BLOCKS = 1000  # Ray Data blocks a run's tasks are cut into, at most


FRAME_BLOCK_BYTES = 4 * 1024 ** 2  # decoded frames per Ray Data block: one large frame, a few small ones. Ray's
# default (128 MiB) put a video chunk's or a batch of small frames' rows in one block, which one worker restores


def block_rows(tasks: int, batch_size: int) -> int:
    """Tasks per Ray Data block: one batch each, the finest spread over workers, up to MAX_BLOCKS blocks; past
    that, whole batches more. Each block costs the driver a put into the object store and its bookkeeping, which
    for a first run over a whole collection in blocks of one batch came to minutes and gigabytes before any frame
    was read. The rows of a block's frames reach the manifest and the progress line as its write finishes, which is
    why blocks stay one batch while their count allows."""
    batches = -(-tasks // batch_size)
    return batch_size * max(1, -(-batches // MAX_BLOCKS))


def new_result(context: JobContext, plan: Plan, interrupted: bool = False) -> RunResult:
    """A run's result before any frame came back."""
    return RunResult(run_id=context.run_id, manifest_prefix=run_prefix(context.spec.name, context.run_id),
                     planned=plan.frames, already_done=plan.already_done, interrupted=interrupted)


def run_job(context: JobContext, plan: Plan, progress: ProgressCallback | None = None, lease=None) -> RunResult:
    import ray
    from ray.data import ActorPoolStrategy

    spec = context.spec
    result = new_result(context, plan)
    started = time.perf_counter()
    context.output_storage.remove_orphaned_temp_files()
    writer = ManifestWriter(context.output_storage, spec.name, context.run_id, lease)
    base = {"job": spec.name, "run_id": context.run_id, "config_hash": context.config_hash, "software": SOFTWARE,
            "finished_at": datetime.now(timezone.utc)}
    planned_rows = [{**base, "input_key": key, "status": WITHDRAWN, "error": "its original is no longer among the "
                     "job's frames (gone from the input, left out by include or exclude, or a frame its video no "
                     "longer has)"} for key in plan.withdrawn]
    planned_rows += [{**base, **{name: frame[name] for name in ("input_key", "input_size", "input_etag",
                                                               "input_version_id", "error")}, "status": "skipped"}
                     for frame in plan.archived if not frame["recorded"]]
    if planned_rows:
        writer.commit(planned_rows)
    if not plan.tasks:
        return result
    start_ray()
    _check_resources(spec)
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False  # our own progress line replaces Ray's
    data_context.target_max_block_size = FRAME_BLOCK_BYTES
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    tasks = pa.Table.from_pylist(plan.tasks, schema=TASK_SCHEMA)
    rows = block_rows(tasks.num_rows, spec.batch_size)
    blocks = [tasks.slice(start, rows) for start in range(0, tasks.num_rows, rows)]
    # no more workers than batches of frames (a video's chunk is many): a night's few new frames start no actor (nor
    # load a model) that would idle, and Ray Data warns of a pool it cannot fill
    workers = min(spec.workers.count, -(-plan.frames // spec.batch_size))
    dataset = (
        ray.data.from_arrow(blocks)
        .map_batches(load_frames, fn_kwargs={"context": context}, batch_size=spec.batch_size,
                     batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
        .map_batches(RestoreFrames, fn_constructor_kwargs={"context": context}, batch_size=spec.batch_size,
                     batch_format="pyarrow", compute=ActorPoolStrategy(size=workers),
                     num_cpus=spec.workers.cpus, num_gpus=spec.workers.gpus)
        .map_batches(write_outputs, fn_kwargs={"context": context}, batch_size=spec.batch_size,
                     batch_format="pyarrow", num_cpus=IO_TASK_CPUS)
    )
    pending: list[dict] = []
    done = failed = 0
    committing = None  # the rows of the part being committed, until the commit returns
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            for row in batch.to_pylist():
                pending.append(row)
                result.counts[row["status"]] = result.counts.get(row["status"], 0) + 1
                if row["status"] in NOT_RESTORED:
                    result.not_restored.append((row["input_key"], row["error"]))
                if row["status"] == "ok" and not row["masked_fraction"]:
                    result.nothing_masked += 1
                    result.no_mask_file += row["mask_etag"] == ""
                done += 1
                failed += row["status"] == "failed"
            if len(pending) >= spec.commit_every:
                committing, parts = pending, writer.parts_written
                writer.commit(committing)
                pending, committing = [], None
            if progress:
                progress(done, result.planned, failed)  # counted once, when the result was made
    except BaseException as error:
        # Ray Data's threads stop now: left running, one that touched Ray after the command shut it down ended the
        # process with exit 1, where a stop exits 130
        try:
            batches.close()
        except Exception as closing:  # noqa: BLE001 - it must not keep the finished rows from their commit below
            logger.warning("Ray Data did not stop cleanly: %s", closing)
        if committing is not None and writer.parts_written > parts:  # stopped as its commit returned
            pending = []  # else a stop during a commit leaves its rows pending: committed below, once
        if not is_stop(error):
            _commit_before_failing(writer, pending)
            raise
        writer.commit(pending)  # the frames finished before the stop are kept: a rerun does not redo them
        # a stop after the last frame came back ends a complete run
        result.interrupted = sum(result.counts.values()) < result.planned
        result.seconds = time.perf_counter() - started
        raise RunInterrupted(result) from error
    writer.commit(pending)
    result.seconds = time.perf_counter() - started
    return result


def _commit_before_failing(writer: ManifestWriter, rows: list[dict]) -> None:
    """The frames finished before a run failed are kept, unless committing is what failed: then the run's own
    error is the one to hear of."""
    try:
        writer.commit(rows)
    except Exception as error:  # noqa: BLE001 - logged; the run's error follows
        logger.warning("%d finished frames were not committed: %s", len(rows), error)


COMPACT_AFTER_PARTS = 64  # a snapshot once this many parts have been committed since the last one


def run(spec: JobSpec, progress: ProgressCallback | None = None,
        repair: bool = False) -> tuple[JobContext, Plan, RunResult]:
    """One run of a job as users start it: under the job's lease, planned after taking it (so it sees every
    committed row), a machine-readable summary next to the manifests, and compaction when parts pile up.

    `repair`: first verify every output against the manifests (reading them all), and restore again the frames
    whose output or mask is missing or altered, besides what is new, changed or failed.
    """
    from .lease import LeaseError, acquire

    context = open_job(spec)
    with acquire(context.output_storage, spec.name, run_id=context.run_id) as lease:
        check_no_other_job_runs_there(context.output_storage, spec.name)
        # before planning, which then reads one snapshot instead of every part; and so also after nights that
        # were stopped part-way, which never reach a run's end
        compact(context.output_storage, spec.name, context.run_id, lease, min_parts=COMPACT_AFTER_PARTS)
        plan = plan_job(context, frames_to_repair(spec) if repair else frozenset())
        if spec.archive_restore and plan.archived:
            ask_back_archived(context, plan)
        if plan.tasks:  # replaced when the run ends; left as it is, it tells `status` the run was killed or failed
            write_run_summary(context, plan, new_result(context, plan), status="started")
        try:
            result = run_job(context, plan, progress, lease)
        except BaseException as stop:  # `status` tells the job is not done, though every committed row is ok
            if not is_stop(stop):
                raise
            # stopped outside the frames' loop (while Ray started, before any frame was read): no less stopped
            stopped = stop.result if isinstance(stop, RunInterrupted) else new_result(context, plan, interrupted=True)
            try:
                lease.check()
                write_run_summary(context, plan, stopped)
            except (LeaseError, StorageError) as error:  # the stop, not this, is what the caller must hear of
                logger.warning("job %s: the stopped run's summary was not written: %s", spec.name, error)
            raise
        # frames left failed keep a scheduler's alert on, with the reason; and a run with nothing left to do after
        # a stopped one says the job is whole again
        if result.planned or plan.given_up or plan.held or plan.withdrawn or plan.archived \
                or _last_run_was_stopped(context):
            write_run_summary(context, plan, result)
    return context, plan, result


def _last_run_was_stopped(context: JobContext) -> bool:
    last = last_run_summary(context.output_storage, context.spec.name)
    return last is not None and last["status"] in ("interrupted", "started")


def run_summary(context: JobContext, plan: Plan, result: RunResult, status: str | None = None) -> dict:
    """What a run did, for `_summary.json` and `restore run --json`; `status` is failed while any frame is not
    restored (failed or skipped in this run, given up or held before it, or waiting in archival storage),
    interrupted when the run was stopped, and started until the run ends."""
    not_restored = any(result.counts.get(status) for status in NOT_RESTORED) or plan.given_up or plan.held \
        or plan.archived
    status = status or ("interrupted" if result.interrupted else "failed" if not_restored else "ok")
    return {
        "job": context.spec.name, "run_id": result.run_id, "status": status,
        "planned": result.planned, "already_done": result.already_done, "given_up": plan.given_up, "held": plan.held,
        "withdrawn": plan.withdrawn, "waiting_in_archive": len(plan.archived), "asked_back": plan.asked_back,
        "repairing": plan.repairing, "counts": result.counts, "nothing_masked": result.nothing_masked,
        "seconds": round(result.seconds, 3),
        "frames_per_second": round(result.frames_per_second, 3), "input": context.spec.input,
        "output": context.spec.output, "restorer": context.spec.restorer.name,
        "weights_sha256": context.weights_sha256, "config_hash": context.config_hash,
    }


def write_run_summary(context: JobContext, plan: Plan, result: RunResult, status: str | None = None) -> str:
    """`_summary.json` beside the run's manifest parts, for schedulers and alerting."""
    key = f"{result.manifest_prefix}/{RUN_SUMMARY}"
    context.output_storage.put(key, json.dumps(run_summary(context, plan, result, status), indent=2).encode(),
                               content_type="application/json")
    return key
