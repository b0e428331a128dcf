"""Parquet manifests: one row per frame per run, committed part by part, never rewritten.

Layout under the output: `_manifests/<job>/<run_id>/part-00000.parquet`. The manifests are the source of truth
for what was done: resume keeps the newest row per frame and skips frames whose newest row is `ok` for the same
input ETag, mask files and config hash (the newest of all configs: going back to an earlier one restores the frame
again).
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import secrets
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from . import __version__
from .condition import KINDS
from .storage import NoSuchObjectError, Storage, StorageError

MANIFEST_ROOT = "_manifests"
SOFTWARE = f"restore {__version__}"  # in every output and manifest row
NOT_RESTORED = ("failed", "skipped")  # the statuses of a frame whose output is not (or no longer) what it should be
WITHDRAWN = "withdrawn"  # the status that closes a frame not restored whose original has left the input
SNAPSHOTS = "_snapshots"  # compacted snapshots: _manifests/<job>/_snapshots/<run_id>.parquet

# What kinds of damage a frame's mask held (restore/condition.py): its regions of each kind, and the share of the
# frame they cover; null where no mask was made (a frame that failed first), and in rows from before these columns
CENSUS_FIELDS = pa.schema([(f"{kind}_{measure}", pa.int32() if measure == "count" else pa.float64())
                           for kind in KINDS for measure in ("count", "fraction")])

MANIFEST_SCHEMA = pa.schema([
    ("job", pa.string()),
    ("run_id", pa.string()),
    ("input_key", pa.string()),
    ("input_size", pa.int64()),
    ("input_etag", pa.string()),
    ("input_version_id", pa.string()),
    ("input_sha256", pa.string()),
    ("input_frames", pa.int32()),  # frames in the input object (a video's count); null for a still image
    ("output_key", pa.string()),
    ("output_sha256", pa.string()),
    ("output_version_id", pa.string()),
    ("output_format", pa.string()),
    ("mask_key", pa.string()),
    ("mask_sha256", pa.string()),  # of the mask written beside the output (every changed pixel, for audit)
    ("mask_source", pa.string()),  # given | detect | both; given-else-detect where neither was reached
    # ETags of the mask files read for the frame ("" = none there), so a mask added or edited later is applied;
    # null where the job reads no such file, and in rows from before these columns existed
    ("mask_etag", pa.string()),  # the given mask (masks.pattern)
    ("protect_etag", pa.string()),  # the protected region (masks.protect)
    ("detector", pa.string()),  # the detector that ran on the frame (temporal's single-frame fallback: classical)
    ("detector_sha256", pa.string()),  # the learned detector's weights, when they found the masks
    ("masked_fraction", pa.float64()),  # of the frame's pixels, those the mask allowed to change
    ("given_fraction", pa.float64()),  # of the frame's pixels, those its given mask marks, where it has one
    ("detected_fraction", pa.float64()),  # of the frame's pixels, those the detector flagged, where it ran
    ("changed_fraction", pa.float64()),  # of the frame's pixels, those whose values did change (copied or filled)
    # how deep the restorer had to reconstruct: the largest distance in pixels from a filled pixel to the nearest
    # kept one (half the widest hole's width); null where it filled nothing, and in rows from before the column
    ("deepest_fill_px", pa.float64()),
    *CENSUS_FIELDS,
    ("temporal_fill_fraction", pa.float64()),  # of the frame, copied from neighbours (masks.temporal_fill); else null
    ("infrared", pa.string()),  # an RGBI scan's infrared plane: kept (TIFF output) | dropped (other formats) | null
    ("restorer", pa.string()),
    ("weights_sha256", pa.string()),
    ("config_hash", pa.string()),
    ("software", pa.string()),  # `restore <version>` that wrote the row: outputs of one config differ across versions
    ("status", pa.string()),  # ok | failed | skipped (no fault of the frame: storage could not serve it, it waits in
    #                           archival storage: tried again every run; or the job must say more: see held_for)
    #                           | withdrawn (not restored, and its original has left the input)
    ("error", pa.string()),
    # a skipped frame held until the spec says more: the setting it waits for (masks.orientation, masks.max_given,
    # masks.max_detected); it is not read again until that setting allows it, or the frame, its masks or the config
    # change
    ("held_for", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bit_depth", pa.int8()),
    ("read_seconds", pa.float64()),  # reading and decoding the input
    ("mask_seconds", pa.float64()),  # finding its mask: reading a given one, detecting, filling from neighbours
    ("restore_seconds", pa.float64()),  # the batch's restore time shared equally among its frames
    ("write_seconds", pa.float64()),
    ("worker", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
    # what the frame's own metadata calls it (IPTC caption, XMP description or title, ImageDescription, a PNG's
    # Description or Title: restore/captions.py), on one line, at most 500 characters; null where it has none.
    # Last, as columns added since 0.7 are: imports that map a CSV's columns by position keep theirs
    ("caption", pa.string()),
    # a video's frames: the video's average frame rate as a fraction ("24", "24000/1001"), and the frame's time in
    # seconds from the video's first frame (its timestamp, so a variable-rate video's gaps stay); null for stills.
    # What a sequence is put back together at: ffmpeg -framerate 24000/1001 -i reel.mkv.frames/%06d.png
    ("frame_rate", pa.string()),
    ("frame_time", pa.float64()),
])


# A video's frames are rows of their own, keyed `reel.mkv#000123`; a row keyed `reel.mkv` is the whole video's
# failure (it could not be read or probed when planned).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mxf")


def is_video(key: str) -> bool:
    return posixpath.splitext(key)[1].lower() in VIDEO_EXTENSIONS


def video_frame_key(video_key: str, index: int) -> str:
    """A video's frames are addressed as `reel.mkv#000123`: one manifest row, output and mask each."""
    return f"{video_key}#{index:06d}"


