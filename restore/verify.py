"""`restore verify`: check a job's outputs against its manifests, so an archive can prove what it holds.

For the newest manifest row of each frame: an `ok` row's output must exist, hash to the recorded sha256 and carry
provenance metadata that names the same id, input, config and weights as the row; its mask must exist when the
row names one. Failed rows are listed (they are recorded, not broken). Optionally, objects under the output that
no manifest row of the job accounts for are reported too (a stray or planted file), and those that only rows since
superseded name (an output in a format the job no longer writes); and the originals, re-read, must still hash to
the sha256 their outputs were made from (bit rot, or a file replaced without its date changing).
"""
from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from .manifest import (MANIFEST_ROOT, NOT_RESTORED, WITHDRAWN, latest_rows, provenance_id, read_manifests,
                       split_frame_key)
from .frames import PROVENANCE_KEY, TIFF_MAGICS, TIFF_PROVENANCE_TAGS
from .pictures import REPORT_ROOT
from .report import REPORT_KEY
from .storage import (ArchivedObjectError, LocalStorage, NoSuchObjectError, ObjectInfo, Storage, StorageError,
                      open_storage)

# Objects the tools themselves keep under an output besides frames and masks: manifests and leases, and the
# HTML report with its pictures. They are never "unknown".
_OWN_PREFIXES = (f"{MANIFEST_ROOT}/", f"{REPORT_ROOT}/")
_OWN_KEYS = (REPORT_KEY,)


FRAME_PROBLEMS = ("missing_output", "checksum", "provenance", "missing_mask", "mask_checksum")  # `run --repair` redoes
# objects there but not readable until restored from an archival storage class: not checked, and not problems
NOT_READ = ("archived_output", "archived_mask", "archived_original")


@dataclass
class Problem:
    key: str  # the input key of the frame, or the object's key for an unknown object
    kind: str  # missing_output | checksum | provenance | missing_mask | mask_checksum | unknown_object | superseded
    #            | original_changed | missing_original | unreadable_original | no_manifest; or one of NOT_READ
    detail: str

    def as_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "detail": self.detail}


@dataclass
class VerifyReport:
    job: str
    output: str
    frames: int = 0  # frames with a manifest row (newest row each)
    verified: int = 0  # ok rows whose output, checksum, provenance and mask all checked out
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input key, recorded error)
    problems: list[Problem] = field(default_factory=list)
    not_read: list[Problem] = field(default_factory=list)  # in archival storage: there, but not checked

    def add(self, problems: list[Problem]) -> None:
        self.problems.extend(problem for problem in problems if problem.kind not in NOT_READ)
        self.not_read.extend(problem for problem in problems if problem.kind in NOT_READ)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "job": self.job, "output": self.output, "frames": self.frames, "verified": self.verified,
            "failed": [{"input_key": key, "error": error} for key, error in self.failed],
            "problems": [problem.as_dict() for problem in self.problems],
            "not_read": [problem.as_dict() for problem in self.not_read], "ok": self.ok,
        }


def verify(output_uri: str, job: str, endpoint_url: str | None = None, unknown: bool = False,
           threads: int = 8, originals: str | None = None, quick: bool = False) -> VerifyReport:
    """Check every frame of `job` under `output_uri`; `unknown=True` also reports objects no row accounts for;
    `originals` (the job's input) re-reads the originals of restored frames; `quick` only checks that outputs and
    masks are there, from one listing, reading none of them.

    Objects are read in `threads` threads: on S3 the time goes into round trips, not hashing.
    """
    storage = open_storage(output_uri, endpoint_url)
    table = read_manifests(storage, job)
    report = VerifyReport(job=job, output=output_uri)
    if table.num_rows == 0:
        report.problems.append(Problem(job, "no_manifest", f"no manifest rows for job {job!r} under {output_uri}"))
        return report
    rows = latest_rows(table)
    report.frames = len(rows)
    report.failed = [(row["input_key"], row["error"]) for row in rows if row["status"] in NOT_RESTORED]
    ok_rows = [row for row in rows if row["status"] == "ok"]
    listing = list(storage.list(exclude_prefixes=_OWN_PREFIXES)) if quick or unknown else []  # once for both
    if quick:  # a night's check of an archive of millions: a listing is thousands of requests, reading is millions
        check = partial(present_problems, {info.key for info in listing})
    else:
        check = partial(check_row, storage)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for problems in pool.map(check, ok_rows):
            report.add(problems)
            report.verified += not problems
    if unknown:
        named = table.select(["input_key", "run_id", "output_key", "mask_key"]).to_pylist()
        report.add(unknown_objects(listing, named, rows))
    if originals is not None:
        report.add(changed_originals(open_storage(originals, endpoint_url), ok_rows, threads))
    return report


