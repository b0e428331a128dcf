"""Faults a long job meets, injected for real: the driver SIGKILLed at each phase, a restorer actor and a Ray node
lost, S3 answering 5xx or going away, permissions revoked mid-run. After each: no frame lost, none duplicated,
outputs byte-identical to an uninterrupted run, no staged file left, every manifest part readable.

The scenarios live in tests/faults.py, shared with tests/reliability_report.py (which writes RELIABILITY.md).
The load soak (2,000 frames, peak memory) is opt-in: RESTORE_SOAK=1.
"""
import os

import boto3
import pytest

import faults
from restore.manifest import latest_rows, read_manifests
from restore.storage import StorageError, open_storage

soak = pytest.mark.soak  # `-m soak` selects the load soak (the marker is registered in pyproject.toml)
needs_soak = pytest.mark.skipif(os.environ.get("RESTORE_SOAK") != "1", reason="soak: set RESTORE_SOAK=1")


@pytest.fixture
def proxy(s3_endpoint):
    proxy = faults.FaultProxy(s3_endpoint, seed=7).start()
    yield proxy
    proxy.stop()


def assert_clean(outcome: faults.Outcome):
    assert outcome.ok, outcome.outcome
    assert (outcome.lost, outcome.duplicated) == (0, 0)


# ---------------------------------------------------------------------------------------------- driver crashes

def test_driver_killed_at_each_phase_on_local_storage_then_resumed(tmp_path, ray_session):
    """Killed while listing, mid-write of an output (by a worker), before a commit, mid-write of a manifest part."""
    phases = ("listing", "output-write", "commit", "manifest-write", "output-write")
    outcome = faults.crash_cycles(tmp_path, ray_session.get_runtime_context().gcs_address, phases, frames=16, seed=1)
    assert_clean(outcome)
    assert outcome.injected == len(phases) >= 5
    staged = [note for note in outcome.notes if note.startswith(("output-write", "manifest-write"))]
    assert staged and all("0 staged" not in note for note in staged), outcome.notes  # each kill landed mid-write


def test_driver_killed_at_each_phase_on_s3_then_resumed(tmp_path, s3_endpoint, s3_bucket, proxy, ray_session):
    """Killed while listing, mid-upload of an output, mid-upload of a manifest part (through the proxy).

    Three cycles here to keep the suite short; tests/reliability_report.py runs more, mid-restoration included."""
    phases = ("listing", "output-upload", "manifest-upload")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    outcome = faults.crash_cycles(tmp_path, ray_session.get_runtime_context().gcs_address, phases, frames=12, seed=2,
                                  s3=(client, s3_bucket, proxy))
    assert_clean(outcome)
    assert outcome.injected == len(phases)


# ---------------------------------------------------------------------------------------------- worker loss

def test_restorer_actor_killed_mid_batch(tmp_path, ray_session):
    assert_clean(faults.actor_kill(tmp_path, frames=16))


def test_worker_node_removed_mid_job(tmp_path):
    """On a 3-node ray.cluster_utils.Cluster, in a subprocess (it cannot share this process's Ray)."""
    assert_clean(faults.node_loss(tmp_path, frames=30))


# ---------------------------------------------------------------------------------------------- storage faults

def test_transient_s3_errors_are_retried(s3_endpoint, s3_bucket, proxy, ray_session):
    outcome = faults.flaky_s3(boto3.client("s3", endpoint_url=s3_endpoint), s3_bucket, proxy, frames=8)
    assert_clean(outcome)
    assert outcome.injected >= 5


def test_s3_server_stopped_and_restarted_mid_run(s3_bucket, ray_session):
    server = faults.MotoServer().start()  # its own server, so stopping it disturbs no other test
    try:
        client = boto3.client("s3", endpoint_url=server.url)
        client.create_bucket(Bucket=s3_bucket + "-r")
        assert_clean(faults.s3_restart(client, s3_bucket + "-r", server, frames=8))
    finally:
        server.stop()


