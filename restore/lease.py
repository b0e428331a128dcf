"""One run at a time per job: a lease object in the output storage, renewed while the run lives.

Storage gives us only an atomic create (`put_if_absent`: S3 `IfNoneMatch="*"`, a hard link locally), never a
compare-and-swap on overwrite. So every holder gets its own object, `_manifests/<job>/_lease/<token>.json`, and
the token is the fencing token: taking the lease means creating the object for the next token, which exactly one
contender can do. The object with the highest token is the current lease; it is live until its `expires_at`.

    acquire   list tokens → newest live? refuse : create newest+1 (the loser of a race looks again)
    heartbeat every ttl/3: stop if a newer token exists, else rewrite our own object with a later expiry
    check     before each manifest commit: refuse once our own expiry has passed or a newer token exists
    release   mark our object released (never delete it: the highest token must survive, so tokens only grow)

Only the holder ever rewrites its own object, so plain overwrites are safe. A holder that cannot renew stops
committing when its own lease expires, which is also when another run may take it over; clocks of different
hosts are assumed to agree to well within the TTL.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone

from .manifest import MANIFEST_ROOT
from .storage import Storage, StorageError

LEASE_ROOT = MANIFEST_ROOT  # beside the job's manifests, which `verify --unknown` and listings of frames leave out
DEFAULT_TTL_S = 120.0  # a crashed run blocks the job this long at most; renewed every third of it
RETRY_S = 5.0  # after a renewal failed, the next try
TOKEN_DIGITS = 12  # zero-padded, so keys sort in token order

log = logging.getLogger(__name__)


class LeaseError(RuntimeError):
    """The job's lease could not be taken or is no longer ours."""


class LeaseHeldError(LeaseError):
    """Another run of the same job holds a live lease."""


class LeaseLostError(LeaseError):
    """This run's lease expired or was taken over: it must not commit anything more."""


def lease_prefix(job: str) -> str:
    return f"{LEASE_ROOT}/{job}/_lease/"


