"""Reading request bodies within limits: size checked while reading, gzip inflated with a cap."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request

from service.errors import BadRequest, ClientClosed, PayloadTooLarge


async def read_body(request: Request, limit: int, hint: str = "split the batch") -> bytes:
    """The raw body, at most `limit` bytes (413 saying what to do, `hint`, as soon as it is over)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {int(length)} bytes exceeds the limit of {limit} bytes; {hint}")
    if hasattr(request, "_body"):  # read before (request.body()): Starlette keeps it, whole
        if len(request._body) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes; {hint}")
        return request._body
    if request._stream_consumed:  # read before as a stream: gone, as Starlette's stream() says
        raise RuntimeError("Stream consumed")
    # The ASGI messages read here as Starlette's Request.stream() reads them, without its async generator:
    # a generator's first step registers it with the event loop (a WeakSet add), and the frames of one
    # more layer cost ~10% of the body read of a chat (which has its whole body in one message).
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not more:
                request._stream_consumed = True
            if body:
                size += len(body)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes; {hint}")
                if not more and not chunks:
                    return body  # the usual case: the whole body in one message, no copy
                chunks.append(body)
            if not more:
                return b"".join(chunks)
        elif kind == "http.disconnect":
            request._is_disconnected = True
            # Not an error of ours: no traceback in the log, no 500 in the metrics.
            raise ClientClosed("the client closed the connection before its body arrived whole")


async def read_json(request: Request, limit: int, hint: str = "split the batch") -> Any:
    """The body as JSON, at most `limit` bytes before and after gzip (413 with `hint`, what to do)."""
    raw = await read_body(request, limit, hint)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        raw = _gunzip(raw, limit, hint)
    elif encoding not in ("identity", ""):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
                         code="unsupported_encoding")
    if not raw:
        raise BadRequest("the body is empty; send a JSON object", code="empty_body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="invalid_json") from exc


# A writer that flushes starts a new member now and then; tens of thousands of empty members are an attack
# (each member's rest is copied again: quadratic, 0.9 s of the event loop for 1 MiB of 20-byte members).
MAX_GZIP_MEMBERS = 64


def _gunzip(raw: bytes, limit: int, hint: str) -> bytes:
    """Inflate every member of a gzip body (as gzip -d does: writers that flush may start new members), at
    most `limit` bytes and MAX_GZIP_MEMBERS members in all; a body cut short is refused, not read as far as it
    goes. Zero bytes after the last member (padding, which gzip -d also takes) are ignored."""
    out: list[bytes] = []
    size = 0
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(raw, limit + 1 - size)  # size <= limit here: never 0, "no bound"
        except zlib.error as exc:
            raise BadRequest(f"Content-Encoding is gzip but the body is not valid gzip: {exc}",
                             code="invalid_gzip") from exc
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the uncompressed body exceeds the limit of {limit} bytes; {hint}")
        if not inflater.eof:
            raise BadRequest("the gzip body is cut short (its end and checksum are missing); send it whole",
                             code="invalid_gzip")
        out.append(part)
        raw = inflater.unused_data
        if not raw.strip(b"\0"):
            return b"".join(out)
    raise BadRequest(f"the gzip body has more than {MAX_GZIP_MEMBERS} members; compress the batch as one",
                     code="invalid_gzip")
