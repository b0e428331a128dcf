"""The job lease, on a local folder and on S3 (moto): one run at a time, crashed runs taken over, fencing."""
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from restore.lease import (LeaseHeldError, LeaseLostError, LeaseRecord, acquire, lease_key, lease_prefix,
                           newest_lease)
from restore.manifest import read_manifests
from restore.storage import Storage, StorageError, open_storage

JOB = "reel-042"


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    """(uri, endpoint_url) of an empty output location on each backend."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{request.getfixturevalue('s3_bucket')}/restored", endpoint


@pytest.fixture
def storage(location):
    return open_storage(*location)


class Partitioned(Storage):
    """A real storage behind a switch: while `down`, every call fails as if the network were cut."""

    def __init__(self, inner: Storage):
        self.inner, self.uri, self.down = inner, inner.uri, False

    def _call(self, name, *args, **kwargs):
        if self.down:
            raise StorageError(f"cannot reach {self.uri}")
        return getattr(self.inner, name)(*args, **kwargs)

    def _iter_objects(self, prefix):
        return self._call("_iter_objects", prefix)

    def read(self, key):
        return self._call("read", key)

    def head(self, key):
        return self._call("head", key)

    def put(self, key, data, content_type=None, storage_class=None):
        return self._call("put", key, data, content_type, storage_class)

    def put_if_absent(self, key, data):
        return self._call("put_if_absent", key, data)

    def delete(self, key):
        return self._call("delete", key)


def write_expired_lease(storage: Storage, token: int) -> None:
    """What a run that died long ago leaves behind."""
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    record = LeaseRecord(JOB, token, "old-host:4242", "20240101T000000Z-dead00", past - timedelta(hours=1), past)
    assert storage.put_if_absent(lease_key(JOB, token), record.to_json())


def test_second_concurrent_run_is_refused_with_who_and_until(storage):
    first = acquire(storage, JOB, ttl_s=30, run_id="run-a")
    try:
        with pytest.raises(LeaseHeldError, match=r"already running: lease held by .+ \(run run-a\) .* until "):
            acquire(storage, JOB, ttl_s=30, run_id="run-b")
        first.check()  # the refused attempt took nothing away from the holder
    finally:
        first.release()
    second = acquire(storage, JOB, ttl_s=30, run_id="run-b")  # released: the next run starts at once
    assert second.token == first.token + 1
    second.release()


def test_tokens_only_grow_and_old_lease_objects_are_cleaned_up(storage):
    tokens = []
    for _ in range(4):
        with acquire(storage, JOB, ttl_s=30) as lease:
            tokens.append(lease.token)
    assert tokens == [1, 2, 3, 4]
    left = [info.key for info in storage.list(("*",), prefix=lease_prefix(JOB))]
    assert left == [lease_key(JOB, 3), lease_key(JOB, 4)]
    assert newest_lease(storage, JOB).released
    assert read_manifests(storage, JOB).num_rows == 0  # lease objects are not manifest parts


def test_heartbeat_renews_while_the_run_lives(storage):
    lease = acquire(storage, JOB, ttl_s=1.0)
    try:
        first_expiry = newest_lease(storage, JOB).expires_at
        time.sleep(2.0)  # twice the TTL: only renewals keep it live
        assert newest_lease(storage, JOB).expires_at > first_expiry + timedelta(seconds=0.8)
        lease.check()
        with pytest.raises(LeaseHeldError):
            acquire(storage, JOB, ttl_s=1.0)
    finally:
        lease.release()


def test_lease_of_a_crashed_run_is_taken_over(location, storage):
    """A real process takes the lease and dies without releasing it; after the TTL the next run takes over."""
    code = ("import os, sys; from restore.storage import open_storage; from restore.lease import acquire;"
            "lease = acquire(open_storage(sys.argv[1], sys.argv[2] or None), sys.argv[3], ttl_s=1.0);"
            "print(lease.token, flush=True); os._exit(0)")
    crashed = subprocess.run([sys.executable, "-c", code, location[0], location[1] or "", JOB],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 0, crashed.stderr
    stale = newest_lease(storage, JOB)
    assert stale.token == int(crashed.stdout) and not stale.released
    if stale.live(datetime.now(timezone.utc)):
        with pytest.raises(LeaseHeldError):
            acquire(storage, JOB, ttl_s=30)
    time.sleep(max(0.0, (stale.expires_at - datetime.now(timezone.utc)).total_seconds()) + 0.1)
    with acquire(storage, JOB, ttl_s=30) as taken:
        assert taken.token == stale.token + 1


def test_partitioned_holder_stops_committing_and_loses_the_lease(storage):
    """A holder that cannot renew refuses to commit once its TTL passes, and after the takeover for good."""
    cut = Partitioned(storage)
    old = acquire(cut, JOB, ttl_s=1.0)
    old.check()
    cut.down = True
    time.sleep(1.2)
    with pytest.raises(LeaseLostError, match="expired .* without renewal"):
        old.check()
    new = acquire(storage, JOB, ttl_s=30)
    assert new.token == old.token + 1
    cut.down = False
    with pytest.raises(LeaseLostError):
        old.check()
    old.release()  # the loser's release must not disturb the new holder
    new.check()
    assert newest_lease(storage, JOB).token == new.token and not newest_lease(storage, JOB).released
    new.release()


def test_a_failed_renewal_is_tried_again_within_seconds_not_a_third_of_the_ttl_later(storage, monkeypatch):
    """An outage shorter than the lease must not end a run: once storage is back, the lease is renewed at once."""
    import restore.lease

    monkeypatch.setattr(restore.lease, "RETRY_S", 0.1)
    cut = Partitioned(storage)
    held = acquire(cut, JOB, ttl_s=6.0)  # renewed every 2 s
    first_expiry = newest_lease(storage, JOB).expires_at
    cut.down = True
    time.sleep(2.5)  # the renewal at 2 s failed
    cut.down = False
    time.sleep(1.0)  # retried since; the next regular renewal would come at 4 s
    assert newest_lease(storage, JOB).expires_at > first_expiry
    held.check()
    held.release()


def test_old_holder_cannot_commit_once_a_newer_token_exists(storage):
    """Fencing: even while its own clock says the lease is valid, a newer token ends the old holder's run."""
    old = acquire(storage, JOB, ttl_s=30, run_id="old-run")
    now = datetime.now(timezone.utc)
    usurper = LeaseRecord(JOB, old.token + 1, "other-host:7", "new-run", now, now + timedelta(seconds=30))
    assert storage.put_if_absent(lease_key(JOB, old.token + 1), usurper.to_json())
    with pytest.raises(LeaseLostError, match=r"taken over, now held by other-host:7 \(run new-run\)"):
        old.check()
    with pytest.raises(LeaseLostError):
        old.renew()
    old.release()
    assert not newest_lease(storage, JOB).released  # the old holder did not mark the newer lease released


def test_racing_takers_of_an_expired_lease_exactly_one_wins(storage):
    write_expired_lease(storage, token=5)
    start = threading.Barrier(6)
    won, refused = [], []

    def take():
        start.wait()
        try:
            won.append(acquire(storage, JOB, ttl_s=30))
        except LeaseHeldError as error:
            refused.append(error)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 5
    assert won[0].token == 6
    won[0].release()


def test_a_lease_whose_driver_died_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    from restore.lease import acquire, newest_lease
    from restore.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    code = ("import sys; from restore.lease import acquire; from restore.storage import LocalStorage;"
            "acquire(LocalStorage(sys.argv[1]), 'job', ttl_s=3600); import os; os._exit(0)")  # dies holding it
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    dead = newest_lease(storage, "job")
    assert dead.holder.startswith(socket.gethostname()) and dead.holder_died()
    with acquire(storage, "job") as lease:
        assert lease.token == dead.token + 1