def split_frame_key(key: str) -> tuple[str, int | None]:
    """(object key, frame index) of a video frame key; (key, None) for a still image."""
    base, sep, index = key.rpartition("#")
    if sep and index.isdigit() and is_video(base):
        return base, int(index)
    return key, None


def new_run_id() -> str:
    """Sortable by start time, unique across hosts."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1000):03d}Z-" + secrets.token_hex(3)


def provenance_id(input_key: str, input_etag: str | None, config_hash: str) -> str:
    """The id an output carries to link it to its manifest row: no timestamp, so reruns write the same bytes."""
    return hashlib.sha256(f"{input_key}\0{input_etag}\0{config_hash}".encode()).hexdigest()[:32]


def run_prefix(job: str, run_id: str) -> str:
    return f"{MANIFEST_ROOT}/{job}/{run_id}"


class ManifestWriter:
    """Commits rows of one run as numbered Parquet parts; a part is written only after its outputs exist."""

    def __init__(self, storage: Storage, job: str, run_id: str, lease=None):
        self.storage = storage
        self.prefix = run_prefix(job, run_id)
        self.lease = lease  # a run that lost its lease to a newer run must not commit (fencing)
        self.parts_written = 0

    def commit(self, rows: list[dict]) -> str | None:
        if not rows:
            return None
        if self.lease is not None:
            self.lease.check()
        key = f"{self.prefix}/part-{self.parts_written:05d}.parquet"
        data = _parquet_bytes(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        self.storage.put(key, data, content_type="application/vnd.apache.parquet")
        self.parts_written += 1
        return key


def _parquet_bytes(table: pa.Table) -> bytes:
    """With a CRC per page: a flipped bit in a manifest would otherwise read as another checksum, status or run id
    (one that sorts as newest for good), and the manifests are what an archive's proof rests on."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_page_checksum=True)
    return buffer.getvalue()


