"""A backup target in an S3-compatible bucket (AWS, Backblaze B2, Wasabi, MinIO, Garage, ...).

Object `name` is the key `<prefix><name>`. Files over one part (8 MiB) are uploaded in parts
(multipart upload); an upload that fails or is cancelled is aborted, and one cut short harder
(kill -9) is aborted by `cleanup()` once it is an hour old. Connection errors, timeouts,
throttling and 5xx answers are retried a bounded number of times with growing delays, then
become a TargetError; every SDK error is translated here into a TargetError saying what to fix.
The secret key is never part of a message, a repr or a log line.

The endpoint may not lead to this machine's own services (loopback, link-local, metadata
addresses: services/dns/providers/reach.py), checked on the URL and again at every connection,
unless `allow_loopback` is set (tests, development).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from services.backup.targets.base import (
    ObjectInfo,
    TargetError,
    TargetMissing,
    check_name,
    probe,
)
from services.dns.errors import ProviderConfigError
from services.dns.providers.reach import GuardedResolver, check_url, refused_in

__all__ = ["PART_SIZE", "S3Target"]

PART_SIZE = 8 << 20
_MIN_PART = 5 << 20  # S3's smallest part but the last
_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)
_TRANSIENT_ERRORS = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
    ConnectionError,
    asyncio.TimeoutError,
)
_WRONG_REGION = ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint")
_Parts = list[bytes]  # named outside the class, whose `list` method shadows the builtin
_PREFIX = re.compile(r"^(?:[A-Za-z0-9._-]+/)*$")
_NAME_PREFIX = re.compile(r"^[a-z0-9/._-]{0,200}$")
_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 1, "mode": "standard"},  # retried here, with our messages
}


class S3Target:
    """Objects as keys `<prefix><name>` in one bucket (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        *,
        allow_loopback: bool = False,
        part_size: int = PART_SIZE,
        retry_delays: Sequence[float] = _RETRY_DELAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`prefix` is "" or ends with "/"; `endpoint_url` None means AWS itself."""
        if prefix and not _PREFIX.fullmatch(prefix):
            raise TargetError(f"not a valid key prefix: {prefix[:60]!r} (use e.g. 'homeport/')")
        if endpoint_url is not None:
            try:
                check_url("endpoint_url", endpoint_url, allow_loopback=allow_loopback)
            except ProviderConfigError as e:
                raise TargetError(str(e)) from None
        if part_size < _MIN_PART:
            raise TargetError(f"part size {part_size} is under S3's minimum of {_MIN_PART}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key = access_key
        self._secret = secret_key
        self._allow_loopback = allow_loopback
        self._part_size = part_size
        self._delays = tuple(retry_delays)
        self._clock = clock
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the secret
        return (
            f"S3Target(bucket={self.bucket!r}, prefix={self.prefix!r},"
            f" endpoint_url={self.endpoint_url!r}, access_key={self.access_key!r})"
        )

    @property
    def _where(self) -> str:
        return f"bucket {self.bucket} at {self.endpoint_url or 'AWS'} ({self.region})"

    # -- the Target protocol

    async def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        await self._call("put_object", f"storing {name}", Bucket=self.bucket, Key=key, Body=data)

    async def put_file(self, name: str, path: str, *, consume: bool = False) -> None:
        """In parts when large (`consume` changes nothing here: the caller removes it)."""
        key = self._key(name)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise TargetError(f"cannot read {path}: {e.strerror}") from e
        lock = threading.Lock()  # a cancelled read may still run in its thread: close after it
        try:
            first = await asyncio.to_thread(_read_part, fd, self._part_size, lock)
            second = (
                await asyncio.to_thread(_read_part, fd, self._part_size, lock)
                if (len(first) == self._part_size)
                else b""
            )
            if not second:
                await self.put(name, first)
                return
            await self._multipart(name, key, fd, lock, [first, second])
        finally:
            if lock.acquire(blocking=False):
                os.close(fd)
                lock.release()
            else:  # a cancelled read still blocks in its thread: it closes when it returns
                asyncio.get_running_loop().run_in_executor(None, _close_locked, fd, lock)

    async def get(self, name: str) -> bytes:
        key = self._key(name)
        return await self._read(name, f"reading {name}", Bucket=self.bucket, Key=key)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        key = self._key(name)
        if offset < 0 or length < 0:
            raise TargetError(f"bad range for {name}: offset {offset}, length {length}")
        if length == 0:
            if await self.stat(name) is None:
                raise TargetMissing(f"no object {name} in {self._where}")
            return b""
        rng = f"bytes={offset}-{offset + length - 1}"
        try:
            return await self._read(name, f"reading {name}", Bucket=self.bucket, Key=key, Range=rng)
        except _RangeBeyondEnd:
            return b""

    async def stat(self, name: str) -> ObjectInfo | None:
        key = self._key(name)
        try:
            head = await self._call(
                "head_object", f"looking up {name}", Bucket=self.bucket, Key=key
            )
        except TargetMissing:
            return None
        return ObjectInfo(name, int(head["ContentLength"]))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        if not _NAME_PREFIX.fullmatch(prefix) or ".." in prefix:
            raise TargetError(f"not a valid object name prefix: {prefix[:60]!r}")
        token: str | None = None
        while True:
            more = {"ContinuationToken": token} if token else {}
            page = await self._call(
                "list_objects_v2",
                "listing objects",
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                **more,
            )
            for item in page.get("Contents", ()):
                name = str(item["Key"])[len(self.prefix) :]
                try:
                    check_name(name)
                except TargetError:
                    continue  # not ours
                yield ObjectInfo(name, int(item["Size"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def delete(self, name: str) -> None:
        key = self._key(name)
        await self._call("delete_object", f"deleting {name}", Bucket=self.bucket, Key=key)

    async def check(self) -> None:
        """Write a probe object, read it back, compare, delete it; errors say which step."""
        await probe(self, "S3 check")

    async def cleanup(self, older_than: float = 3600.0) -> None:
        """Abort multipart uploads under the prefix started over `older_than` s ago."""
        cutoff = self._clock() - older_than
        more: dict[str, str] = {}
        while True:
            page = await self._call(
                "list_multipart_uploads",
                "listing unfinished uploads",
                Bucket=self.bucket,
                Prefix=self.prefix,
                **more,
            )
            for up in page.get("Uploads", ()):
                if up["Initiated"].timestamp() < cutoff:
                    await self._call(
                        "abort_multipart_upload",
                        "aborting an unfinished upload",
                        Bucket=self.bucket,
                        Key=up["Key"],
                        UploadId=up["UploadId"],
                    )
            if not page.get("IsTruncated"):
                return
            more = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    async def close(self) -> None:
        async with self._lock:
            if self._stack is not None:
                stack, self._stack, self._client = self._stack, None, None
                await stack.aclose()

    # -- helpers

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    async def _multipart(
        self, name: str, key: str, fd: int, lock: threading.Lock, parts: _Parts
    ) -> None:
        what = f"uploading {name}"
        up = await self._call("create_multipart_upload", what, Bucket=self.bucket, Key=key)
        upload_id = up["UploadId"]
        done: list[dict[str, Any]] = []
        try:
            while parts:
                number = len(done) + 1
                body = parts.pop(0)
                if not parts and len(body) == self._part_size:
                    parts.append(await asyncio.to_thread(_read_part, fd, self._part_size, lock))
                if not body:
                    break
                answer = await self._call(
                    "upload_part",
                    f"{what} (part {number})",
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                )
                done.append({"PartNumber": number, "ETag": answer["ETag"]})
            await self._call(
                "complete_multipart_upload",
                what,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            abort = self._call(
                "abort_multipart_upload", what, Bucket=self.bucket, Key=key, UploadId=upload_id
            )
            try:  # best effort: what is left is removed by cleanup()
                await asyncio.shield(asyncio.wait_for(abort, 15))
            except (TimeoutError, TargetError, asyncio.CancelledError):
                pass
            raise

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                session = aioboto3.Session(
                    aws_access_key_id=self.access_key,
                    aws_secret_access_key=self._secret,
                    region_name=self.region,
                )
                guard = (
                    {} if self._allow_loopback else {"resolver": GuardedResolver("endpoint_url")}
                )
                config = AioConfig(connector_args=guard, **_CONFIG)
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    session.client("s3", endpoint_url=self.endpoint_url, config=config)
                )
                self._stack = stack
            return self._client

    async def _read(self, name: str, what: str, **kwargs: Any) -> bytes:
        async def fetch() -> bytes:
            answer = await (await self._s3()).get_object(**kwargs)
            async with answer["Body"] as body:
                data: bytes = await body.read()
            return data

        data: bytes = await self._retrying(fetch, what)
        return data

    async def _call(self, op: str, what: str, **kwargs: Any) -> Any:
        async def once() -> Any:
            return await getattr(await self._s3(), op)(**kwargs)

        return await self._retrying(once, what)

    async def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        for attempt in range(len(self._delays) + 1):
            try:
                return await fn()
            except ClientError as e:
                error = self._translate(e, what)
                transient = _code(e) in _TRANSIENT_CODES or _status(e) >= 500
            except (TimeoutError, BotoCoreError, OSError) as e:
                refused = refused_in(e)
                if refused is not None:
                    raise TargetError(self._scrub(str(refused))) from None
                transient = isinstance(e, _TRANSIENT_ERRORS)
                error = TargetError(
                    self._scrub(
                        f"cannot reach {self.endpoint_url or 'S3'} for {what}"
                        f" ({type(e).__name__}: {e}): check endpoint_url, region and the network"
                    )
                )
            if not transient or attempt == len(self._delays):
                raise error from None
            delay = self._delays[attempt]
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, e: ClientError, what: str) -> TargetError:
        code, status = _code(e), _status(e)
        msg = str((e.response.get("Error") or {}).get("Message", "")).strip()
        key = self.access_key
        if code == "InvalidRange":
            return _RangeBeyondEnd(what)
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code in ("404", "")):
            return TargetMissing(f"no object for {what} in {self._where}")
        if code == "NoSuchBucket":
            return TargetError(f"{self._where} does not exist ({what}): check bucket and region")
        if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
            return TargetError(f"S3 does not know the access key {key} ({what}): check access_key")
        if code in ("SignatureDoesNotMatch", "IncompleteSignature"):
            return TargetError(
                f"S3 refused the secret key given for access key {key} ({what}): check secret_key"
            )
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return TargetError(
                f"access key {key} may not do {what} in {self._where}: allow s3:PutObject,"
                " s3:GetObject, s3:DeleteObject, s3:ListBucket and s3:AbortMultipartUpload"
                " on it"
            )
        if code in (
            "PermanentRedirect",
            "AuthorizationHeaderMalformed",
            "IllegalLocationConstraint",
        ):
            return TargetError(f"{self._where} is in another region ({what}): check region")
        detail = f"{code or status}: {msg}" if msg else str(code or status)
        return TargetError(self._scrub(f"S3 refused {what} in {self._where} ({detail})"))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


class _RangeBeyondEnd(TargetError):
    """A range starting at or past the end of the object (HTTP 416)."""


def _code(e: ClientError) -> str:
    return str((e.response.get("Error") or {}).get("Code", ""))


def _status(e: ClientError) -> int:
    return int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)


def _read_part(fd: int, size: int, lock: threading.Lock) -> bytes:
    """Up to `size` bytes from `fd` (fewer only at its end)."""
    out = bytearray()
    with lock:
        while len(out) < size:
            got = os.read(fd, size - len(out))
            if not got:
                break
            out += got
    return bytes(out)


def _close_locked(fd: int, lock: threading.Lock) -> None:
    with lock:
        os.close(fd)
