"""Storage: local folders and S3 (moto's server on loopback) behave the same to the pipeline."""
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from restore.storage import (
    ArchivedObjectError,
    LocalStorage,
    NoSuchObjectError,
    S3Storage,
    StorageError,
    StorageUnavailableError,
    TEMP_PREFIX,
    UnsafeKeyError,
    check_no_overlap,
    open_storage,
    safe_key,
)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """The same tests run against both backends."""
    if request.param == "local":
        return open_storage(str(tmp_path / "root"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/root", endpoint_url=endpoint)


def test_put_get_head_round_trip(storage):
    info = storage.put("reel1/frame_0001.png", b"pixels", content_type="image/png")
    assert (info.key, info.size) == ("reel1/frame_0001.png", 6)
    assert storage.get("reel1/frame_0001.png") == b"pixels"
    assert storage.head("reel1/frame_0001.png").etag == info.etag
    assert storage.head("reel1/missing.png") is None


def test_replacing_an_object_changes_its_etag(storage):
    first = storage.put("a.png", b"one")
    second = storage.put("a.png", b"two!")
    assert storage.get("a.png") == b"two!"
    assert second.etag != first.etag
    assert storage.head("a.png").etag == second.etag


def test_list_is_recursive_sorted_and_filtered(storage):
    for key in ["b/2.TIF", "a-b.png", "a/x.png", "notes.txt", "_manifests/job/part-0.parquet"]:
        storage.put(key, b"x" * len(key))
    listed = list(storage.list(["*.png", "*.tif"]))
    assert [o.key for o in listed] == ["a-b.png", "a/x.png", "b/2.TIF"]
    assert [o.size for o in listed] == [7, 7, 7]
    assert all(o.etag == storage.head(o.key).etag for o in listed)
    assert [o.key for o in storage.list(exclude_prefixes=["_manifests/"])] == [
        "a-b.png", "a/x.png", "b/2.TIF", "notes.txt"
    ]
    assert [o.key for o in storage.list(prefix="_manifests/")] == ["_manifests/job/part-0.parquet"]


def test_put_if_absent_creates_once(storage):
    assert storage.put_if_absent("leases/frame_1", b"worker-a") is True
    assert storage.put_if_absent("leases/frame_1", b"worker-b") is False
    assert storage.get("leases/frame_1") == b"worker-a"
    storage.delete("leases/frame_1")
    assert storage.head("leases/frame_1") is None
    assert storage.put_if_absent("leases/frame_1", b"worker-b") is True


def test_put_if_absent_has_one_winner_under_contention(storage):
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(storage.put_if_absent("lease", str(i).encode())))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.parametrize("key", ["", "..", "../escape.png", "a/../../b", "/etc/passwd", "a//b", "./a", "a\\b", "a\x00b", "a/"])
def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(UnsafeKeyError):
        storage.put(key, b"x")
    with pytest.raises(UnsafeKeyError):
        storage.get(key)


def test_safe_keys_pass_unchanged():
    assert safe_key("reel 1/frame é 01.png") == "reel 1/frame é 01.png"


def test_storage_survives_pickling(storage):
    storage.put("a.png", b"data")
    clone = pickle.loads(pickle.dumps(storage))  # as when shipped to a Ray worker, after the client was used
    assert clone.get("a.png") == b"data"
    assert clone.uri == storage.uri


def test_missing_key_is_a_clear_error(storage):
    with pytest.raises(NoSuchObjectError, match="missing.png"):  # on both backends: callers read to find out
        storage.get("missing.png")


# --- local specifics -------------------------------------------------------------------------------------------


def test_local_put_is_atomic_and_leaves_no_temp_files(tmp_path):
    storage = LocalStorage(tmp_path)
    for i in range(20):
        storage.put("out/frame.png", f"version {i}".encode())
        storage.put_if_absent("out/lease", b"x")
    assert sorted(os.listdir(tmp_path / "out")) == ["frame.png", "lease"]
    assert (tmp_path / "out/frame.png").read_bytes() == b"version 19"


def test_local_list_hides_temp_files_of_interrupted_writes(tmp_path):
    (tmp_path / ".restore-tmp-0123-frame.png").write_bytes(b"half")
    (tmp_path / "frame.png").write_bytes(b"whole")
    assert [o.key for o in LocalStorage(tmp_path).list()] == ["frame.png"]


def test_local_etag_changes_when_the_file_changes(tmp_path):
    storage = LocalStorage(tmp_path)
    before = storage.put("scan.tif", b"original").etag
    os.utime(tmp_path / "scan.tif", ns=(1, 1))
    assert storage.head("scan.tif").etag != before


def test_local_reads_work_on_read_only_originals(tmp_path):
    original = tmp_path / "in" / "scan.png"
    original.parent.mkdir()
    original.write_bytes(b"original")
    original.chmod(0o444)
    assert LocalStorage(tmp_path / "in").get("scan.png") == b"original"


def test_local_write_through_symlink_out_of_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeKeyError, match="symbolic link"):
        LocalStorage(tmp_path / "root").put("link/x.png", b"x")
    assert os.listdir(tmp_path / "elsewhere") == []