def changed_originals(storage: Storage, rows: list[dict], threads: int) -> list[Problem]:
    """Originals of `ok` rows that no longer hash to the sha256 their output was made from (a video once)."""
    recorded = {split_frame_key(row["input_key"])[0]: row["input_sha256"] for row in rows if row["input_sha256"]}
    # a folder's change is seen by its size and modification time (an S3 object's by its ETag, its content's)
    unseen = ("; if it was edited on purpose, keeping its size and modification time (a caption edit with "
              "`exiftool -P`), runs do not see it: touch the file, and the next run restores it again; if not, it has "
              "rotted or been altered: bring it back from a copy" if isinstance(storage, LocalStorage) else "")

    def check(item: tuple[str, str]) -> Problem | None:
        key, sha256 = item
        try:
            digest = hashlib.sha256(storage.get(key)).hexdigest()
        except NoSuchObjectError as error:
            return Problem(key, "missing_original", f"original {key!r}: {error}")
        except ArchivedObjectError as error:
            return Problem(key, "archived_original", f"original {key!r}: {error}")
        except StorageError as error:  # throttled, denied: there, but not readable now
            return Problem(key, "unreadable_original", f"original {key!r}: {error}")
        if digest != sha256:
            return Problem(key, "original_changed", f"original {key!r} has sha256 {digest}; its output was made "
                                                    f"from {sha256}" + unseen)
        return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return [problem for problem in pool.map(check, sorted(recorded.items())) if problem]


def _mask_problems(storage: Storage, row: dict) -> list[Problem]:
    key, mask_key = row["input_key"], row["mask_key"]
    if not row["mask_sha256"]:
        return [] if storage.head(mask_key) is not None else [Problem(key, "missing_mask", f"mask {mask_key!r} is missing")]
    try:
        digest = hashlib.sha256(storage.get(mask_key)).hexdigest()
    except ArchivedObjectError as error:
        return [Problem(key, "archived_mask", f"mask {mask_key!r}: {error}")]
    except StorageError as error:
        return [Problem(key, "missing_mask", f"mask {mask_key!r}: {error}")]
    if digest != row["mask_sha256"]:
        return [Problem(key, "mask_checksum", f"mask {mask_key!r} has sha256 {digest}, "
                                              f"the manifest records {row['mask_sha256']}")]
    return []


def present_problems(listed: set[str], row: dict) -> list[Problem]:
    """An `ok` row's output and mask missing from a listing of the output."""
    key = row["input_key"]
    problems = [Problem(key, "missing_output", f"output {row['output_key']!r} is missing")
                ] if row["output_key"] not in listed else []
    if row["mask_key"] and row["mask_key"] not in listed:
        problems.append(Problem(key, "missing_mask", f"mask {row['mask_key']!r} is missing"))
    return problems


def check_row(storage: Storage, row: dict) -> list[Problem]:
    """The problems of one `ok` row: its output's presence, checksum and provenance, and its mask's presence and
    checksum (rows from before the mask's sha256 was recorded: presence only)."""
    key = row["input_key"]
    problems = []
    if row["mask_key"]:
        problems += _mask_problems(storage, row)
    try:
        data = storage.get(row["output_key"])
    except ArchivedObjectError as error:
        return problems + [Problem(key, "archived_output", f"output {row['output_key']!r}: {error}")]
    except StorageError as error:
        return problems + [Problem(key, "missing_output", f"output {row['output_key']!r}: {error}")]
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["output_sha256"]:
        problems.append(Problem(key, "checksum", f"output {row['output_key']!r} has sha256 {digest}, "
                                                 f"the manifest records {row['output_sha256']}"))
    mismatch = provenance_mismatch(data, row)
    if mismatch:
        problems.append(Problem(key, "provenance", f"output {row['output_key']!r}: {mismatch}"))
    return problems


