"""Fault injection shared by the reliability tests and tests/reliability_report.py.

    FaultProxy      a threaded HTTP proxy in front of moto's S3 server: transient 500/503/SlowDown answers at a
                    seeded rate, AccessDenied for everything, or a hook that sees each request first (to kill the
                    driver while an output or a manifest part is being uploaded)
    MotoServer      moto's server on a fixed port, so it can be stopped and started again under the same URL
    drive           `python tests/faults.py drive SPEC --kill-at PHASE --nth N`: runs `restore run` in-process and
                    SIGKILLs itself at a phase (input listing, before a manifest commit, mid-write of a manifest
                    part) or has a worker SIGKILL it mid-write of an output file
    check_job       reads a job's manifests and outputs: frames lost, frames duplicated, outputs that differ from
                    an uninterrupted run, orphaned temp files, unreadable manifest parts
    scenarios       each fault as a function returning an Outcome, run by the tests (which assert on it) and by
                    the report (which tabulates it)
    node-loss       `python tests/faults.py node-loss WORKDIR`: a job on a 3-node ray.cluster_utils.Cluster with
                    a worker node removed mid-job (a Cluster cannot share a process with another ray.init)
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import yaml
from PIL import Image

LEASE_TTL_S = 6.0  # driven runs hold the job's lease this long unrenewed (120 s by default), so a resume after
# a SIGKILL waits seconds, not minutes, for the dead run's lease to lapse
MARKER_ENV = "RESTORE_FAULT_RUN"  # set in the environment of a driven run's driver and Ray workers
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- frames

def png_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def scene(seed: int, height: int = 48, width: int = 64, channels: int = 3) -> np.ndarray:
    """A smooth gradient with a little noise: Telea has something to inpaint from."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 3 + y * 2 + seed * 17) % 256
    image = np.stack([(base + 40 * c) % 256 for c in range(channels)], axis=2) + rng.integers(0, 8, (height, width, channels))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image[:, :, 0] if channels == 1 else image