def _read_parquet(storage: Storage, key: str) -> pa.Table:
    """A part or snapshot in today's schema: columns added since it was written read as null, so old ones stay valid."""
    data = storage.get(key)
    try:
        table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as error:  # the manifests are the source of truth: name the part to look at
        raise StorageError(f"manifest part {storage.uri.rstrip('/')}/{key} cannot be read ({error}); move it aside "
                           "and rerun: its frames are restored again") from None
    for column in MANIFEST_SCHEMA:
        if column.name not in table.column_names:
            table = table.append_column(column.name, pa.nulls(table.num_rows, column.type))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def _part_run_id(key: str, job: str) -> str:
    return key[len(f"{MANIFEST_ROOT}/{job}/"):].split("/", 1)[0]


def jobs_in(storage: Storage) -> list[str]:
    """The names of the jobs with manifest rows in this output (a lease alone, from a run that wrote none, is not
    a job's claim on it)."""
    return sorted({info.key.split("/")[1] for info in storage.list(("*.parquet",), prefix=f"{MANIFEST_ROOT}/")
                   if info.key.count("/") >= 2})


RUN_SUMMARY = "_summary.json"  # beside a run's parts; the underscore keeps it out of a Parquet dataset read


def last_run_summary(storage: Storage, job: str) -> dict | None:
    """The summary of the job's newest run that wrote one (run ids sort by start time), or None."""
    keys = [info.key for info in storage.list((RUN_SUMMARY,), prefix=f"{MANIFEST_ROOT}/{job}/")]
    return json.loads(storage.get(keys[-1])) if keys else None


def read_manifests(storage: Storage, job: str) -> pa.Table:
    """What a job's manifests say: the newest snapshot plus every part committed after it (all parts if none).

    An empty table with the schema when there are none.
    """
    snapshot, parts, _ = _manifest_keys(storage, job)
    return _read_tables(storage, ([snapshot] if snapshot else []) + parts)


def _manifest_keys(storage: Storage, job: str) -> tuple[str | None, list[str], list[str]]:
    """(the newest snapshot, the parts it does not cover, every part): what a job's manifests are.

    A snapshot lists the parts it covers (`<snapshot>.parts.json`): any other part is read on top of it, also one
    that a writer whose lease had lapsed committed just after the snapshot was cut, or one a host with a fast
    clock named after it. Snapshots from before those lists cover the parts of the runs up to their own name."""
    keys = [info.key for info in storage.list(("*.parquet",), prefix=f"{MANIFEST_ROOT}/{job}/")]
    snapshots = sorted(key for key in keys if key.startswith(f"{MANIFEST_ROOT}/{job}/{SNAPSHOTS}/"))
    parts = [key for key in keys if key not in snapshots]
    if not snapshots:
        return None, parts, parts
    try:
        covered = set(json.loads(storage.get(_covered_list(snapshots[-1]))))
        return snapshots[-1], [key for key in parts if key not in covered], parts
    except NoSuchObjectError:
        name = snapshots[-1].rsplit("/", 1)[1].removesuffix(".parquet")
        return snapshots[-1], [key for key in parts if _part_run_id(key, job) > name], parts


def _covered_list(snapshot: str) -> str:
    return snapshot.removesuffix(".parquet") + ".parts.json"


