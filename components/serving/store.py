"""Where a model repository lives: a local folder or ``s3://bucket/prefix`` (boto3, MinIO via AWS_ENDPOINT_URL).

Both offer the same few operations on keys relative to the repository root, so the publish logic is written
once. Credentials come from boto3's standard chain; ``AWS_ENDPOINT_URL`` (read by boto3 itself) points at
MinIO or a test server.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from components.io.checksums import sha256_file, sha256_stream


class StoreError(RuntimeError):
    """The repository location cannot be used (missing bucket, refused credentials, ...)."""


class StoreUnreachable(StoreError, ConnectionError):
    """The storage endpoint did not answer: a failure that may pass (the CLI exits 75 for it)."""


class Store(Protocol):
    url: str

    def list(self, prefix: str) -> list[str]: ...
    def read(self, key: str) -> bytes | None: ...
    def write(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> bool: ...
    def upload(self, key: str, source: Path) -> None: ...
    def sha256(self, key: str) -> str: ...
    def fingerprint(self, key: str) -> str | None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()) if base.exists() else []

    def read(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def write(self, key: str, data: bytes) -> None:
        # temp + rename: a reader (Triton polling) sees the old file or the new one, never half of one.
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (O_EXCL); False when another writer got there first."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def upload(self, key: str, source: Path) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)

    def sha256(self, key: str) -> str:
        return sha256_file(self.root / key)

    def fingerprint(self, key: str) -> str | None:
        """What changes whenever the file is written (None: missing): a file's hash is only recomputed then."""
        try:
            st = (self.root / key).stat()
        except FileNotFoundError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Store:
    def __init__(self, url: str) -> None:
        import boto3  # deferred: local publishing should not need AWS configuration
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)
        parsed = urlparse(url)
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        self.client = boto3.client("s3")
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            raise _error(exc, f"{url}: bucket {self.bucket!r} is not usable") from None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except self._errors as exc:
            raise _error(exc, f"{self.url}: {what} failed") from None

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        except self._errors as exc:
            raise _error(exc, f"{self.url}: listing failed") from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except self._errors as exc:
            raise _error(exc, f"{self.url}: reading {key} failed") from None

    def write(self, key: str, data: bytes) -> None:
        self._call(f"writing {key}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        """A conditional write (``If-None-Match: *``, S3 and MinIO since 2024): two publishers on two machines
        cannot both claim the same version. A store that ignores the header degrades to a plain write."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise _error(exc, f"{self.url}: writing {key} failed") from None
        except self._errors as exc:
            raise _error(exc, f"{self.url}: writing {key} failed") from None
        return True

    def upload(self, key: str, source: Path) -> None:
        self._call(f"uploading {key}", self.client.upload_file, Filename=str(source), Bucket=self.bucket,
                   Key=self._key(key))

    def sha256(self, key: str) -> str:
        """Hash of the stored bytes, streamed back: what a reader will get, not what was sent."""
        body = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))["Body"]
        return sha256_stream(body)

    def fingerprint(self, key: str) -> str | None:
        """ETag, size and modification time as S3 sets them on every write (None: missing): a writer can
        choose none of them, so an object whose fingerprint is unchanged holds the bytes hashed before."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _error(exc, f"{self.url}: reading {key} failed") from None
        except self._errors as exc:
            raise _error(exc, f"{self.url}: reading {key} failed") from None
        return f"{head['ETag']}:{head['ContentLength']}:{head['LastModified'].isoformat()}"

    def delete(self, key: str) -> None:
        self._call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self._call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))


def _error(exc: Exception, what: str) -> StoreError:
    """Unreachable endpoints are transient (:class:`StoreUnreachable`); refusals and missing buckets are not."""
    from botocore.exceptions import ConnectionError as BotoConnectionError  # endpoint refused, connect timeout
    from botocore.exceptions import ReadTimeoutError

    kind = StoreUnreachable if isinstance(exc, BotoConnectionError | ReadTimeoutError) else StoreError
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return kind(f"{what} ({_reason(exc)})" + (f" [endpoint {endpoint}]" if endpoint else ""))


def _reason(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return f"{error.get('Code')}: {error.get('Message')}" if error else str(exc)


def open_store(target: str | Path) -> Store:
    target = str(target)
    if target.startswith("s3://"):
        if not urlparse(target).netloc:
            raise StoreError(f"{target}: no bucket in the S3 URL")
        return S3Store(target)
    return LocalStore(Path(target))
