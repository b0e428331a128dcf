"""Parquet manifests: one row per frame per run, committed part by part, never rewritten.

Layout under the output: `_manifests/<job>/<run_id>/part-00000.parquet`. The manifests are the source of truth
for what was done: resume keeps the newest row per frame and skips frames whose newest row is `ok` for the same
input ETag and config hash.
"""
from __future__ import annotations

import io
import secrets
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .storage import Storage

MANIFEST_ROOT = "_manifests"

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
    ("mask_source", pa.string()),  # given | detect | both
    ("detector", pa.string()),  # the detector's name when masks were detected
    ("masked_fraction", pa.float64()),
    ("restorer", pa.string()),
    ("weights_sha256", pa.string()),
    ("config_hash", pa.string()),
    ("status", pa.string()),  # ok | failed | skipped
    ("error", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bit_depth", pa.int8()),
    ("read_seconds", pa.float64()),
    ("restore_seconds", pa.float64()),
    ("write_seconds", pa.float64()),
    ("worker", pa.string()),
    ("finished_at", pa.timestamp("ms", tz="UTC")),
])


def new_run_id() -> str:
    """Sortable by start time, unique across hosts."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def run_prefix(job: str, run_id: str) -> str:
    return f"{MANIFEST_ROOT}/{job}/{run_id}"


class ManifestWriter:
    """Commits rows of one run as numbered Parquet parts; a part is written only after its outputs exist."""

    def __init__(self, storage: Storage, job: str, run_id: str):
        self.storage = storage
        self.prefix = run_prefix(job, run_id)
        self.parts_written = 0

    def commit(self, rows: list[dict]) -> str | None:
        if not rows:
            return None
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        key = f"{self.prefix}/part-{self.parts_written:05d}.parquet"
        self.storage.put(key, buffer.getvalue(), content_type="application/vnd.apache.parquet")
        self.parts_written += 1
        return key


def read_manifests(storage: Storage, job: str) -> pa.Table:
    """Every committed row of a job, all runs; an empty table with the schema when there are none."""
    parts = [info.key for info in storage.list(("*.parquet",), prefix=f"{MANIFEST_ROOT}/{job}/")]
    tables = [pq.read_table(io.BytesIO(storage.get(key))) for key in parts]
    tables = [table.cast(MANIFEST_SCHEMA) for table in tables if table.num_rows]
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def latest_rows(table: pa.Table) -> list[dict]:
    """The newest row per input key: what the archive looks like now."""
    newest: dict[str, dict] = {}
    for row in table.sort_by([("run_id", "ascending"), ("finished_at", "ascending")]).to_pylist():
        newest[row["input_key"]] = row
    return [newest[key] for key in sorted(newest)]


def done_keys(table: pa.Table, config_hash: str) -> set[tuple[str, str]]:
    """(input key, ETag) pairs whose newest row under this config is `ok`: resume skips exactly these."""
    rows = table.filter(pc.equal(table["config_hash"], config_hash))
    return {(row["input_key"], row["input_etag"]) for row in latest_rows(rows) if row["status"] == "ok"}


@dataclass
class JobSummary:
    total: int
    by_status: dict[str, int]
    failures: list[tuple[str, str]]  # (input key, reason)
    runs: int
    last_run: str | None

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "by_status": self.by_status,
            "failures": [{"input_key": key, "error": error} for key, error in self.failures],
            "runs": self.runs,
            "last_run": self.last_run,
        }


def summarize(table: pa.Table) -> JobSummary:
    rows = latest_rows(table)
    runs = sorted(set(table["run_id"].to_pylist()))
    return JobSummary(
        total=len(rows),
        by_status=dict(Counter(row["status"] for row in rows)),
        failures=[(row["input_key"], row["error"]) for row in rows if row["status"] == "failed"],
        runs=len(runs),
        last_run=runs[-1] if runs else None,
    )
