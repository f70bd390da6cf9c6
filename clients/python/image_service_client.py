"""Async client for image-upload-service (HTTP contract: openapi.yaml). Needs aiohttp only.

    async with ImageServiceClient("https://images.example.com", api_key=TOKEN) as client:
        image = await client.upload(data, "portrait.png", {"character_name": "Thorgar"}, context="portraits")
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from types import TracebackType
from typing import Any, Optional, Type
from urllib.parse import quote

import aiohttp
from yarl import URL  # installed with aiohttp, which depends on it

__all__ = [
    "ImageServiceClient",
    "UploadedImage",
    "ImageMetadata",
    "ListedImage",
    "ImagePage",
    "UploadOutcome",
    "ImageServiceError",
    "ServiceUnreachableError",
    "ProblemError",
    "InvalidRequestError",
    "InvalidKeyError",
    "InvalidContextError",
    "InvalidMetadataError",
    "EmptyFileError",
    "ImportRefusedError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "IdempotencyConflictError",
    "ImageTooLargeError",
    "UnsupportedMediaTypeError",
    "ImageTooManyPixelsError",
    "RateLimitedError",
    "StorageError",
    "StorageAccessDeniedError",
    "BucketNotFoundError",
    "ImportFailedError",
    "StorageUnavailableError",
    "ServerBusyError",
    "InternalError",
]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 6
# Answers that say nothing was done and when to try again (Retry-After): a call retries them.
RETRIED_CODES = frozenset({"server_busy", "rate_limited", "storage_unavailable"})
# The wait before a retry when an answer to retry has no usable Retry-After.
DEFAULT_RETRY_AFTER_S = 1
# Redirects (the statuses fetch would follow): reported, never followed.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class UploadedImage:
    """A stored upload: the 201 answer of POST /v1/images."""

    url: str
    key: str
    size: int
    filename: str
    content_type: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageMetadata:
    """A stored object as GET /v1/images/{key} describes it; metadata values decoded."""

    key: str
    url: str
    size: int
    content_type: str
    last_modified: datetime
    etag: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ListedImage:
    """One object of a listing (GET /v1/images)."""

    key: str
    url: str
    size: int
    last_modified: datetime
    etag: str


@dataclass(frozen=True)
class ImagePage:
    """One page of a listing; next_cursor is None on the last page."""

    items: list[ListedImage]
    next_cursor: Optional[str]


# Errors. Every call raises ImageServiceError or a subclass: ServiceUnreachableError when there was no
# answer or a redirect, otherwise ProblemError, or the subclass named after the problem's `code`.


class ImageServiceError(Exception):
    """Any failure of a call to the service."""


class ServiceUnreachableError(ImageServiceError):
    """No answer: the connection was refused or lost, the answer took longer than the timeout, or it was a redirect."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ProblemError(ImageServiceError):
    """The service answered with an error (RFC 9457 problem); the subclass says which `code`."""

    code = "unexpected_response"  # an answer that is not a problem (a proxy's error page, say)

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: Optional[str] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[int] = None,
        fallback_url: Optional[str] = None,
    ) -> None:
        super().__init__(f"{status} {code or self.code}: {detail}")
        self.status = status
        self.detail = detail
        if code is not None:
            self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.fallback_url = fallback_url


class InvalidRequestError(ProblemError):
    code = "invalid_request"


class InvalidKeyError(ProblemError):
    code = "invalid_key"


class InvalidContextError(ProblemError):
    code = "invalid_context"


class InvalidMetadataError(ProblemError):
    code = "invalid_metadata"


class EmptyFileError(ProblemError):
    code = "empty_file"


class ImportRefusedError(ProblemError):
    code = "import_refused"


class UnauthorizedError(ProblemError):
    code = "unauthorized"


class ForbiddenError(ProblemError):
    """The key is valid but lacks the scope (read, upload, delete) the operation needs."""

    code = "forbidden"


class NotFoundError(ProblemError):
    code = "not_found"


class IdempotencyConflictError(ProblemError):
    code = "idempotency_conflict"


class ImageTooLargeError(ProblemError):
    code = "image_too_large"


class UnsupportedMediaTypeError(ProblemError):
    code = "unsupported_media_type"


class ImageTooManyPixelsError(ProblemError):
    code = "image_too_many_pixels"


class RateLimitedError(ProblemError):
    code = "rate_limited"


class StorageError(ProblemError):
    code = "storage_error"


class StorageAccessDeniedError(ProblemError):
    code = "storage_access_denied"