def _read_tables(storage: Storage, keys: list[str]) -> pa.Table:
    tables = [table for table in (_read_parquet(storage, key) for key in keys) if table.num_rows]
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def compact(storage: Storage, job: str, run_id: str, lease=None, min_parts: int = 1) -> str | None:
    """Write a snapshot of the job's manifests, named after the run that cuts it: the newest row per (frame, ETag,
    config), plus every failure (they count retry attempts), and the list of the parts it covers; None when fewer
    than `min_parts` parts are not covered yet. New files: parts are never rewritten, and older snapshots stay
    valid. One listing decides and compacts: at scale a listing is thousands of requests."""
    snapshot, parts, every_part = _manifest_keys(storage, job)
    if len(parts) < max(1, min_parts):
        return None
    ordered, newest = _newest(_read_tables(storage, ([snapshot] if snapshot else []) + parts),
                              ["input_key", "input_etag", "config_hash"])
    keep = pc.is_in(pa.array(range(ordered.num_rows), pa.int64()), value_set=newest)
    data = _parquet_bytes(ordered.filter(pc.or_(keep, pc.equal(ordered["status"], "failed"))))
    if lease is not None:
        lease.check()
    key = f"{MANIFEST_ROOT}/{job}/{SNAPSHOTS}/{run_id}.parquet"
    storage.put(_covered_list(key), json.dumps(every_part).encode(), content_type="application/json")  # first: a
    storage.put(key, data, content_type="application/vnd.apache.parquet")  # snapshot is never without
    return key


def _newest(table: pa.Table, keys: list[str]) -> tuple[pa.Table, pa.Array]:
    """(the rows in the order they were written: by run id, then finish time; the positions there of the newest row
    of each `keys` group). Column-wise: a collection's history is millions of rows."""
    ordered = table.sort_by([("run_id", "ascending"), ("finished_at", "ascending")])
    return ordered, _last_positions(ordered, keys)


def _last_positions(ordered: pa.Table, keys: list[str]) -> pa.Array:
    """The position of the last row of each `keys` group in rows already in written order."""
    positions = ordered.select(keys).append_column("_row", pa.array(range(ordered.num_rows), pa.int64()))
    return positions.group_by(keys, use_threads=False).aggregate([("_row", "max")])["_row_max"]


def latest(table: pa.Table) -> pa.Table:
    """The newest row per input key, sorted by key: what the archive looks like now. A whole video's failure is
    gone once a later run restores its frames."""
    ordered, newest = _newest(table, ["input_key"])
    rows = ordered.take(newest)
    keys = rows["input_key"]
    frames = rows.filter(pc.match_substring_regex(keys, r"#\d+$"))
    videos = frames.append_column("_video", pc.replace_substring_regex(frames["input_key"], r"#\d+$", ""))
    restored_after = {video: run for video, run in zip(*(
        videos.group_by("_video", use_threads=False).aggregate([("run_id", "max")]).column(name).to_pylist()
        for name in ("_video", "run_id_max"))) if is_video(video)}
    if restored_after:  # a video row whose frames have rows of a later run
        stale = [key in restored_after and run < restored_after[key]
                 for key, run in zip(keys.to_pylist(), rows["run_id"].to_pylist())]
        rows = rows.filter(pc.invert(pa.array(stale, pa.bool_())))
    return rows.sort_by("input_key")


def latest_rows(table: pa.Table) -> list[dict]:
    """`latest` as dicts."""
    return latest(table).to_pylist()


def write_latest_csv(table: pa.Table, path: str) -> int:
    """Every frame's newest row as CSV, every column, for spreadsheets and collection-management systems, which do
    not read Parquet; returns the rows written. A donor's file name can begin like a formula (`=HYPERLINK(…)`),
    which a spreadsheet would run: such cells begin with an apostrophe, which spreadsheets show as text. UTF-8 with
    a byte-order mark, without which Excel reads "Café" as "CafÃ©"; times in UTC as "2026-11-27 20:57:49", which
    spreadsheets read as times (with a fraction and a "Z" they read text)."""
    rows = latest(table)
    for index, column in enumerate(rows.schema):
        values = rows.column(index)
        if pa.types.is_string(column.type):
            formula = pc.match_substring_regex(values, r"^[=+\-@\t\r]")
            rows = rows.set_column(index, column, pc.if_else(formula, pc.binary_join_element_wise("'", values, ""),
                                                             values))
        elif pa.types.is_timestamp(column.type):
            seconds = values.cast(pa.timestamp("s", column.type.tz), safe=False)  # Arrow's %S has the fraction
            rows = rows.set_column(index, column.name, pc.strftime(seconds, "%Y-%m-%d %H:%M:%S"))
    with open(path, "wb") as written:
        written.write("\ufeff".encode())
        pa_csv.write_csv(rows, written)
    return rows.num_rows