def lease_key(job: str, token: int) -> str:
    return f"{lease_prefix(job)}{token:0{TOKEN_DIGITS}d}.json"


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease object holds; times are UTC."""

    job: str
    token: int
    holder: str  # host:pid of the run's driver
    run_id: str | None
    acquired_at: datetime
    expires_at: datetime
    released: bool = False

    def live(self, now: datetime) -> bool:
        return not self.released and now < self.expires_at and not self.holder_died()

    def holder_died(self) -> bool:
        """True when the holder ran on this host and its process is gone: a killed run need not wait out its TTL."""
        host, _, pid = self.holder.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return False  # another machine's run: only its expiry can tell
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, owned by another user
        return False

    def to_json(self) -> bytes:
        fields = {**asdict(self), "acquired_at": self.acquired_at.isoformat(), "expires_at": self.expires_at.isoformat()}
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        fields = json.loads(data)
        return cls(**{**fields, "acquired_at": datetime.fromisoformat(fields["acquired_at"]),
                      "expires_at": datetime.fromisoformat(fields["expires_at"])})

    def describe(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        return (f"held by {self.holder}{run} since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC unless renewed (token {self.token})")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _tokens(storage: Storage, job: str) -> list[int]:
    prefix = lease_prefix(job)
    tokens = []
    for info in storage.list(("*.json",), prefix=prefix):
        name = info.key[len(prefix):].removesuffix(".json")
        if name.isdigit():
            tokens.append(int(name))
    return sorted(tokens)


def newest_lease(storage: Storage, job: str) -> LeaseRecord | None:
    """The lease with the highest token, live or not; None if the job never ran with a lease."""
    for _ in range(3):
        tokens = _tokens(storage, job)
        if not tokens:
            return None
        key = lease_key(job, tokens[-1])
        try:
            return LeaseRecord.from_json(storage.get(key))
        except StorageError:
            if storage.head(key) is not None:
                raise
            # removed between list and read: a newer holder cleaned it up, so list again
        except (ValueError, TypeError, KeyError):
            # unreadable (hand-edited?): it cannot prove a live holder, so it counts as expired
            return LeaseRecord(job, tokens[-1], "unknown (unreadable lease object)", None,
                               datetime.min.replace(tzinfo=timezone.utc), datetime.min.replace(tzinfo=timezone.utc))
    raise LeaseError(f"job {job!r}: the lease objects under {storage.uri}{lease_prefix(job)} keep changing; try again")


def run_in_progress(storage: Storage, job: str) -> str | None:
    """Who is running the job now (the live lease, described), or None: what `status` and a dry run tell."""
    newest = newest_lease(storage, job)
    return newest.describe() if newest is not None and newest.live(_now()) else None


class Lease:
    """A held lease; a daemon thread renews it until `release()`. Call `check()` before every commit."""

    def __init__(self, storage: Storage, record: LeaseRecord, ttl_s: float, valid_until: float):
        self.storage = storage
        self.record = record
        self.ttl_s = ttl_s
        self._valid_until = valid_until  # time.monotonic() after which our own lease may have expired
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{record.job}", daemon=True)

    @property
    def token(self) -> int:
        return self.record.token

    @property
    def key(self) -> str:
        return lease_key(self.record.job, self.record.token)

    def _newer(self) -> LeaseRecord | None:
        """The lease of a run that took over from us, if any."""
        tokens = _tokens(self.storage, self.record.job)
        if not tokens or tokens[-1] <= self.token:
            return None
        return newest_lease(self.storage, self.record.job)

    def _raise_if_superseded(self) -> None:
        newer = self._newer()
        if newer is not None:
            self._lost = f"job {self.record.job!r}: this run's lease (token {self.token}) was taken over, now {newer.describe()}"
            raise LeaseLostError(self._lost)

    def renew(self) -> None:
        """Push our expiry one TTL ahead; raises LeaseLostError if another run has taken over."""
        if self._lost:
            raise LeaseLostError(self._lost)
        self._raise_if_superseded()
        started = time.monotonic()
        record = replace(self.record, expires_at=_now() + timedelta(seconds=self.ttl_s))
        self.storage.put(self.key, record.to_json(), content_type="application/json")
        self.record, self._valid_until = record, started + self.ttl_s

    def _heartbeat(self) -> None:
        wait = self.ttl_s / 3
        while not self._stop.wait(wait):
            try:
                self.renew()
                wait = self.ttl_s / 3
            except LeaseLostError:
                return
            except StorageError:  # maybe a short outage: try again soon, not a third of the TTL later
                wait = min(self.ttl_s / 3, RETRY_S)

    def check(self) -> None:
        """Raise LeaseLostError unless this run still holds the job: call it before every manifest commit."""
        if self._lost:
            raise LeaseLostError(self._lost)
        if time.monotonic() >= self._valid_until:  # another run may take it over from now: never commit again
            self._lost = (f"job {self.record.job!r}: this run's lease (token {self.token}) expired at "
                          f"{self.record.expires_at:%Y-%m-%d %H:%M:%S} UTC without renewal (storage unreachable?)")
            raise LeaseLostError(self._lost)
        self._raise_if_superseded()

    def release(self) -> None:
        """Stop renewing and mark the lease released so the next run can start at once; safe to call twice.

        Never raises a StorageError: it runs while a failed run unwinds, and an unreleased lease lapses anyway.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._lost or self.record.released:
            return
        try:
            if self._newer() is None:
                record = replace(self.record, released=True, expires_at=_now())
                self.storage.put(self.key, record.to_json(), content_type="application/json")
                self.record = record
        except StorageError as error:
            log.warning("job %r: could not release the lease (it lapses after its TTL): %s", self.record.job, error)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(storage: Storage, job: str, ttl_s: float = DEFAULT_TTL_S, run_id: str | None = None) -> Lease:
    """Take the job's lease and start renewing it; raises LeaseHeldError while another run holds it."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(3):
        newest = newest_lease(storage, job)
        now = _now()
        if newest is not None and newest.live(now):
            raise LeaseHeldError(f"job {job!r} is already running: lease {newest.describe()}. Wait for that run to "
                                 "finish; if it crashed, its lease lapses by itself at that time.")
        token = newest.token + 1 if newest else 1
        started = time.monotonic()
        record = LeaseRecord(job, token, holder, run_id, acquired_at=now, expires_at=now + timedelta(seconds=ttl_s))
        if not storage.put_if_absent(lease_key(job, token), record.to_json()):
            continue  # another run took this token first: look again
        lease = Lease(storage, record, ttl_s, valid_until=started + ttl_s)
        newer = lease._newer()  # our listing may have been stale while older objects were being cleaned up
        if newer is not None:
            raise LeaseHeldError(f"job {job!r} is already running: lease {newer.describe()}.")
        for old in _tokens(storage, job):
            if old < token - 1:  # keep the previous one for readers that listed just before us
                storage.delete(lease_key(job, old))
        lease._thread.start()
        return lease
    raise LeaseHeldError(f"job {job!r}: other runs keep taking the lease first ({storage.uri}{lease_prefix(job)})")
