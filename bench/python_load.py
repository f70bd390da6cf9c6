"""Load generator for `npm run bench`: the bot's Python client (aiohttp), uploading in closed loops.

    python_load.py <base_url> <image_path> <concurrency> <warmup_seconds> <seconds>    (API key: BENCH_API_KEY)

Runs `concurrency` loops of ImageServiceClient.upload for the warm-up, then starts new uploads for
`seconds`, and waits for the last. Prints JSON lines to stdout: {"event": "start", versions},
{"event": "measuring"} when the measured part begins, one line per measured upload
({"ms": latency, "key": ...} or {"error": ...}) and per failed warm-up upload ({"error": ..., "warmup": true}), then {"event": "done", "seconds": measured time}; then it waits for stdin to close.
Every upload must come back with the SHA-256 of the bytes sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))

import aiohttp  # noqa: E402

from image_service_client import ImageServiceClient, ImageServiceError  # noqa: E402


def emit(line: dict) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def main(base_url: str, image_path: str, concurrency: int, warmup_s: float, seconds: float) -> None:
    with open(image_path, "rb") as file:
        data = file.read()
    expected = hashlib.sha256(data).hexdigest()
    emit({"event": "start", "python": platform.python_version(), "aiohttp": aiohttp.__version__})
    # A long timeout: under load a 50 MiB upload may take far longer than the client's default 30 s.
    async with ImageServiceClient(base_url, api_key=os.environ["BENCH_API_KEY"], timeout=300) as client:

        async def loops(duration: float, measured: bool) -> None:
            until = time.monotonic() + duration

            async def loop() -> None:
                while time.monotonic() < until:
                    started = time.monotonic()
                    try:
                        image = await client.upload(data, "bench.png")
                        if image.sha256 != expected:
                            raise ValueError(f"the service hashed {image.sha256}, sent {expected}")
                    except (ImageServiceError, ValueError) as error:
                        emit({"error": str(error)} if measured else {"error": str(error), "warmup": True})
                        continue
                    if measured:
                        emit({"ms": (time.monotonic() - started) * 1000, "key": image.key})

            await asyncio.gather(*(loop() for _ in range(concurrency)))

        await loops(warmup_s, False)
        emit({"event": "measuring"})
        started = time.monotonic()
        await loops(seconds, True)
        emit({"event": "done", "seconds": time.monotonic() - started})
    # The bench reads this process's CPU time now; it closes stdin when done.
    sys.stdin.read()


if __name__ == "__main__":
    url, path, concurrency, warmup, duration = sys.argv[1:6]
    asyncio.run(main(url, path, int(concurrency), float(warmup), float(duration)))