@dataclass
class History:
    """What resume needs to know of one config's past, computed column-wise (`restore bench --plan` times planning)."""

    done: set[tuple[str, str]]  # (input key, ETag) whose newest row is ok, under this config
    failures: dict[tuple[str, str], int]  # (input key, ETag) whose newest row failed → failed attempts so far
    mask_etags: dict[str, tuple[str | None, str | None]]  # input key → (mask_etag, protect_etag) of its newest row
    etags: dict[str, str]  # input key → the input ETag its newest row read
    not_restored: set[str]  # input keys whose newest row of all (any config) is failed or skipped
    audited: set[str]  # input keys whose newest ok row names an audit mask
    skipped: dict[str, tuple[str, str]]  # input key → (ETag, reason) of its newest row of all, when that is skipped
    # (input key, ETag) → (held_for, given_fraction, detected_fraction) of its newest row, when it is held under
    # this config
    held: dict[tuple[str, str], tuple[str, float | None, float | None]]


def history(table: pa.Table, config_hash: str) -> History:
    """A frame counts as done only when its newest row of all, whatever the config, is `ok` under this config.

    The output holds whatever the newest run wrote: after a run with another restorer, going back to the first
    config must restore the frame again, although an older `ok` row under that config exists. Failed attempts
    count under this version only (`_failed_here`).
    """
    rows, positions = _newest(table, ["input_key"])
    newest = rows.take(positions)
    failed = _failed_here(rows)
    failed = failed.filter(pc.equal(failed["config_hash"], config_hash))
    attempts = failed.group_by(["input_key", "input_etag"]).aggregate([("status", "count")])
    counts = dict(zip(zip(attempts["input_key"].to_pylist(), attempts["input_etag"].to_pylist()),
                      attempts["status_count"].to_pylist()))
    done, failures, mask_etags, etags, held = set(), {}, {}, {}, {}
    broken = newest.filter(pc.is_in(newest["status"], value_set=pa.array(NOT_RESTORED)))
    not_restored = set(broken["input_key"].to_pylist())
    waiting = broken.filter(pc.equal(broken["status"], "skipped"))
    skipped = {key: (etag, error) for key, etag, error in zip(
        *(waiting[column].to_pylist() for column in ("input_key", "input_etag", "error")))}
    ok = rows.filter(pc.equal(rows["status"], "ok")).select(["input_key", "mask_key"])  # still in written order
    ok = ok.take(_last_positions(ok, ["input_key"]))
    audited = set(ok.filter(pc.is_valid(ok["mask_key"]))["input_key"].to_pylist())
    for key, status, etag, config, mask_etag, protect_etag, held_for, given, detected in zip(
            *(newest[column].to_pylist() for column in ("input_key", "status", "input_etag", "config_hash",
                                                        "mask_etag", "protect_etag", "held_for", "given_fraction",
                                                        "detected_fraction"))):
        if config != config_hash:
            continue
        mask_etags[key], etags[key] = (mask_etag, protect_etag), etag
        if status == "ok":
            done.add((key, etag))
        elif status == "failed":
            failures[(key, etag)] = counts.get((key, etag), 0)
        elif held_for:
            held[(key, etag)] = (held_for, given, detected)
    return History(done=done, failures=failures, mask_etags=mask_etags, etags=etags, not_restored=not_restored,
                   audited=audited, skipped=skipped, held=held)


