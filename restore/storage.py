"""Where frames come from and go to: a local folder or an S3 bucket, behind one small interface.

Keys are always relative to the storage root and use "/" as separator. Every key passes `safe_key`, so a
hostile key can never reach outside the root. Originals are only ever read; writes go to our own outputs.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import unquote, urlsplit

try:
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, IncompleteReadError,
                                     NoCredentialsError, ResponseStreamingError)
except ImportError:  # boto3 serves s3:// locations only: where it is not installed, local folders still work
    class _NoBotocore(Exception):
        """Stands in for botocore's errors in except clauses; never raised."""

    BotoCoreError = ClientError = EndpointConnectionError = IncompleteReadError = _NoBotocore
    NoCredentialsError = ResponseStreamingError = _NoBotocore

TEMP_PREFIX = ".restore-tmp-"  # local atomic writes stage their bytes under this name, beside the target
# boto3's standard retry mode: exponential backoff with jitter on throttling, 5xx, timeouts and refused connections.
# Its waits are rand(0, 1) x 50 ms x 2^i (capped at 20 s) for all but throttling, so the 7 waits of 8 attempts sum
# to 3.2 s on average (6.35 s at most): a short outage could fail a request. The 11 waits of 12 attempts sum to 33 s
# on average (66 s at most), and an endpoint that never answers is reported after about as long. Per request:
# boto3's retry quota still cuts retries short when many requests of one client fail at once.
S3_MAX_ATTEMPTS = 12
S3_CONNECTIONS = 32  # per client: threads that check or verify many objects each hold one
S3_BODY_ATTEMPTS = 3  # fetches of an object whose body broke off mid-transfer: boto3 retries requests, not bodies


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root, posix
    size: int
    etag: str  # S3 ETag without quotes; local: f"{mtime_ns:x}-{size:x}": an edit changes it, unless the new bytes
    #            have the same size and the copy that wrote them kept the old modification time (cp -p, rsync -t)
    version_id: str | None = None  # S3 VersionId on versioned buckets (put and head; listing does not report it)
    storage_class: str | None = None  # S3 StorageClass as reported ("STANDARD", "GLACIER", ...); None locally


class StorageError(Exception):
    """A storage operation failed; the message names the URI or key and never carries credentials."""


class UnsafeKeyError(StorageError):
    """A key that could resolve outside the storage root, or to a different object than it names."""


class NoSuchObjectError(StorageError):
    """The key names no object (S3 NoSuchKey, a missing file): reading is how its absence is learnt in one
    request instead of a HEAD and then a GET."""


class StorageUnavailableError(StorageError):
    """Storage could not serve the request now (throttled, failing, unreachable, out of space, or denying these
    credentials): no fault of the object, so the same request can succeed on another night."""


# Storage classes whose objects are read only once restored (S3 RestoreObject): the restored copy expires again, and
# a restored object lists with the class it had. GLACIER_IR is read at once, at a retrieval fee.
ARCHIVAL_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


class ArchivedObjectError(StorageUnavailableError):
    """The object sits in an archival storage class and must be restored (S3 RestoreObject) before reading."""


# S3 error codes of a service that cannot serve the request now, as opposed to one about the request itself
_UNAVAILABLE_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                      "TokenRefreshRequired", "RequestTimeTooSkewed", "NoSuchBucket", "SlowDown", "Throttling",
                      "ThrottlingException", "RequestLimitExceeded", "RequestTimeout", "ServiceUnavailable",
                      "InternalError", "500", "502", "503", "504"}
# and local errors of the same kind: no space, no permission, a read-only or failing disk or network share
_UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                       errno.ETIMEDOUT, errno.ENOTCONN, errno.ESTALE, errno.EAGAIN}


def _local_error(message: str, error: OSError) -> StorageError:
    unavailable = error.errno in _UNAVAILABLE_ERRNOS
    return (StorageUnavailableError if unavailable else StorageError)(f"{message}: {error.strerror}")


