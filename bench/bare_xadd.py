"""The bare endpoint bench/ingest.py compares single-event ingestion with: POST /v1/events doing one XADD.

No auth, validation, dedup or metrics: the request body goes into a stream as it came. It is a
FastAPI route served like `attune serve` serves the API (uvicorn, uvloop, httptools, N processes,
no access log), so the gap to the real endpoint is what Attune's own work per request costs.

Run: ATTUNE_REDIS_URL=unix:///path/redis.sock python bench/bare_xadd.py --port 8100 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `service`

from service import keys  # noqa: E402
from service.store import connect  # noqa: E402

PARTITIONS = 16
ANSWER = b'{"accepted":1,"duplicates":0,"rejected":[]}'


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    client = connect(os.environ["ATTUNE_REDIS_URL"])  # the same client options as the service
    app.state.redis = client
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(lifespan=lifespan, openapi_url=None)


@app.post("/v1/events", status_code=202)
async def post_events(request: Request) -> Response:
    body = await request.body()
    await request.app.state.redis.xadd(keys.stream(zlib.crc32(body) % PARTITIONS), {"e": body})
    return Response(ANSWER, status_code=202, media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> int:
    import uvicorn  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # The options of service.cli._serve, so both servers are served the same way.
    uvicorn.run(
        "bare_xadd:app", app_dir=str(Path(__file__).resolve().parent), host=args.host, port=args.port,
        workers=args.workers, loop="uvloop", http="httptools", access_log=False, log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
