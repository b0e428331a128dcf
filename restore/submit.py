"""Run a job spec on a remote Ray cluster through Ray's Jobs API, and follow, read or stop it there.

The spec travels with the job: it is validated here first, copied into a fresh folder that Ray uploads as the
job's working directory, and run there by `restore run job.yaml`. Local paths in the spec are made absolute
first, so they mean what they mean here; on a cluster they must name storage that the cluster sees the same way
(a shared filesystem), which is why cluster jobs normally use s3:// locations.

Authentication: `token`, when given, is sent as a bearer token; otherwise Ray's own lookup applies
(RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
"""
from __future__ import annotations

import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from .spec import load_spec

SPEC_NAME = "job.yaml"  # the spec's name inside the uploaded working directory
CONNECT_TIMEOUT_S = 10.0  # an unreachable head fails within this, instead of hanging on the OS's TCP timeout
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """The cluster cannot be reached, refuses us, or does not know the job; the message says which."""


@dataclass(frozen=True)
class JobState:
    submission_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str | None
    entrypoint: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None
    exit_code: int | None  # the driver's, once it has ended

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def _http_address(address: str) -> str:
    """The job server's URL; a bare host:port gets http:// (Ray's dashboard default)."""
    address = address.strip().rstrip("/")
    if not address:
        raise SubmitError("no Ray address: give the head's dashboard URL, e.g. --address http://HEAD:8265")
    return address if "://" in address else f"http://{address}"


def _headers(token: str | None) -> dict[str, str]:
    """The given token, else the one Ray's own client finds (with RAY_AUTH_MODE=token: RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), so that the probe asks as the client will."""
    if token:
        return {"Authorization": f"Bearer {token}"}
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    return get_auth_headers_if_auth_enabled({})


@contextmanager
def _explicit_address():
    """Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address a client is given; here the given one wins."""
    saved = {name: os.environ.pop(name) for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _probe(url: str, token: str | None, timeout_s: float) -> None:
    """One bounded request before Ray's client (whose requests have no timeout) talks to the head."""
    import requests

    try:
        response = requests.get(f"{url}/api/version", headers=_headers(token), timeout=timeout_s)
    except requests.exceptions.Timeout:
        raise SubmitError(f"the Ray job server at {url} did not answer within {timeout_s:g} s") from None
    except requests.exceptions.ConnectionError:
        raise SubmitError(f"cannot connect to the Ray job server at {url}: is the head running, and is that its "
                          "dashboard port (default 8265)?") from None
    if response.status_code in (401, 403):
        raise SubmitError(f"the Ray cluster at {url} requires a valid token (HTTP {response.status_code}): set "
                          "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token")
    if not response.ok:
        raise SubmitError(f"{url} does not look like a Ray job server: GET /api/version answered HTTP "
                          f"{response.status_code}")


def client(address: str, token: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S):
    """A JobSubmissionClient for the head at `address`, after a bounded check that it answers."""
    from ray.job_submission import JobSubmissionClient

    url = _http_address(address)
    _probe(url, token, timeout_s)
    with _explicit_address():
        return JobSubmissionClient(url, headers=_headers(token))


def _unknown_job(error: RuntimeError, submission_id: str, address: str) -> Exception:
    """Ray reports an unknown id as a RuntimeError carrying the HTTP 404; name the id instead."""
    if "status code 404" in str(error):
        return SubmitError(f"no job {submission_id!r} on the Ray cluster at {_http_address(address)} "
                           "(`ray job list --address ...` lists the submission ids it knows)")
    return SubmitError(f"the Ray job server at {_http_address(address)} failed: {error}")


def portable_spec(spec_path: str | Path) -> dict:
    """The spec as YAML data, validated, with local paths made absolute so they survive the move."""
    spec = load_spec(spec_path)
    raw = yaml.safe_load(Path(spec_path).read_text())
    raw["input"], raw["output"] = spec.input, spec.output
    if spec.masks.uri:
        raw["masks"]["uri"] = spec.masks.uri
    if spec.restorer.weights:
        raw["restorer"]["weights"] = spec.restorer.weights
    return raw


def submit(spec_path: str | Path, address: str, token: str | None = None,
           timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """Validate the spec here, then run `restore run` on it on the cluster; returns the submission id.

    Raises SpecError for a spec that does not validate (before any contact with the cluster) and SubmitError
    when the cluster cannot be reached or refuses the job.
    """
    raw = portable_spec(spec_path)
    jobs = client(address, token, timeout_s)
    submission_id = f"restore-{raw['name']}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="restore-submit-") as folder:
        (Path(folder) / SPEC_NAME).write_text(yaml.safe_dump(raw, sort_keys=False))
        try:
            return jobs.submit_job(entrypoint=f"restore run {SPEC_NAME}", submission_id=submission_id,
                                   runtime_env={"working_dir": folder}, metadata={"restore_job": raw["name"]})
        except RuntimeError as error:
            raise SubmitError(f"the Ray cluster at {_http_address(address)} refused the job: {error}") from None


def _state(jobs, address: str, submission_id: str) -> JobState:
    try:
        info = jobs.get_job_info(submission_id)
    except RuntimeError as error:
        raise _unknown_job(error, submission_id, address) from None
    return JobState(
        submission_id=submission_id, status=str(info.status.value), message=info.message,
        entrypoint=info.entrypoint,
        start_time=info.start_time / 1000 if info.start_time else None,
        end_time=info.end_time / 1000 if info.end_time else None,
        exit_code=info.driver_exit_code,
    )


def job_status(address: str, submission_id: str, token: str | None = None,
               timeout_s: float = CONNECT_TIMEOUT_S) -> JobState:
    return _state(client(address, token, timeout_s), address, submission_id)


def job_logs(address: str, submission_id: str, token: str | None = None,
             timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """Everything the job's driver has printed so far."""
    jobs = client(address, token, timeout_s)
    try:
        return jobs.get_job_logs(submission_id)
    except RuntimeError as error:
        raise _unknown_job(error, submission_id, address) from None


def stop_job(address: str, submission_id: str, token: str | None = None,
             timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Ask the job to stop; True if it was still running. Manifests committed so far stay valid for a resume."""
    jobs = client(address, token, timeout_s)
    try:
        return jobs.stop_job(submission_id)
    except RuntimeError as error:
        raise _unknown_job(error, submission_id, address) from None


def wait(address: str, submission_id: str, token: str | None = None, timeout_s: float | None = None,
         poll_s: float = 2.0) -> JobState:
    """Poll until the job ends (or `timeout_s` passes: SubmitError); returns its final state."""
    jobs = client(address, token)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = _state(jobs, address, submission_id)
        if state.finished:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"job {submission_id} still {state.status} after {timeout_s:g} s")
        time.sleep(poll_s)