def _listed_key(name: str) -> str:
    """A local file's key. A name that is not UTF-8 (Latin-1 from an old share) cannot be a key; it is listed with
    those bytes escaped (\\xe9), a key that every read refuses, so the file fails with a reason instead of the
    manifest, which holds UTF-8 only, failing the run."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def safe_key(key: str) -> str:
    """Return `key` if it is a plain relative key, else raise UnsafeKeyError.

    Refuses rather than normalises: on S3 "a//b", "a/./b" and "a/b" are three different objects, so silently
    rewriting a key could read or overwrite the wrong one.
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"empty or non-string key: {key!r}")
    if "\x00" in key or "\\" in key:
        raise UnsafeKeyError(f"key contains a NUL or backslash: {key!r} (a local file whose name is not UTF-8 is "
                             "listed with those bytes escaped as \\xNN: rename it)")
    if key.startswith("/"):
        raise UnsafeKeyError(f"absolute key refused: {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise UnsafeKeyError(f"key with an empty, '.' or '..' component refused: {key!r}")
    return key


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """Open "/path", "relative/path", "file:///path" or "s3://bucket/prefix"; `endpoint_url` is for S3 only."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"S3 URI without a bucket: {uri!r}")
        return S3Storage(parts.netloc, parts.path.strip("/"), endpoint_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file URI on another host is not supported: {uri!r}")
        return LocalStorage(unquote(parts.path))
    if parts.scheme:
        raise StorageError(f"unsupported storage URI {uri!r}: expected a path, file://... or s3://bucket/prefix")
    if not uri:
        raise StorageError("empty storage URI")
    return LocalStorage(uri)


def check_no_overlap(input_uri: str, output_uri: str) -> None:
    """Refuse an output inside the input or vice versa, so outputs are never listed as inputs nor written over originals."""
    a, b = open_storage(input_uri), open_storage(output_uri)
    if isinstance(a, LocalStorage) and isinstance(b, LocalStorage):
        x, y = a.root.resolve(), b.root.resolve()
        nested = x == y or x in y.parents or y in x.parents
    elif isinstance(a, S3Storage) and isinstance(b, S3Storage):
        nested = a.bucket == b.bucket and (a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix))
    else:
        nested = False
    if nested:
        raise StorageError(f"output {output_uri!r} overlaps input {input_uri!r}: use a location outside the input")


def _without_userinfo(text: str) -> str:
    """`https://user:password@host/…` → `https://host/…` wherever a URL appears in a message."""
    return re.sub(r"(?<=//)[^/\s\"']*@", "", text)  # up to the last '@' before the path: a password may hold one


def same_location(a: str, b: str) -> bool:
    """Whether two storage URIs name the same place (`s3://bucket/reel` and `s3://bucket/reel/` do)."""
    return a.rstrip("/") == b.rstrip("/")


def key_matches(key: str, patterns: Sequence[str]) -> bool:
    """Whether an fnmatch pattern matches the key or its basename, case-insensitively, as `Storage.list` keeps keys."""
    key, base = key.lower(), key.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(key, p.lower()) or fnmatch.fnmatchcase(base, p.lower()) for p in patterns)


class Storage(ABC):
    """A root (folder or bucket prefix) holding objects addressed by relative keys."""

    uri: str

    def list(
        self, patterns: Sequence[str] = ("*",), prefix: str = "", exclude_prefixes: Sequence[str] = ()
    ) -> Iterator[ObjectInfo]:
        """Objects under the root, recursively, sorted by key.

        A key is kept when any fnmatch pattern matches it or its basename, case-insensitively (archives mix
        ".TIF" and ".tif"). `prefix` narrows the listing (on S3 server-side); keys starting with any of
        `exclude_prefixes` (for example "_manifests/") are skipped. Temp files of our own atomic writes never
        appear. A location with no objects, even one that does not exist yet, lists as empty on both backends,
        so callers decide whether that is an error. Keys are returned as stored, even unsafe ones, so a caller
        can report them instead of losing them.
        """
        for info in self._iter_objects(prefix):
            if not info.key.startswith(tuple(exclude_prefixes)) and key_matches(info.key, patterns):
                yield info

    @abstractmethod
    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""

    def get(self, key: str) -> bytes:
        return self.read(key)[0]

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The object's bytes and the info of exactly the version read (ETag, VersionId), from one request."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    def archive_state(self, key: str) -> str | None:
        """Why an object of an archival storage class cannot be read now: "archived" (not restored, or its restored
        copy expired) or "restoring" (a RestoreObject is under way); None when it can be, or is gone."""
        return None

    def request_restore(self, key: str, version_id: str | None, days: int, tier: str) -> None:
        """Ask an archived object back (S3 RestoreObject) for `days` days at retrieval `tier`; one already being
        restored is no error. Only storage with archival classes can."""
        raise StorageError(f"cannot restore {key!r}: {self.uri} has no archival storage")

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None,
            storage_class: str | None = None) -> ObjectInfo:
        """Write (or replace) the object atomically: readers see the old bytes or the new, never a part.
        `storage_class`: S3's for the object (the bucket's default when None); a local folder has none."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has the key; True if this call created it.

        Write unique content (a holder and a time): on S3, finding our exact bytes already there counts as created,
        since that is what a retry sees when the first attempt's answer was lost.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists; only used on our own outputs and leases."""

    def remove_orphaned_temp_files(self) -> int:
        """Delete staging files left by a writer that was killed mid-write; call only while holding the job's lease.

        Object stores publish a put whole or not at all, so only local folders ever have any.
        """
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStorage(Storage):
    """A folder; the root is resolved to an absolute path up front so workers with another cwd agree."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*safe_key(key).split("/"))

    def _writable_path(self, key: str) -> Path:
        """The path for a write, refusing a symlinked folder that would lead the write out of the root."""
        path = self._path(key)
        if not path.parent.resolve().is_relative_to(self.root.resolve()):
            raise UnsafeKeyError(f"key {key!r} leads outside {self.uri} through a symbolic link")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"not a folder: {self.uri}")
        found = []  # a missing folder lists as empty, like an S3 prefix that holds no objects yet
        # from the prefix's own folder: a job's lease or manifest folder is listed at every commit, and the output
        # around it holds millions of frames, masks and thumbnails
        folders = prefix.split("/")[:-1]
        if any(folder in ("..", ".") for folder in folders):
            raise UnsafeKeyError(f"listing prefix leads out of the folder: {prefix!r}")
        start = self.root.joinpath(*folders)
        if any(self.root.joinpath(*folders[:depth]).is_symlink() for depth in range(1, len(folders) + 1)):
            return iter([])  # as a walk from the root, which never enters a symlinked folder
        for folder, dirs, files in os.walk(start, onerror=self._walk_error):
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                key = _listed_key(name if rel == "." else f"{rel}/{name}")
                if name.startswith(TEMP_PREFIX) or not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:  # removed while we listed
                    continue
                found.append(self._info(key, st))
        # os.walk order is not key order ("a-b" sorts before "a/x"), so sort the whole listing
        return iter(sorted(found, key=lambda info: info.key))

    def _walk_error(self, error: OSError) -> None:
        # the root not made yet, a folder removed while we listed, a prefix whose folder is a file: nothing there
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            return
        raise StorageError(f"cannot list {error.filename}: {error.strerror}") from error

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._path(key)
        try:
            if not os.path.realpath(path).startswith(os.path.join(os.path.realpath(self.root), "")):
                raise StorageError(f"{key!r} in {self.uri} is a symbolic link leading out of the folder: copy the "
                                   "file in, or point the job at the folder it lies in")
            # read-only: originals are never opened for writing; non-blocking: a FIFO must not hang the worker
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{key!r} in {self.uri} is not a regular file (a pipe, socket or device)")
                return f.read(), self._info(key, st)
        except FileNotFoundError:
            raise NoSuchObjectError(f"no such file: {key!r} in {self.uri}") from None
        except OSError as e:
            raise _local_error(f"cannot read {key!r} in {self.uri}", e) from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return self._info(key, st)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """Write and fsync `data` to a fresh temp file beside `path`, so a rename or link can publish it whole."""
        tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _sync_folder(self, folder: Path) -> None:
        """fsync the folder so the new name itself survives a power cut."""
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes, content_type: str | None = None,
            storage_class: str | None = None) -> ObjectInfo:
        path = self._writable_path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._sync_folder(path.parent)
            return self._info(key, path.stat())
        except OSError as e:
            raise _local_error(f"cannot write {key!r} in {self.uri}", e) from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._writable_path(key)
        try:
            tmp = self._write_temp(path, data)
            try:
                os.link(tmp, path)  # atomic, fails if the name exists, and the file appears complete
                created = True
            except FileExistsError:
                created = False
            finally:
                tmp.unlink()
            if created:
                self._sync_folder(path.parent)
            return created
        except OSError as e:
            raise _local_error(f"cannot create {key!r} in {self.uri}", e) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} in {self.uri}: {e.strerror}") from None

    def remove_orphaned_temp_files(self) -> int:
        removed = 0
        for path in self.root.rglob(f"{TEMP_PREFIX}*") if self.root.is_dir() else ():
            path.unlink(missing_ok=True)
            removed += 1
        return removed


class S3Storage(Storage):
    """A bucket prefix on AWS S3 or any S3-compatible service (MinIO, Ceph).

    Credentials come only from boto3's default chain (environment, shared profile, instance or pod role).
    The client is created lazily and left out of pickles, so a storage object can be shipped to Ray workers.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = f"{safe_key(prefix)}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.uri = f"s3://{bucket}/{self.prefix}"
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
                            max_pool_connections=S3_CONNECTIONS)
            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _error(self, action: str, key: str | None, error: Exception) -> StorageError:
        """Turn a botocore error into a StorageError naming the object and never the credentials."""
        where = f"{self.uri}{key}" if key is not None else self.uri
        if isinstance(error, NoCredentialsError):
            return StorageUnavailableError(
                f"cannot {action} {where}: no S3 credentials found (boto3 looks in AWS_* environment variables,"
                " the shared config and credentials files, and the instance or pod role)"
            )
        if isinstance(error, EndpointConnectionError):
            # name host and port only: an endpoint URL could embed a user and password
            endpoint = urlsplit(self.endpoint_url or "https://s3.amazonaws.com")
            return StorageUnavailableError(f"cannot {action} {where}: cannot connect to "
                                           f"{endpoint.hostname}:{endpoint.port or 443}")
        if not isinstance(error, ClientError):  # timeouts, broken connections: botocore quotes the endpoint URL,
            # which may embed a password
            return StorageUnavailableError(f"cannot {action} {where}: {type(error).__name__}: "
                                           f"{_without_userinfo(str(error))}")
        code = error.response.get("Error", {}).get("Code", "")
        if code == "InvalidObjectState":
            return ArchivedObjectError(
                f"cannot {action} {where}: the object is in an archival storage class"
                f" ({error.response['Error'].get('StorageClass', 'GLACIER')}); restore it first"
            )
        reason = {
            "NoSuchBucket": f"bucket {self.bucket!r} does not exist",
            "NoSuchKey": "no such key",
            "404": "no such key",
            "AccessDenied": "access denied (check the credentials' permissions for this bucket)",
            "403": "access denied (check the credentials' permissions for this bucket)",
            "InvalidAccessKeyId": "the access key id is not known to this S3 service",
            "SignatureDoesNotMatch": "the secret key does not match the access key id",
        }.get(code, f"{code}: {error.response.get('Error', {}).get('Message', '')}")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        unavailable = code in _UNAVAILABLE_CODES or status >= 500
        kind = StorageUnavailableError if unavailable else NoSuchObjectError if code in ("NoSuchKey", "404") \
            else StorageError
        return kind(f"cannot {action} {where}: {_without_userinfo(reason)}")

    def _iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix):]
                    if not key or key.endswith("/"):  # folder markers made by consoles are not objects
                        continue
                    yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), None, obj.get("StorageClass"))
        except (BotoCoreError, ClientError) as e:
            raise self._error("list", None, e) from None

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        for attempt in range(1, S3_BODY_ATTEMPTS + 1):
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.prefix + safe_key(key))
                data = r["Body"].read()
                break
            except (ResponseStreamingError, IncompleteReadError) as e:  # the connection dropped inside the body
                if attempt == S3_BODY_ATTEMPTS:
                    raise self._error("read", key, e) from None
            except (BotoCoreError, ClientError) as e:
                raise self._error("read", key, e) from None
        return data, ObjectInfo(key, len(data), r["ETag"].strip('"'), r.get("VersionId"), r.get("StorageClass"))

    def _head(self, key: str) -> dict | None:
        """The HEAD response, or None when there is no such object."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.prefix + safe_key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self._error("inspect", key, e) from None
        except BotoCoreError as e:
            raise self._error("inspect", key, e) from None

    def head(self, key: str) -> ObjectInfo | None:
        r = self._head(key)
        if r is None:
            return None
        # HEAD reports StorageClass only for non-STANDARD objects
        return ObjectInfo(key, r["ContentLength"], r["ETag"].strip('"'), r.get("VersionId"), r.get("StorageClass"))

    def archive_state(self, key: str) -> str | None:
        r = self._head(key)
        if r is None or r.get("StorageClass") not in ARCHIVAL_CLASSES:
            return None
        restore = r.get("Restore") or ""  # ongoing-request="false", expiry-date="…" once restored
        return "restoring" if 'ongoing-request="true"' in restore else None if restore else "archived"

    def request_restore(self, key: str, version_id: str | None, days: int, tier: str) -> None:
        extra = {"VersionId": version_id} if version_id else {}
        try:
            self.client.restore_object(Bucket=self.bucket, Key=self.prefix + safe_key(key), **extra,
                                       RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "RestoreAlreadyInProgress":
                raise self._error("restore", key, e) from None
        except BotoCoreError as e:
            raise self._error("restore", key, e) from None

    def put(self, key: str, data: bytes, content_type: str | None = None,
            storage_class: str | None = None) -> ObjectInfo:
        extra = {"ContentType": content_type} if content_type else {}
        if storage_class:
            extra["StorageClass"] = storage_class
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.prefix + safe_key(key), Body=data, **extra)
        except (BotoCoreError, ClientError) as e:
            raise self._error("write", key, e) from None
        return ObjectInfo(key, len(data), r["ETag"].strip('"'), r.get("VersionId"))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + safe_key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            # 412: the key exists; 409: another conditional write to it is in flight, so someone else wins
            code = e.response.get("Error", {}).get("Code")
            if code == "PreconditionFailed":
                # Or our own first attempt created it and its answer was lost (a 5xx or a dropped connection after
                # the write), so the retry found it: then it holds exactly our bytes (callers write unique content).
                return self.read(key)[0] == data
            if code == "ConditionalRequestConflict":
                return False
            raise self._error("create", key, e) from None
        except BotoCoreError as e:
            raise self._error("create", key, e) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + safe_key(key))
        except (BotoCoreError, ClientError) as e:
            raise self._error("delete", key, e) from None