def test_access_denied_mid_run_stops_with_a_clear_error_and_resume_completes(s3_endpoint, s3_bucket, proxy, ray_session):
    outcome = faults.s3_denied(boto3.client("s3", endpoint_url=s3_endpoint), s3_bucket, proxy, frames=8, after=3)
    assert_clean(outcome)
    assert outcome.error.startswith(f"cannot write s3://{s3_bucket}/out/")  # names where, and why
    assert "access denied" in outcome.error


def test_a_frame_storage_will_not_take_is_skipped_every_night_never_given_up_and_restored_once_it_does(
        s3_endpoint, s3_bucket, proxy, ray_session):
    """A bucket policy that denies one output key for more nights than `max_attempts`: storage's fault, not the
    frame's. The frame is `skipped` with the reason each night and restored the first night storage takes it."""
    objects = faults.reel(3)
    faults.write_s3(boto3.client("s3", endpoint_url=s3_endpoint), s3_bucket, "policy/in/", objects)
    raw = faults.base_job(f"s3://{s3_bucket}/policy/in", f"s3://{s3_bucket}/policy/out", endpoint_url=proxy.url,
                          max_attempts=1)
    proxy.hook = lambda request: "deny" if request.is_output_put and request.key == "policy/out/reel/f0001.png" else None
    try:
        nights = [faults.run_in_process(raw) for _ in range(2)]
    finally:
        proxy.hook = None
    assert [night.counts for night in nights] == [{"ok": 2, "skipped": 1}, {"skipped": 1}]
    output = open_storage(raw["output"], proxy.url)
    [row] = [row for row in latest_rows(read_manifests(output, "rel")) if row["status"] != "ok"]
    assert row["input_key"] == "reel/f0001.png" and row["status"] == "skipped"
    assert "access denied" in row["error"].lower()

    assert faults.run_in_process(raw).counts == {"ok": 1}
    assert faults.check_job(output, "rel", faults.frame_keys(objects)).clean


def test_conditional_create_whose_answer_was_lost_still_counts_as_created(s3_endpoint, s3_bucket, proxy):
    """A lease taken through S3 whose 200 was lost: the retry meets 412, yet the object is ours."""
    storage = open_storage(f"s3://{s3_bucket}/out", proxy.url)
    proxy.fault_rate, proxy.fault_after_apply, proxy.max_faults = 1.0, 1.0, 1  # the first answer is lost
    assert storage.put_if_absent("_manifests/j/_lease/000000000001.json", b'{"holder": "me"}') is True
    assert proxy.injected == 1
    assert storage.put_if_absent("_manifests/j/_lease/000000000001.json", b'{"holder": "other"}') is False


def test_an_object_whose_body_breaks_off_mid_transfer_is_fetched_again(s3_endpoint, s3_bucket, proxy):
    """boto3 retries a request that fails, not the reading of an answer's body."""
    storage = open_storage(f"s3://{s3_bucket}/in", proxy.url)
    data = bytes(range(256)) * 64
    storage.put("frame.png", data)
    cut = []

    def truncate_first_two_gets(request):
        if request.method == "GET" and request.key.endswith("frame.png") and len(cut) < 2:
            cut.append(request.key)
            return "truncate"
        return None

    proxy.hook = truncate_first_two_gets
    assert storage.read("frame.png")[0] == data  # the third fetch is whole
    assert len(cut) == 2
    cut.clear()
    proxy.hook = lambda request: "truncate" if request.method == "GET" else None
    with pytest.raises(StorageError, match=f"cannot read s3://{s3_bucket}/in/frame.png"):
        storage.read("frame.png")  # a body that never arrives whole is an error, after a few fetches


# ---------------------------------------------------------------------------------------------- load (opt-in)

@soak
@needs_soak
def test_two_thousand_frames_with_flat_memory(tmp_path):
    figures = {frames: faults.load_figures(tmp_path / str(frames), frames) for frames in (200, 2000)}
    for frames, figure in figures.items():
        assert figure["counts"] == {"ok": frames} and (figure["lost"], figure["duplicated"]) == (0, 0)
    # Flat: ten times the frames may not cost the driver or a worker anywhere near ten times the memory.
    assert figures[2000]["driver_peak_rss_mb"] < 1.5 * figures[200]["driver_peak_rss_mb"]
    assert figures[2000]["worker_peak_rss_mb"] < 1.5 * figures[200]["worker_peak_rss_mb"]