def test_a_local_listing_walks_its_prefixs_folder_not_the_millions_of_files_beside_it(tmp_path, monkeypatch):
    """A job's lease folder is listed at every commit, inside an output that holds every frame and thumbnail."""
    storage = LocalStorage(tmp_path)
    for key in ("frames/a.png", "frames/b.png", "_manifests/job/_lease/0001", "_manifests/job/part-1.parquet"):
        storage.put(key, b"x")
    walked = []
    walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, **kwargs: walked.append(top) or walk(top, **kwargs))
    assert [info.key for info in storage.list(prefix="_manifests/job/_lease/")] == ["_manifests/job/_lease/0001"]
    assert [info.key for info in storage.list(prefix="_manifests/job/p")] == ["_manifests/job/part-1.parquet"]
    assert [info.key for info in storage.list(prefix="fr")] == ["frames/a.png", "frames/b.png"]
    assert walked == [tmp_path / "_manifests" / "job" / "_lease", tmp_path / "_manifests" / "job", tmp_path]
    os.symlink(tmp_path / "frames", tmp_path / "linked")  # a walk from the root never entered it: nor does this
    assert list(storage.list(prefix="linked/")) == [] and [i.key for i in storage.list()][-1] == "frames/b.png"
    assert list(storage.list(prefix="frames/a.png/")) == []  # a file where the prefix's folder would be
    with pytest.raises(UnsafeKeyError):
        list(storage.list(prefix="../"))


def test_a_folder_not_made_yet_lists_as_empty_like_an_s3_prefix(tmp_path):
    assert list(LocalStorage(tmp_path / "not-yet").list(prefix="_manifests/")) == []
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError, match="not a folder"):
        list(LocalStorage(tmp_path / "file").list())


def test_open_storage_understands_uris(tmp_path, monkeypatch):
    assert LocalStorage(tmp_path).uri == open_storage(f"file://{tmp_path}").uri == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert open_storage("relative/in").uri == str(tmp_path / "relative/in")  # absolute, so workers agree
    s3 = open_storage("s3://bucket/some/prefix/")
    assert (s3.bucket, s3.prefix, s3.uri) == ("bucket", "some/prefix/", "s3://bucket/some/prefix/")
    with pytest.raises(StorageError, match="unsupported"):
        open_storage("gs://bucket/x")


# --- overlap --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_uri, output_uri",
    [("{d}/in", "{d}/in/restored"), ("{d}/in/", "file://{d}/in"), ("{d}/out/in", "{d}/out"),
     ("s3://b/in", "s3://b/in/out"), ("s3://b", "s3://b/restored"), ("s3://b/x/in", "s3://b/x")],
)
def test_overlapping_input_and_output_are_refused(tmp_path, input_uri, output_uri):
    with pytest.raises(StorageError, match="overlaps"):
        check_no_overlap(input_uri.format(d=tmp_path), output_uri.format(d=tmp_path))


@pytest.mark.parametrize(
    "input_uri, output_uri",
    [("{d}/in", "{d}/input-restored"), ("s3://b/in", "s3://b/input"), ("s3://a/in", "s3://b/in"), ("{d}/in", "s3://b/in")],
)
def test_disjoint_input_and_output_are_accepted(tmp_path, input_uri, output_uri):
    check_no_overlap(input_uri.format(d=tmp_path), output_uri.format(d=tmp_path))


def test_overlap_is_seen_through_symlinks(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "in")
    with pytest.raises(StorageError, match="overlaps"):
        check_no_overlap(str(tmp_path / "in"), str(tmp_path / "alias" / "out"))


# --- S3 specifics ---------------------------------------------------------------------------------------------


