"""Drives the Python client against a service and prints what happened as JSON, for python-client.test.ts.

    client_check.py live <base_url> <api_key> <image_path> <client_fallback_url>
    client_check.py unreachable <stopped_url> <hung_url> <api_key> <client_fallback_url>
    client_check.py burst <base_url> <api_key> <directory of portrait-<n>.png> <count> <client_fallback_url>
    client_check.py listing <base_url> <api_key> <prefix> <limit>
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sys
import time
from typing import Any, Awaitable

from image_service_client import (
    ImageServiceClient,
    ImageServiceError,
    ProblemError,
    ServiceUnreachableError,
    UploadOutcome,
)

CHARACTER = "Thorgar Ø 永久"


def described(error: ImageServiceError) -> dict[str, Any]:
    fields = {"class": type(error).__name__, "is_service_error": isinstance(error, ImageServiceError)}
    if isinstance(error, ProblemError):
        fields.update(status=error.status, code=error.code, request_id=error.request_id, fallback_url=error.fallback_url)
    if isinstance(error, ServiceUnreachableError):
        fields.update(timed_out=error.timed_out)
    return fields


async def raised(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        await call
    except ImageServiceError as error:
        return {**described(error), "message": str(error)}
    return {"class": None}


def outcome(result: UploadOutcome) -> dict[str, Any]:
    return {"url": result.url, "fell_back": result.fell_back, "error": result.error and described(result.error)}


async def live(base_url: str, api_key: str, image_path: str, client_fallback_url: str) -> dict[str, Any]:
    with open(image_path, "rb") as file:
        data = file.read()
    metadata = {"character_name": CHARACTER, "uploader_id": "1234567890"}
    async with ImageServiceClient(base_url, api_key=api_key, timeout=10, default_fallback_url=client_fallback_url) as client:
        kept = await client.upload(data, "Thorgar Ø portrait.png", metadata, context="portraits")
        described_kept = await client.metadata(kept.key)
        deleted = await client.upload(data, "deleted.png", context="portraits")
        await client.delete(deleted.key)
        result = {
            "sent_sha256": hashlib.sha256(data).hexdigest(),
            "kept": dataclasses.asdict(kept),
            "metadata": {**dataclasses.asdict(described_kept), "last_modified": described_kept.last_modified.isoformat()},
            "deleted": dataclasses.asdict(deleted),
            "after_delete": await raised(client.metadata(deleted.key)),
            "delete_again": await raised(client.delete(deleted.key)),
            "fallback_on_415": outcome(await client.upload_with_fallback(b"just some text", "notes.png", context="portraits")),
            "upload_415": await raised(client.upload(b"just some text", "notes.png")),
            "invalid_context": await raised(client.upload(data, "a.png", context="Not A Context")),
            "dot_key": await raised(client.delete("general/../portraits/2025/01/abcdefghijklmnop_a.png")),
        }
    async with ImageServiceClient(base_url, api_key="x" * 40) as wrong_key:
        result["wrong_key"] = await raised(wrong_key.metadata(kept.key))
    result["error_classes"] = {error.code: error.__name__ for error in ProblemError.__subclasses__()}
    return result


async def unreachable(stopped_url: str, hung_url: str, moved_url: str, api_key: str, client_fallback_url: str) -> dict[str, Any]:
    async with ImageServiceClient(stopped_url, default_fallback_url=client_fallback_url) as stopped:
        result = {
            "stopped_fallback": outcome(await stopped.upload_with_fallback(b"\x89PNG", "a.png")),
            "stopped_upload": await raised(stopped.upload(b"\x89PNG", "a.png")),
        }
    async with ImageServiceClient(moved_url, api_key=api_key) as moved:
        result["moved_upload"] = await raised(moved.upload(b"\x89PNG", "moved.png"))
    async with ImageServiceClient(hung_url, api_key=api_key, timeout=0.5, default_fallback_url=client_fallback_url) as hung:
        started = time.monotonic()
        result["hung_fallback"] = outcome(
            await hung.upload_with_fallback(b"\x89PNG", "hung.png", {"character_name": CHARACTER}, context="portraits", idempotency_key="discord-message-1234")
        )
        result["hung_seconds"] = time.monotonic() - started
    async with ImageServiceClient(stopped_url) as without_default:
        result["no_fallback_at_all"] = await raised(without_default.upload_with_fallback(b"\x89PNG", "a.png"))
    return result


async def burst(base_url: str, api_key: str, directory: str, count: str, client_fallback_url: str) -> list[dict[str, Any]]:
    """Uploads every portrait at once, as the bot does after an event, with the client's default retries."""
    portraits = []
    for n in range(int(count)):
        with open(f"{directory}/portrait-{n}.png", "rb") as file:
            portraits.append(file.read())
    async with ImageServiceClient(base_url, api_key=api_key, default_fallback_url=client_fallback_url) as client:
        outcomes = await asyncio.gather(
            *(client.upload_with_fallback(data, f"portrait-{n}.png", context="burst-python") for n, data in enumerate(portraits))
        )
    return [
        {**outcome(result), "sent_sha256": hashlib.sha256(data).hexdigest(), "image": result.image and dataclasses.asdict(result.image)}
        for data, result in zip(portraits, outcomes)
    ]


async def listing(base_url: str, api_key: str, prefix: str, limit: str) -> dict[str, Any]:
    async with ImageServiceClient(base_url, api_key=api_key, timeout=10) as client:
        first = await client.list_images(prefix, int(limit))
        pages = [page async for page in client.iter_image_pages(prefix, int(limit))]
        return {
            "first": {
                "items": [{**dataclasses.asdict(item), "last_modified": item.last_modified.isoformat()} for item in first.items],
                "next_cursor": first.next_cursor,
            },
            "second_keys": [item.key for item in (await client.list_images(prefix, int(limit), first.next_cursor)).items],
            "default_page_keys": [item.key for item in (await client.list_images()).items],
            "pages": [[item.key for item in page.items] for page in pages],
            "last_cursor": pages[-1].next_cursor,
            "limit_0": await raised(client.list_images(prefix, 0)),
            "bad_prefix": await raised(client.list_images("portraits//")),
        }


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    print(json.dumps(asyncio.run({"live": live, "unreachable": unreachable, "burst": burst, "listing": listing}[mode](*arguments))))