class BucketNotFoundError(ProblemError):
    code = "bucket_not_found"


class ImportFailedError(ProblemError):
    code = "import_failed"


class StorageUnavailableError(ProblemError):
    code = "storage_unavailable"


class ServerBusyError(ProblemError):
    code = "server_busy"


class InternalError(ProblemError):
    code = "internal_error"


_ERRORS_BY_CODE: dict[str, Type[ProblemError]] = {error.code: error for error in ProblemError.__subclasses__()}


@dataclass(frozen=True)
class UploadOutcome:
    """What upload_with_fallback gives: the URL to use, and either the stored image or the error."""

    url: str
    image: Optional[UploadedImage] = None
    error: Optional[ImageServiceError] = None

    @property
    def fell_back(self) -> bool:
        return self.image is None


class ImageServiceClient:
    """One client per service; use `async with`, or call `close()` when done (the HTTP session is shared)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_fallback_url: Optional[str] = None,
    ) -> None:
        """`timeout` bounds each call in seconds, every try and the waits between them included, connecting
        to reading the last byte of the answer. `max_retries` is how many times a call is tried again after
        503 server_busy, 429 rate_limited or 503 storage_unavailable, each after the answer's Retry-After
        plus up to half as long again, and only while that fits in `timeout` (0: never).
        `default_fallback_url` is what upload_with_fallback returns when the service offers no fallback_url."""
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._max_retries = max_retries
        self._default_fallback_url = default_fallback_url
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> ImageServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def upload(
        self,
        data: bytes,
        filename: str,
        metadata: Optional[Mapping[str, str]] = None,
        *,
        context: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> UploadedImage:
        """Uploads one image as multipart/form-data; `context` picks the key prefix (service default `general`).
        Every try sends `idempotency_key` (default: a new UUID per call), so a retry is never stored twice."""
        metadata = dict(metadata or {})
        if "context" in metadata:
            raise ValueError("pass the context as context=, not as metadata")
        escaped = filename.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")

        def form() -> aiohttp.FormData:
            # A FormData is sent once: each try builds its own. quote_fields=False: aiohttp would otherwise
            # percent-encode the filename, and the service would store "my%20portrait.png". The filename is
            # escaped instead as browsers do (WHATWG HTML, multipart/form-data).
            built = aiohttp.FormData(quote_fields=False)
            # The contract wants text fields first, then the one file part.
            if context is not None:
                built.add_field("context", context)
            for name, value in metadata.items():
                built.add_field(name, value)
            built.add_field("file", data, filename=escaped, content_type="application/octet-stream")
            return built

        headers = {"Idempotency-Key": idempotency_key if idempotency_key is not None else str(uuid.uuid4())}
        body = await self._call("POST", URL(f"{self._base_url}/v1/images"), body=form, headers=headers)
        return UploadedImage(**{field.name: body[field.name] for field in fields(UploadedImage)})

    async def upload_with_fallback(
        self,
        data: bytes,
        filename: str,
        metadata: Optional[Mapping[str, str]] = None,
        *,
        context: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> UploadOutcome:
        """Like upload, but any failure gives the service's fallback_url, else the client's default_fallback_url.
        Raises the error only when neither exists."""
        try:
            image = await self.upload(data, filename, metadata, context=context, idempotency_key=idempotency_key)
        except ImageServiceError as error:
            offered = error.fallback_url if isinstance(error, ProblemError) else None
            fallback = offered or self._default_fallback_url
            if fallback is None:
                raise
            return UploadOutcome(url=fallback, error=error)
        return UploadOutcome(url=image.url, image=image)

    async def metadata(self, key: str) -> ImageMetadata:
        """The stored object's size, type, dates and metadata; NotFoundError when there is none."""
        body = await self._call("GET", self._image_url(key))
        return ImageMetadata(
            key=body["key"],
            url=body["url"],
            size=body["size"],
            content_type=body["content_type"],
            last_modified=_timestamp(body["last_modified"]),
            etag=body["etag"],
            metadata=body["metadata"],
        )

    async def list_images(self, prefix: str = "", limit: Optional[int] = None, cursor: Optional[str] = None) -> ImagePage:
        """One page of the stored objects, in key order: those whose keys start with `prefix` (a key, or a key
        and "/"), at most `limit` (1 to 1000; the service's default is 100), after the page whose next_cursor
        is `cursor`. A page may hold fewer items, even none, while next_cursor is set: iter_image_pages
        follows the cursors for you."""
        params = {"prefix": prefix} if prefix else {}
        if limit is not None:
            params["limit"] = str(limit)
        if cursor is not None:
            params["cursor"] = cursor
        body = await self._call("GET", URL(f"{self._base_url}/v1/images").with_query(params))
        items = [
            ListedImage(
                key=item["key"],
                url=item["url"],
                size=item["size"],
                last_modified=_timestamp(item["last_modified"]),
                etag=item["etag"],
            )
            for item in body["items"]
        ]
        return ImagePage(items=items, next_cursor=body.get("next_cursor"))

    async def iter_image_pages(
        self, prefix: str = "", limit: Optional[int] = None, cursor: Optional[str] = None
    ) -> AsyncIterator[ImagePage]:
        """Every page from `cursor` (default: the first) to the last:
        `async for page in client.iter_image_pages("portraits/"): ...`"""
        while True:
            page = await self.list_images(prefix, limit, cursor)
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delete(self, key: str) -> None:
        """Deletes the object; deleting one that is already gone succeeds too."""
        await self._call("DELETE", self._image_url(key))

    def _image_url(self, key: str) -> URL:
        segments = key.split("/")
        # A URL would resolve these segments away and name another object: refuse them as the service would.
        if any(segment in (".", "..") for segment in segments):
            raise InvalidKeyError(400, f'The key "{key}" has a "." or ".." segment (refused by the client).')
        path = "/".join(quote(segment, safe="") for segment in segments)
        return URL(f"{self._base_url}/v1/images/{path}", encoded=True)

    def _open_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        body: Optional[Callable[[], aiohttp.FormData]] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Any:
        """One call: the decoded JSON body (None when empty), or raises ImageServiceError. An answer to retry is
        retried (the same request, `body` built again: one Idempotency-Key for every try) while tries are
        left and the wait fits before the deadline; otherwise it is raised as it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        retries = 0
        while True:
            try:
                return await self._send(method, url, body() if body else None, headers or {}, deadline - loop.time())
            except ProblemError as error:
                if error.code not in RETRIED_CODES or retries >= self._max_retries:
                    raise
                # Never sooner than the service asked; up to half as long again, so that clients refused
                # together do not all come back at the same moment.
                wait = (error.retry_after or DEFAULT_RETRY_AFTER_S) * random.uniform(1, 1.5)
                if loop.time() + wait >= deadline:
                    raise
                await asyncio.sleep(wait)
                retries += 1

    async def _send(
        self, method: str, url: URL, data: Optional[aiohttp.FormData], headers: Mapping[str, str], timeout: float
    ) -> Any:
        """One try, within `timeout` seconds."""
        try:
            async with self._open_session().request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)),
                # Followed, a 301 or 302 would turn an upload into a GET of another URL, a 307 would send it again.
                allow_redirects=False,
            ) as response:
                payload = await response.read()
        except asyncio.TimeoutError as error:
            raise ServiceUnreachableError(
                f"no answer from {self._base_url} within {self._timeout} s", timed_out=True
            ) from error
        except aiohttp.ClientError as error:
            raise ServiceUnreachableError(f"could not reach {self._base_url}: {error}", timed_out=False) from error
        if response.status in REDIRECT_STATUSES:
            raise ServiceUnreachableError(
                f"{self._base_url} answered {response.status}, a redirect to {response.headers.get('Location')}: not followed;"
                " give the address where the service answers",
                timed_out=False,
            )
        if response.status >= 400:
            raise _problem_error(response.status, response.headers.get("Retry-After"), payload)
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError as error:
            raise ProblemError(response.status, "The answer is not JSON.") from error


def _timestamp(text: str) -> datetime:
    # fromisoformat takes a trailing Z only from Python 3.11 on.
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _problem_error(status: int, retry_after: Optional[str], payload: bytes) -> ProblemError:
    try:
        problem = json.loads(payload)
    except ValueError:
        problem = None
    if not isinstance(problem, dict) or not isinstance(problem.get("code"), str):
        return ProblemError(status, f"An answer that is not a problem: {payload[:200].decode(errors='replace')}")
    code: str = problem["code"]
    return _ERRORS_BY_CODE.get(code, ProblemError)(
        status,
        str(problem.get("detail", "")),
        code=code,
        request_id=problem.get("request_id"),
        retry_after=int(retry_after) if retry_after and retry_after.isdigit() else None,
        fallback_url=problem.get("fallback_url"),
    )