def test_s3_missing_bucket_is_a_clear_error_without_credentials(s3_endpoint):
    storage = open_storage("s3://no-such-bucket-here/x", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist") as caught:
        list(storage.list())
    with pytest.raises(StorageError) as caught_get:
        storage.get("a.png")
    for error in (caught.value, caught_get.value):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(error)
        assert os.environ["AWS_ACCESS_KEY_ID"] not in str(error)


def test_an_endpoint_password_never_appears_in_an_s3_error():
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    storage = S3Storage("bucket", "in", endpoint_url="http://labuser:S3cr3t@Pw@127.0.0.1:9")
    for error in (ReadTimeoutError(endpoint_url="http://labuser:S3cr3t@Pw@127.0.0.1:9/bucket/in/a@b.png"),
                  ConnectTimeoutError(endpoint_url="http://labuser:S3cr3t@Pw@127.0.0.1:9/bucket/in/a@b.png")):
        message = str(storage._error("read", "a@b.png", error))
        assert "S3cr3t" not in message and "Pw" not in message and "labuser" not in message
        assert "127.0.0.1:9/bucket/in/a@b.png" in message  # a key's own '@' stays


def test_s3_versioned_bucket_reports_version_ids(s3_endpoint, s3_bucket):
    boto3.client("s3", endpoint_url=s3_endpoint).put_bucket_versioning(
        Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    storage = S3Storage(s3_bucket, "out", endpoint_url=s3_endpoint)
    first = storage.put("a.png", b"one")
    second = storage.put("a.png", b"two")
    assert first.version_id and second.version_id and first.version_id != second.version_id
    assert storage.head("a.png").version_id == second.version_id
    data, info = storage.read("a.png")
    assert data == b"two" and info.version_id == second.version_id and info.etag == second.etag


def test_s3_archived_object_cannot_be_read(s3_endpoint, s3_bucket):
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=s3_bucket, Key="in/old.tif", Body=b"scan", StorageClass="GLACIER"
    )
    storage = S3Storage(s3_bucket, "in", endpoint_url=s3_endpoint)
    assert [(o.key, o.storage_class) for o in storage.list()] == [("old.tif", "GLACIER")]
    assert storage.head("old.tif").storage_class == "GLACIER"
    with pytest.raises(ArchivedObjectError, match="archival storage class.*GLACIER.*restore it first"):
        storage.get("old.tif")


def test_s3_listing_pages_and_skips_folder_markers(s3_endpoint, s3_bucket):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="in/reel/", Body=b"")
    keys = [f"reel/frame_{i:04d}.png" for i in range(1003)]  # more than one 1,000-key page
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=s3_bucket, Key="in/" + key, Body=b"x"), keys))
    client.put_object(Bucket=s3_bucket, Key="input-other/frame.png", Body=b"x")  # shares the prefix's letters
    assert [o.key for o in S3Storage(s3_bucket, "in", endpoint_url=s3_endpoint).list()] == keys


def test_orphaned_temp_files_of_a_killed_writer_are_removed(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("keep/a.png", b"a")
    orphan = tmp_path / "keep" / f"{TEMP_PREFIX}dead-a.png"
    orphan.write_bytes(b"half")
    assert storage.remove_orphaned_temp_files() == 1
    assert not orphan.exists() and (tmp_path / "keep" / "a.png").read_bytes() == b"a"


@pytest.mark.parametrize("code, status, unavailable", [
    ("SlowDown", 503, True), ("AccessDenied", 403, True), ("ExpiredToken", 400, True), ("InternalError", 500, True),
    ("SomethingNew", 502, True), ("NoSuchKey", 404, False), ("KeyTooLongError", 400, False),
    ("EntityTooLarge", 400, False), ("InvalidRequest", 400, False),
])
def test_s3_errors_say_whether_storage_or_the_object_is_at_fault(code, status, unavailable):
    """A throttled, failing or denying service can serve the frame another night (a job skips it, never gives it
    up); an error about the object itself fails the frame."""
    from botocore.exceptions import ClientError

    storage = open_storage("s3://bucket/prefix")
    error = storage._error("write", "k.png", ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"))
    assert isinstance(error, StorageError) and isinstance(error, StorageUnavailableError) == unavailable
    assert str(error).startswith("cannot write s3://bucket/prefix/k.png: ")


def test_a_local_write_over_a_folder_is_the_objects_fault_not_the_storages(tmp_path):
    (tmp_path / "frame.png").mkdir()  # a folder where the output goes
    with pytest.raises(StorageError) as raised:
        open_storage(str(tmp_path)).put("frame.png", b"x")
    assert not isinstance(raised.value, StorageUnavailableError)