def provenance_mismatch(data: bytes, row: dict) -> str | None:
    """Why the file's provenance does not match its manifest row, or None when it does."""
    try:
        text = read_provenance(data)
    except Exception as error:  # noqa: BLE001 - any reader failure means the provenance cannot be read
        return f"provenance unreadable ({type(error).__name__}: {error})"
    if not text or PROVENANCE_KEY not in text:
        return "carries no restore provenance"
    try:
        recorded = json.loads(text[PROVENANCE_KEY])
    except json.JSONDecodeError:
        return "provenance is not valid JSON"
    if not str(text.get("Software", "")).startswith("restore "):
        return f"Software is {text.get('Software')!r}, not restore"
    expected = {"id": provenance_id(row["input_key"], row["input_etag"], row["config_hash"]),
                "input_key": row["input_key"], "input_sha256": row["input_sha256"], "restorer": row["restorer"],
                "weights_sha256": row["weights_sha256"], "config_hash": row["config_hash"]}
    wrong = [f"{name} is {recorded.get(name)!r}, expected {value!r}" for name, value in expected.items()
             if recorded.get(name) != value]
    return "; ".join(wrong) or None


def read_provenance(data: bytes) -> dict[str, str] | None:
    """The provenance text fields an output carries: PNG iTXt, TIFF ProcessingSoftware and ImageHistory, JPEG
    comment, DPX/EXR header. TIFF outputs of earlier versions hold them as a JSON object in ImageDescription."""
    from PIL import Image

    from .film import is_film, read_film_provenance

    if is_film(data):
        return read_film_provenance(data)
    if data[:4] in TIFF_MAGICS:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            text = {name: page.tags[code].value for name, code in TIFF_PROVENANCE_TAGS.items() if code in page.tags}
            description = page.description
        if text:
            return text
        return json.loads(description) if description.startswith("{") else None
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            return dict(image.text)
        comment = image.info.get("comment")
    return json.loads(comment) if comment else None


def unknown_objects(listing: list[ObjectInfo], rows: list[dict], newest: list[dict]) -> list[Problem]:
    """Objects of the output's `listing` that no row of the job (any run) names as its output or mask, and those
    that only older rows of frames since restored name (`newest`: each frame's newest row): left beside the output
    a frame has now, they would pass for a derivative of the collection; and the outputs of a video's frames it no
    longer has (withdrawn). Another frame not restored now keeps its last outputs."""
    restored_now = {row["input_key"] for row in newest if row["status"] == "ok"}
    withdrawn = {row["input_key"] for row in newest  # frames a video replaced by a shorter one no longer has
                 if row["status"] == WITHDRAWN and split_frame_key(row["input_key"])[1] is not None}
    current = {row[name] for row in newest for name in ("output_key", "mask_key") if row[name]}
    known, superseded = set(current), {}
    for row in rows:
        for name in ("output_key", "mask_key"):
            key = row[name]
            if key and key not in current:
                if row["input_key"] in restored_now or row["input_key"] in withdrawn:
                    superseded[key] = row
                else:
                    known.add(key)
    problems = []
    for info in listing:
        if info.key in known or info.key in _OWN_KEYS:
            continue
        if info.key in superseded:
            row = superseded[info.key]
            why = ("the frame has since been withdrawn: it is no longer among the job's frames"
                   if row["input_key"] in withdrawn else "the frame's newest record names other files")
            problems.append(Problem(info.key, "superseded",
                                    f"{info.key!r} was written for {row['input_key']!r} by run {row['run_id']}; {why}"))
        else:
            problems.append(Problem(info.key, "unknown_object", f"{info.key!r} ({info.size} bytes) is in no "
                                                                "manifest row"))
    return problems