@dataclass
class JobSummary:
    total: int
    by_status: dict[str, int]
    failures: list[tuple[str, str]]  # (input key, reason) of every frame not restored: failed or skipped
    runs: int
    last_run: str | None
    damage: dict[str, dict[str, int]]  # by kind (restore/condition.py): regions, and frames holding any, of frames ok
    held: dict[str, str]  # input key → the setting it waits for, of the frames skipped until the spec says more
    # failed frames that failed max_attempts times (as they are now, under the config that last tried them): runs
    # leave them alone until they change, so only a person mends them; None where max_attempts is not known
    given_up: list[str] | None = None
    # frames whose newest row is ok under another config than the spec's now (restorer, its weights, mask or output
    # settings): the next run restores them again; None where the config is not known
    ok_under_other_config: int | None = None

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "by_status": self.by_status,
            "failures": [{"input_key": key, "error": error} for key, error in self.failures],
            "runs": self.runs,
            "last_run": self.last_run,
            "damage": self.damage,
            "held": self.held,
            **({"given_up": self.given_up} if self.given_up is not None else {}),
            **({"ok_under_other_config": self.ok_under_other_config} if self.ok_under_other_config is not None
               else {}),
        }


def summarize(table: pa.Table, max_attempts: int | None = None, config_hash: str | None = None) -> JobSummary:
    """The job as its manifests stand; `max_attempts` and `config_hash`, the spec's, to tell the failed frames runs
    have given up and the frames restored under another config, which the next run restores again."""
    counted = [f"{kind}_count" for kind in KINDS]
    rows = latest(table.select(["input_key", "run_id", "finished_at", "status", "error", "held_for", "input_etag",
                                "config_hash", *counted]))
    runs = pc.unique(table["run_id"]).to_pylist()
    failed = rows.filter(pc.is_in(rows["status"], value_set=pa.array(sorted(NOT_RESTORED))))
    restored = rows.filter(pc.equal(rows["status"], "ok"))
    held = rows.filter(pc.and_(pc.equal(rows["status"], "skipped"), pc.is_valid(rows["held_for"])))
    damage = {kind: {"regions": pc.sum(restored[column]).as_py() or 0,
                     "frames": pc.sum(pc.greater(restored[column], 0)).as_py() or 0}
              for kind, column in zip(KINDS, counted)}
    return JobSummary(
        total=rows.num_rows,
        by_status={item["values"]: item["counts"] for item in pc.value_counts(rows["status"]).to_pylist()},
        failures=list(zip(failed["input_key"].to_pylist(), failed["error"].to_pylist())),
        runs=len(runs),
        last_run=max(runs) if runs else None,
        damage=damage,
        held=dict(zip(held["input_key"].to_pylist(), held["held_for"].to_pylist())),
        given_up=None if max_attempts is None else _given_up(table, rows, max_attempts),
        ok_under_other_config=None if config_hash is None else
        pc.sum(pc.not_equal(restored["config_hash"], config_hash)).as_py() or 0,
    )


def _failed_here(table: pa.Table) -> pa.Table:
    """The failed rows this version wrote: a frame given up after `max_attempts` is tried again once a new version
    is installed, which may read what the old one could not (a 16-bit frame as JPEG, a format it did not know)."""
    return table.filter(pc.and_(pc.equal(table["status"], "failed"), pc.equal(table["software"], SOFTWARE)))


def _given_up(table: pa.Table, newest: pa.Table, max_attempts: int) -> list[str]:
    """Frames whose newest row failed, and which failed `max_attempts` times as they are (input ETag) under that
    row's config and this version: as `plan_job` counts them (`History.failures`, for the job's config now)."""
    if max_attempts == 0:  # retried for ever
        return []
    keys = ["input_key", "input_etag", "config_hash"]
    failed = newest.filter(pc.equal(newest["status"], "failed")).select(keys)
    attempts = _failed_here(table).group_by(keys).aggregate([("status", "count")])
    counted = failed.join(attempts, keys=keys)
    return sorted(counted.filter(pc.greater_equal(counted["status_count"], max_attempts))["input_key"].to_pylist())