def box_mask(height: int = 48, width: int = 64, heavy: bool = False) -> np.ndarray:
    """A box hole; `heavy` covers half the frame, which keeps the restorer busy (with a large Telea radius)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if heavy:
        mask[height // 8:height * 7 // 8, width // 4:width * 3 // 4] = 255
    else:
        mask[height // 4:height // 2, width // 3:width // 2] = 255
    return mask


def reel(count: int, height: int = 48, width: int = 64, heavy: bool = False) -> dict[str, bytes]:
    """`count` frames under reel/ with a mask each under reel/masks/: key -> bytes."""
    objects = {}
    for index in range(count):
        objects[f"reel/f{index:04d}.png"] = png_bytes(scene(index, height, width))
        objects[f"reel/masks/f{index:04d}.png"] = png_bytes(box_mask(height, width, heavy))
    return objects


SLOW_RESTORER = {"name": "telea", "radius": 15}  # ~0.3 s a 256x256 frame with a heavy mask: batches take a while


def frame_keys(objects: dict[str, bytes]) -> set[str]:
    return {key for key in objects if "/masks/" not in key}


def write_local(root: Path, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_s3(client, bucket: str, prefix: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=prefix + key, Body=data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- S3 on loopback

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's threaded S3 server on a fixed loopback port. Its buckets live in this process's moto backend, so
    they survive a stop and a start: like an S3 service that goes away for a while and comes back."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> "MotoServer":
        from moto.server import ThreadedMotoServer

        for _ in range(50):  # the port may take a moment to be free again after a stop
            try:
                self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
                self._server.start()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"cannot start moto on port {self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


TRANSIENT_FAULTS = (
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "ServiceUnavailable", "Service is unable to handle request."),
    (503, "SlowDown", "Please reduce your request rate."),
)


@dataclass
class ProxyRequest:
    method: str
    bucket: str
    key: str  # the object key, URL-decoded; "" for bucket-level requests (listing)
    query: dict
    headers: dict
    body: bytes

    @property
    def is_listing(self) -> bool:
        return self.method == "GET" and "list-type" in self.query

    @property
    def is_manifest_part(self) -> bool:
        return self.method == "PUT" and "/_manifests/" in f"/{self.key}" and "/part-" in self.key

    @property
    def is_output_put(self) -> bool:
        return self.method == "PUT" and "/_manifests/" not in f"/{self.key}"


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of an S3 endpoint, injecting faults.

    - `fault_rate`: share of requests answered with a transient fault (500 InternalError, 503 ServiceUnavailable,
      503 SlowDown) without reaching the server; a seeded RNG draws them
    - `max_faults`: stop injecting them after this many
    - `fault_after_apply`: share of the faulty answers given *after* the server applied the request (a lost
      response: the client must retry something that already happened)
    - `deny`: an S3 error code ("AccessDenied", "SignatureDoesNotMatch", ...) answered with 403 to everything,
      echoing the access key id in the XML body as AWS does
    - `hook(request) -> None | "drop" | "truncate" | "deny"`: sees every request first; "drop" closes the connection
      unanswered, "truncate" sends the server's answer with only half its body, then closes the connection,
      "deny" answers this request alone with 403 AccessDenied (a bucket policy on one key)
    `requests` logs (method, bucket, key) of every request; `injected` counts faults answered.
    """

    def __init__(self, upstream: str, fault_rate: float = 0.0, seed: int = 0, fault_after_apply: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.fault_rate = fault_rate
        self.fault_after_apply = fault_after_apply
        self.max_faults: int | None = None  # stop injecting transient faults after this many
        self.deny: str | None = None
        self.hook = None
        self.requests: list[tuple[str, str, str]] = []
        self.injected = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # clients hung up on a dropped request: expected
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _read_body(self, handler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _serve(self, handler) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        request = ProxyRequest(handler.command, bucket, key, parse_qs(parts.query, keep_blank_values=True),
                               dict(handler.headers), self._read_body(handler))
        with self._lock:
            self.requests.append((request.method, bucket, key))
            deny = self.deny
            fault = self._rng.random() < self.fault_rate and (self.max_faults is None or self.injected < self.max_faults)
            after_apply = fault and self._rng.random() < self.fault_after_apply
            kind = TRANSIENT_FAULTS[self._rng.randrange(len(TRANSIENT_FAULTS))]
        action = self.hook(request) if self.hook is not None else None
        if action == "drop":
            handler.close_connection = True
            return
        if deny or action == "deny":
            key_id = re.search(r"Credential=([^/]+)/", handler.headers.get("Authorization", ""))
            self._error(handler, 403, deny or "AccessDenied", "Access Denied", key_id.group(1) if key_id else "")
            return
        if fault and not after_apply:
            self._error(handler, *kind)
            return
        status, headers, body = self._forward(request, handler)
        if fault:
            self._error(handler, *kind)
            return
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                handler.send_header(name, value)
        if handler.command == "HEAD":
            handler.send_header("Content-Length", dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
        else:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body[:len(body) // 2] if action == "truncate" else body)
        if action == "truncate":
            handler.close_connection = True

    def _forward(self, request: ProxyRequest, handler) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
            if request.body or request.method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(request.body))
            connection.request(request.method, handler.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _error(self, handler, status: int, code: str, message: str, key_id: str = "") -> None:
        with self._lock:
            self.injected += 1
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                + (f"<AWSAccessKeyId>{key_id}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 {key_id}</StringToSign>"
                   if key_id else "")
                + "<RequestId>FAULT</RequestId></Error>").encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", "0" if handler.command == "HEAD" else str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


class KillOnRequest:
    """A proxy hook that SIGKILLs a driver's process group at the `nth` request matching `match`, then drops
    that request unanswered: the upload or listing it carried never completes."""

    def __init__(self, match, nth: int):
        self.match, self.nth = match, nth
        self.pid: int | None = None
        self.seen = 0
        self.fired = False
        self._lock = threading.Lock()

    def __call__(self, request: ProxyRequest):
        if self.fired or self.pid is None or not self.match(request):
            return None
        with self._lock:
            self.seen += 1
            if self.seen != self.nth:
                return None
            self.fired = True
        kill_group(self.pid)
        return "drop"


# ---------------------------------------------------------------------------------------------- driving the CLI

def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_with_marker(marker: str) -> list[int]:
    """Live processes (a killed run's Ray workers) whose environment carries `marker`."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for_stragglers(marker: str, timeout: float = 90.0) -> None:
    """Ray kills a dead driver's workers; wait for that, as the job's lease would make a real resume wait."""
    deadline = time.monotonic() + timeout
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in processes_with_marker(marker):  # still there: kill them ourselves, they are ours
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class DriverRun:
    returncode: int
    stdout: str
    stderr: str
    killed: bool


def drive(spec_file: Path, ray_address: str, kill_at: str = "none", nth: int = 1, kill_after: float | None = None,
          hook: KillOnRequest | None = None, timeout: float = 300.0) -> DriverRun:
    """Run `restore run SPEC` through this file's driver harness, as its own process group.

    kill_at/nth: the harness kills itself at that phase; kill_after: the test kills it after that many seconds;
    hook: a proxy hook that kills it (given the pid here). Waits for the killed run's Ray workers to be gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        marker = f"{os.getpid()}-{time.monotonic_ns()}"
        env = {**os.environ, "RAY_ADDRESS": ray_address, MARKER_ENV: marker}
        command = [sys.executable, str(HERE / "faults.py"), "drive", str(spec_file), "--kill-at", kill_at,
                   "--nth", str(nth), "--lease-ttl", str(LEASE_TTL_S)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        if hook is not None:
            hook.pid = process.pid
        try:
            stdout, stderr = process.communicate(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            stdout, stderr = process.communicate()
        wait_for_stragglers(marker)
        if process.returncode == 2 and "already running" in stderr and time.monotonic() < deadline:
            continue  # the harness waited its while for the lease; try again
        return DriverRun(process.returncode, stdout, stderr, killed=process.returncode == -signal.SIGKILL)


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _worker_setup() -> None:
    """Runs in each Ray worker of a driven run: with RESTORE_FAULT_OUTPUT_WRITE=N, the worker writing the N-th
    output file stages half its bytes, kills the driver and waits for Ray to kill it (a crash mid-write)."""
    import os
    import signal
    import time

    nth = int(os.environ.get("RESTORE_FAULT_OUTPUT_WRITE", "0"))
    if not nth:
        return
    from restore import storage

    original = storage.LocalStorage._write_temp
    counter = os.environ["RESTORE_FAULT_COUNTER"]

    def write_temp(self, path, data):
        if path.name.startswith("part-"):
            return original(self, path, data)
        index = 1
        while True:  # a counter shared by every worker process: mkdir is atomic
            try:
                os.mkdir(f"{counter}/{index}")
                break
            except FileExistsError:
                index += 1
        if index != nth:
            return original(self, path, data)
        tmp = path.with_name(f"{storage.TEMP_PREFIX}killed-{path.name}")
        tmp.write_bytes(data[: len(data) // 2])
        os.kill(int(os.environ["RESTORE_FAULT_DRIVER_PID"]), signal.SIGKILL)
        time.sleep(600)  # Ray kills a dead driver's workers

    storage.LocalStorage._write_temp = write_temp


def _harness(spec: str, kill_at: str, nth: int, lease_ttl: float) -> int:
    """The `drive` subcommand: `restore run SPEC --quiet` in this process, dying at the requested phase."""
    import tempfile

    import ray

    from restore import cli, lease, manifest, storage

    original_acquire = lease.acquire

    def acquire(storage, job, ttl_s=None, run_id=None):
        """A short TTL, and wait for a killed run's lease to lapse, as a scheduler retrying the job would."""
        deadline = time.monotonic() + 3 * lease_ttl + 30
        while True:
            try:
                return original_acquire(storage, job, ttl_s=lease_ttl, run_id=run_id)
            except lease.LeaseHeldError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    lease.acquire = acquire

    env_vars = {MARKER_ENV: os.environ.get(MARKER_ENV, "")}
    if kill_at == "output-write":
        env_vars.update(RESTORE_FAULT_OUTPUT_WRITE=str(nth), RESTORE_FAULT_DRIVER_PID=str(os.getpid()),
                        RESTORE_FAULT_COUNTER=tempfile.mkdtemp(prefix="restore-fault-"))
    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env_vars, "worker_process_setup_hook": _worker_setup})
    seen = Counter()

    if kill_at == "listing":  # the input listing (not the manifests'), after `nth` objects
        original_list = storage.Storage.list

        def listing(self, patterns=("*",), prefix="", exclude_prefixes=()):
            for info in original_list(self, patterns, prefix, exclude_prefixes):
                if not prefix:
                    seen["listed"] += 1
                    if seen["listed"] == nth:
                        _die()
                yield info

        storage.Storage.list = listing
    elif kill_at == "commit":  # before the nth manifest part: its outputs exist, its rows are not recorded
        original_commit = manifest.ManifestWriter.commit

        def commit(self, rows):
            if rows:
                seen["commit"] += 1
                if seen["commit"] == nth:
                    _die()
            return original_commit(self, rows)

        manifest.ManifestWriter.commit = commit
    elif kill_at == "manifest-write":  # half of the nth manifest part staged, then dead
        original_write_temp = storage.LocalStorage._write_temp

        def write_temp(self, path, data):
            if path.name.startswith("part-"):
                seen["part"] += 1
                if seen["part"] == nth:
                    path.with_name(f"{storage.TEMP_PREFIX}killed-{path.name}").write_bytes(data[: len(data) // 2])
                    _die()
            return original_write_temp(self, path, data)

        storage.LocalStorage._write_temp = write_temp
    elif kill_at not in ("none", "output-write"):
        raise SystemExit(f"unknown phase {kill_at!r}")
    return cli.main(["run", spec, "--quiet"])


# ---------------------------------------------------------------------------------------------- checking a job

@dataclass
class JobCheck:
    frames: int
    lost: list[str]  # inputs whose newest row is not ok
    duplicated: list[str]  # inputs with ok rows in more than one run for the same ETag and config
    ok_rows: int
    failed_rows: int
    unreadable_parts: list[str]
    orphaned_temp_files: list[str]
    differing_outputs: list[str]  # outputs that differ from the uninterrupted run's (or from their manifest sha256)
    runs: int
    errors: dict[str, str] = field(default_factory=dict)  # why each lost input's newest row failed: a red run says why

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.unreadable_parts or self.orphaned_temp_files
                    or self.differing_outputs)


NOT_OUTPUTS = ("_manifests/", "_report/", "report.html")  # run records, which carry run ids and times


def output_digests(storage, exclude=NOT_OUTPUTS) -> dict[str, str]:
    """sha256 of every object in a location: the restored frames and masks of an output, but its run records."""
    return {info.key: sha256(storage.get(info.key)) for info in storage.list(("*",), exclude_prefixes=exclude)}


def check_job(storage, job: str, expected: set[str], reference: dict[str, str] | None = None) -> JobCheck:
    """What the manifests and outputs say about a job that should have restored every key in `expected`."""
    import pyarrow.parquet as pq

    from restore.manifest import MANIFEST_ROOT, latest_rows
    from restore.storage import TEMP_PREFIX

    unreadable, tables = [], []
    for info in storage.list(("*.parquet",), prefix=f"{MANIFEST_ROOT}/{job}/"):
        try:
            table = pq.read_table(io.BytesIO(storage.get(info.key)))
        except Exception:  # noqa: BLE001 - any unreadable part is the finding
            unreadable.append(info.key)
            continue
        if "/_snapshots/" not in info.key:  # snapshots repeat rows of parts; the parts are the record
            tables.append(table)
    import pyarrow as pa

    rows = pa.concat_tables(tables).to_pylist() if tables else []
    latest = {row["input_key"]: row for row in latest_rows(pa.Table.from_pylist(rows))} if rows else {}
    ok = [row for row in rows if row["status"] == "ok"]
    runs_per_version = Counter((row["input_key"], row["input_etag"], row["config_hash"]) for row in ok)
    duplicated = sorted({key for (key, _, _), n in runs_per_version.items() if n > 1})
    lost = sorted(key for key in expected if latest.get(key, {}).get("status") != "ok")
    errors = {key: latest[key]["error"] for key in lost if key in latest}
    differing = []
    for key, row in latest.items():
        if row["status"] != "ok":
            continue
        data = storage.get(row["output_key"]) if storage.head(row["output_key"]) else None
        if data is None or sha256(data) != row["output_sha256"]:
            differing.append(row["output_key"])
    if reference is not None:
        actual = output_digests(storage)
        differing += sorted(k for k in set(actual) | set(reference) if actual.get(k) != reference.get(k))
    orphans = []
    root = getattr(storage, "root", None)
    if root is not None and root.exists():
        orphans = sorted(str(p.relative_to(root)) for p in root.rglob(f"{TEMP_PREFIX}*"))
    return JobCheck(frames=len(expected), lost=lost, duplicated=duplicated, ok_rows=len(ok),
                    failed_rows=len(rows) - len(ok), unreadable_parts=unreadable, orphaned_temp_files=orphans,
                    differing_outputs=sorted(set(differing)), runs=len({row["run_id"] for row in rows}),
                    errors=errors)


def run_in_process(raw: dict, progress=None):
    """prepare + run_job in this process (Ray already initialised here)."""
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec

    context, plan = prepare(parse_spec(raw))
    return run_job(context, plan, progress=progress)


# ---------------------------------------------------------------------------------------------- scenarios

@dataclass
class Outcome:
    fault: str
    storage: str
    injected: int
    frames: int
    lost: int
    duplicated: int
    outcome: str
    ok: bool
    notes: list[str] = field(default_factory=list)
    check: JobCheck | None = None


def base_job(input_uri: str, output_uri: str, **overrides) -> dict:
    raw = {"name": "rel", "input": input_uri, "output": output_uri, "restorer": {"name": "telea"},
           "batch_size": 1, "commit_every": 1, "workers": {"count": 1, "cpus": 1}}
    raw.update(overrides)
    return raw


LOCAL_PHASES = ("listing", "output-write", "commit", "manifest-write")
# which occurrence of its event a phase kills at, drawn from this range: late enough that some runs commit parts
NTH_RANGE = {"listing": (1, 5), "output-write": (2, 5), "commit": (2, 4), "manifest-write": (2, 4),
             "restoring": (3, 6), "output-upload": (2, 6), "manifest-upload": (2, 4), "random": (0, 0)}
S3_PHASES = ("listing", "restoring", "output-upload", "manifest-upload")


def crash_cycles(workdir: Path, ray_address: str, phases, frames: int = 16, seed: int = 0,
                 s3: tuple | None = None) -> Outcome:
    """SIGKILL the driver once per entry of `phases` (each run resumes the previous one), then run to the end.

    Local phases: listing, output-write, commit, manifest-write, or "random" (a delay drawn from a seeded RNG).
    S3 phases (s3 = (client, bucket, proxy)): listing, restoring, output-upload, manifest-upload, random.
    The N-th event each phase waits for is drawn from the same RNG. Returns the outcome after the final run.
    """
    from restore.storage import open_storage

    rng = random.Random(seed)
    objects = reel(frames)
    workdir.mkdir(parents=True, exist_ok=True)
    if s3 is None:
        write_local(workdir / "in", objects)
        input_uri, output_uri, reference_uri, endpoint = str(workdir / "in"), str(workdir / "out"), str(workdir / "ref"), None
    else:
        client, bucket, proxy = s3
        write_s3(client, bucket, "in/", objects)
        input_uri, output_uri, reference_uri = f"s3://{bucket}/in", f"s3://{bucket}/out", f"s3://{bucket}/ref"
        endpoint = proxy.url
    extra = {"endpoint_url": endpoint} if endpoint else {}
    inputs_before = output_digests(open_storage(input_uri, endpoint), exclude=())

    run_in_process(base_job(input_uri, reference_uri, **extra))  # the uninterrupted run
    reference = output_digests(open_storage(reference_uri, endpoint))
    spec_file = write_spec(workdir / "job.yaml", base_job(input_uri, output_uri, **extra))
    notes, killed, missed, logs = [], 0, [], []
    started = time.monotonic()
    for phase in phases:
        nth = rng.randint(*NTH_RANGE[phase]) if s3 is None or phase != "listing" else 1  # one S3 listing page
        hook = None
        if phase == "random":
            delay = rng.uniform(1.0, 12.0)
            run = drive(spec_file, ray_address, kill_after=delay)
        elif s3 is None:
            run = drive(spec_file, ray_address, kill_at=phase, nth=nth)
        else:
            match = {"listing": lambda r: r.is_listing and r.query.get("prefix", [""])[0] == "in/",
                     "restoring": lambda r: r.method == "GET" and r.key.startswith("in/reel/f"),
                     "output-upload": lambda r: r.is_output_put and r.key.startswith("out/"),
                     "manifest-upload": lambda r: r.is_manifest_part and r.key.startswith("out/")}[phase]
            hook = KillOnRequest(match, nth)
            proxy.hook = hook
            run = drive(spec_file, ray_address, hook=hook)
            proxy.hook = None
        logs.append(run.stdout + run.stderr)
        killed += run.killed
        if not run.killed and phase != "random":  # a random delay may outlast the run; a phase must be hit
            missed.append(phase)
        staged = ""
        if s3 is None:  # evidence of where the kill landed: staged files it left behind
            from restore.storage import TEMP_PREFIX

            staged = f", {len(list((workdir / 'out').rglob(TEMP_PREFIX + '*')))} staged file(s) left"
        label = f"random after {delay:.1f} s" if phase == "random" else f"{phase}#{nth}"
        notes.append(f"{label}: {'killed' if run.killed else f'exit {run.returncode}'}{staged}")
    driven_seconds = time.monotonic() - started
    final = drive(spec_file, ray_address)  # resume to the end, through the CLI
    logs.append(final.stdout + final.stderr)
    output = open_storage(output_uri, endpoint)
    check = check_job(output, "rel", frame_keys(objects), reference)
    untouched = output_digests(open_storage(input_uri, endpoint), exclude=()) == inputs_before
    ok = check.clean and untouched and final.returncode == 0 and not missed
    outcome = (f"{killed} kills, resumed: {check.ok_rows} ok rows for {check.frames} frames over {check.runs} runs, "
               f"outputs identical to an uninterrupted run" if ok else f"FAILED: {check} untouched={untouched} "
               f"final exit {final.returncode} killed {killed}/{len(phases)}, missed {missed}\n{final.stderr[-2000:]}")
    result = Outcome(fault="driver SIGKILL (" + ", ".join(dict.fromkeys(phases)) + ")",
                     storage="S3 (moto)" if s3 else "local", injected=killed, frames=len(frame_keys(objects)),
                     lost=len(check.lost), duplicated=len(check.duplicated), outcome=outcome, ok=ok,
                     notes=notes + [f"{driven_seconds:.0f} s of killed runs"], check=check)
    result.logs = logs  # type: ignore[attr-defined]
    return result


def flaky_s3(client, bucket: str, proxy: FaultProxy, frames: int = 12, rate: float = 0.15) -> Outcome:
    """Transient 500/503/SlowDown answers on a share of every request (some after the server applied them)."""
    from restore.storage import open_storage

    objects = reel(frames)
    write_s3(client, bucket, "in/", objects)
    proxy.fault_rate, proxy.fault_after_apply = rate, 0.3
    before = proxy.injected
    try:
        result = run_in_process(base_job(f"s3://{bucket}/in", f"s3://{bucket}/out", endpoint_url=proxy.url,
                                         batch_size=2, commit_every=2))
    finally:
        proxy.fault_rate = proxy.fault_after_apply = 0.0
    injected = proxy.injected - before
    check = check_job(open_storage(f"s3://{bucket}/out", proxy.url), "rel", frame_keys(objects))
    ok = check.clean and result.counts == {"ok": frames} and injected > 0
    return Outcome("S3 500/503/SlowDown at a 15% rate", "S3 (moto)", injected, frames, len(check.lost),
                   len(check.duplicated), f"retried; {result.counts.get('ok', 0)}/{frames} ok in one run"
                   if ok else f"FAILED: {result.counts} {check}", ok, check=check)


def s3_restart(client, bucket: str, server: MotoServer, frames: int = 12, down_s: float = 3.0) -> Outcome:
    """The S3 server stopped once a few frames are done, and started again `down_s` later."""
    from restore.storage import open_storage

    objects = reel(frames)
    write_s3(client, bucket, "in/", objects)
    events = []

    def outage():
        server.stop()
        events.append("stopped")
        time.sleep(down_s)
        server.start()
        events.append("started")

    thread = threading.Thread(target=outage)

    def progress(done, total, failed):
        if done >= 3 and not thread.is_alive() and not events:
            thread.start()

    result = run_in_process(base_job(f"s3://{bucket}/in", f"s3://{bucket}/out", endpoint_url=server.url),
                            progress=progress)
    thread.join()
    check = check_job(open_storage(f"s3://{bucket}/out", server.url), "rel", frame_keys(objects))
    ok = check.clean and result.counts == {"ok": frames} and events == ["stopped", "started"]
    return Outcome(f"S3 server stopped for {down_s:g} s mid-run", "S3 (moto)", 1 if events else 0, frames,
                   len(check.lost), len(check.duplicated),
                   f"retried through the outage; {result.counts.get('ok', 0)}/{frames} ok in one run" if ok
                   else f"FAILED: {result.counts} {events} {check}", ok, check=check)


def s3_denied(client, bucket: str, proxy: FaultProxy, frames: int = 12, after: int = 4) -> Outcome:
    """AccessDenied for everything once `after` outputs are stored; a resume after the fault is gone."""
    from restore.storage import StorageError, open_storage

    objects = reel(frames)
    write_s3(client, bucket, "in/", objects)
    puts = Counter()

    def deny_after(request):
        if request.is_output_put and request.key.startswith("out/reel/f"):
            puts["outputs"] += 1
            if puts["outputs"] == after:
                proxy.deny = "AccessDenied"
        return None

    raw = base_job(f"s3://{bucket}/in", f"s3://{bucket}/out", endpoint_url=proxy.url)
    proxy.hook = deny_after
    error = None
    try:
        run_in_process(raw)
    except StorageError as e:
        error = str(e)
    finally:
        proxy.hook, proxy.deny = None, None
    output = open_storage(f"s3://{bucket}/out", proxy.url)
    recorded = check_job(output, "rel", frame_keys(objects))
    recorded_ok = recorded.ok_rows
    resumed = run_in_process(raw)
    check = check_job(output, "rel", frame_keys(objects))
    ok = (error is not None and "access denied" in error and recorded_ok >= 1 and check.clean
          and resumed.planned == frames - recorded_ok and not recorded.differing_outputs)
    outcome = (f"stopped: \"{error}\"; manifest had {recorded_ok} ok; resume did the other {resumed.planned}"
               if ok else f"FAILED: error={error!r} recorded={recorded_ok} resumed={resumed.counts} {check}")
    result = Outcome("S3 AccessDenied for everything (permanent) mid-run", "S3 (moto)", 1, frames,
                     len(check.lost), len(check.duplicated), outcome, ok, check=check)
    result.error = error  # type: ignore[attr-defined]
    return result


def restorer_actors() -> list[dict]:
    """Live restorer actors of the connected Ray, from the GCS (ray.util.state needs the dashboard, which
    ray[data] does not install)."""
    import ray._private.state

    return [actor for actor in ray._private.state.actors(actor_state_name="ALIVE").values()
            if "RestoreFrames" in actor["ActorClassName"] and actor.get("Pid")]


def actor_kill(workdir: Path, frames: int = 24) -> Outcome:
    """SIGKILL the restorer actor's process while it holds a batch (Ray restarts it; the batch is retried)."""
    from restore.storage import open_storage

    objects = reel(frames, 256, 256, heavy=True)
    write_local(workdir / "in", objects)
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        first_seen = None
        while not killed and time.monotonic() < deadline and not done.is_set():
            for actor in restorer_actors():
                first_seen = first_seen or time.monotonic()
                # batches flow back to back once it is up: after a batch, or a second or two, it holds one
                if progress_seen["done"] >= 1 or time.monotonic() - first_seen > 1.5:
                    os.kill(actor["Pid"], signal.SIGKILL)
                    killed.append(actor["Pid"])
                    break
            time.sleep(0.1)

    progress_seen = Counter()
    done = threading.Event()

    def progress(n, total, failed):
        progress_seen["done"] = n

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = run_in_process(base_job(str(workdir / "in"), str(workdir / "out"), batch_size=2, commit_every=2,
                                         restorer=SLOW_RESTORER), progress=progress)
    finally:
        done.set()
        thread.join()
    check = check_job(open_storage(str(workdir / "out")), "rel", frame_keys(objects))
    ok = check.clean and bool(killed) and result.counts == {"ok": frames}
    return Outcome("restorer actor SIGKILLed mid-batch", "local", len(killed), frames, len(check.lost),
                   len(check.duplicated), f"actor restarted, batch retried; {result.counts.get('ok', 0)}/{frames} "
                   "ok in one run" if ok else f"FAILED: killed={killed} {result.counts} {check}", ok, check=check)


def node_loss(workdir: Path, frames: int = 40, timeout: float = 540) -> Outcome:
    """A worker node removed from a 3-node ray.cluster_utils.Cluster mid-job, in a subprocess of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.run([sys.executable, str(HERE / "faults.py"), "node-loss", str(workdir), "--frames", str(frames)],
                             capture_output=True, text=True, timeout=timeout)
    report_file = workdir / "node-loss.json"
    if not report_file.exists():
        return Outcome("Ray worker node removed mid-job", "local", 0, frames, frames, 0,
                       f"FAILED: exit {process.returncode}: {process.stderr[-3000:]}", False)
    report = json.loads(report_file.read_text())
    from restore.storage import open_storage

    check = check_job(open_storage(str(workdir / "out")), "rel", frame_keys(reel(frames, 8, 8)))
    ok = check.clean and report["removed"] and report["runs_needed"] == 1
    return Outcome("Ray worker node removed mid-job", "local", int(report["removed"]), frames, len(check.lost),
                   len(check.duplicated), f"{report['summary']}" if ok else f"FAILED: {report} {check}", ok,
                   notes=[process.stderr[-2000:]] if not ok else [], check=check)


def _node_loss_main(workdir: str, frames: int) -> int:
    """Head (no CPUs for work) + two 2-CPU worker nodes; remove the node running the restorer once frames flow."""
    import ray
    from ray.cluster_utils import Cluster

    root = Path(workdir)
    write_local(root / "in", reel(frames, 256, 256, heavy=True))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # work lands on the worker nodes
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    removed = threading.Event()
    state = {"removed_node": None, "error": None}
    removed_at = {}

    def remove_restorer_node():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not removed.is_set():
            actors = restorer_actors()
            for node in workers:
                if any(a["Address"]["NodeID"] == node.node_id for a in actors) and progress["done"] >= 2:
                    removed_at["done"] = progress["done"]
                    cluster.remove_node(node, allow_graceful=False)
                    state["removed_node"] = node.node_id
                    removed.set()
                    return
            time.sleep(0.2)

    progress = Counter()

    def on_progress(done, total, failed):
        progress["done"] = done

    thread = threading.Thread(target=remove_restorer_node, daemon=True)
    thread.start()
    raw = base_job(str(root / "in"), str(root / "out"), batch_size=2, commit_every=2, restorer=SLOW_RESTORER)
    runs = 0
    counts = {}
    for _ in range(3):  # the job should finish in one run; a resume is allowed but recorded
        runs += 1
        try:
            counts = run_in_process(raw, progress=on_progress).counts
            break
        except Exception as error:  # noqa: BLE001 - recorded in the report
            state["error"] = f"{type(error).__name__}: {error}"[:2000]
    removed.set()
    thread.join()
    summary = (f"node with the restorer removed after {removed_at.get('done', '?')} frames; job finished in {runs} run(s), "
               f"{counts.get('ok', 0)} ok")
    (root / "node-loss.json").write_text(json.dumps({
        "removed": state["removed_node"] is not None, "runs_needed": runs, "counts": counts, "error": state["error"],
        "summary": summary}))
    ray.shutdown()
    cluster.shutdown()
    return 0


def _rss_mb(pid: int | str, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _ray_workers(root: int) -> list[int]:
    """Ray worker processes started under this process (its own local Ray)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                command = (Path(f"/proc/{child}/cmdline")).read_bytes()
            except OSError:
                continue
            if b"default_worker.py" in command or command.startswith(b"ray::"):
                found.append(child)
    return found


def load_figures(workdir: Path, frames: int, timeout: float = 3600) -> dict:
    """Run the load job in a subprocess with its own 2-CPU Ray; its figures (peak RSS, rate) as a dict."""
    done = subprocess.run([sys.executable, str(HERE / "faults.py"), "load", str(workdir), "--frames", str(frames)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"load run failed: {done.stderr[-3000:]}")
    return json.loads((workdir / "load.json").read_text())


def _load_main(workdir: str, frames: int) -> int:
    """`frames` 32x32 frames with masks, one job (batch 8, parts of 64 rows); RSS sampled every 0.25 s."""
    import ray

    root = Path(workdir)
    write_local(root / "in", reel(frames, 32, 32))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    peaks = Counter()
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            workers = [_rss_mb(pid) for pid in _ray_workers(os.getpid())]
            peaks["driver"] = max(peaks["driver"], _rss_mb("self"))
            peaks["worker"] = max(peaks["worker"], max(workers, default=0.0))
            peaks["workers_total"] = max(peaks["workers_total"], sum(workers))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.monotonic()
    result = run_in_process(base_job(str(root / "in"), str(root / "out"), batch_size=8, commit_every=64))
    seconds = time.monotonic() - started
    stop.set()
    thread.join()
    from restore.storage import open_storage

    check = check_job(open_storage(str(root / "out")), "rel", frame_keys(reel(frames, 32, 32)))
    (root / "load.json").write_text(json.dumps({
        "frames": frames, "counts": result.counts, "seconds": round(seconds, 1),
        "frames_per_second": round(frames / seconds, 1),
        "driver_peak_rss_mb": round(max(_rss_mb("self", "VmHWM"), peaks["driver"]), 1),
        "worker_peak_rss_mb": round(peaks["worker"], 1), "workers_total_peak_rss_mb": round(peaks["workers_total"], 1),
        "lost": len(check.lost), "duplicated": len(check.duplicated)}))
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    d = verbs.add_parser("drive", help="restore run SPEC, SIGKILLed at a phase")
    d.add_argument("spec")
    d.add_argument("--kill-at", default="none", choices=("none",) + LOCAL_PHASES)
    d.add_argument("--nth", type=int, default=1)
    d.add_argument("--lease-ttl", type=float, default=LEASE_TTL_S)
    n = verbs.add_parser("node-loss", help="a job on a 3-node Cluster losing a worker node mid-job")
    n.add_argument("workdir")
    n.add_argument("--frames", type=int, default=40)
    load = verbs.add_parser("load", help="one job over many small frames, peak RSS of driver and workers")
    load.add_argument("workdir")
    load.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.verb == "drive":
        return _harness(args.spec, args.kill_at, args.nth, args.lease_ttl)
    if args.verb == "load":
        return _load_main(args.workdir, args.frames)
    return _node_loss_main(args.workdir, args.frames)


if __name__ == "__main__":
    sys.exit(main())
