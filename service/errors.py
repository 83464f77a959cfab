"""Attune's errors, rendered as {"error": {"code", "message", ...}}.

    AttuneError                 (status, code, message, extra)
    ├── BadRequest              400
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404
    ├── PayloadTooLarge         413
    ├── Unprocessable           422
    ├── ClientClosed            499  (the client hung up mid-request: no one reads the answer)
    ├── RateLimited             429 + Retry-After
    └── StoreUnavailable        503 + Retry-After  (every redis error is translated here, in store.py)
"""

from __future__ import annotations

from typing import Any


# The body of a 500: what went wrong is in the log, never in the answer.
INTERNAL_ERROR_BODY = {"error": {"code": "internal_error", "message": "an unexpected error occurred; it was logged"}}


class AttuneError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(AttuneError):
    status, code = 400, "bad_request"


class Unauthorized(AttuneError):
    status, code = 401, "unauthorized"


class Forbidden(AttuneError):
    status, code = 403, "forbidden"


class NotFound(AttuneError):
    status, code = 404, "not_found"


class PayloadTooLarge(AttuneError):
    status, code = 413, "payload_too_large"


class Unprocessable(AttuneError):
    status, code = 422, "unprocessable"


class ClientClosed(AttuneError):
    """The client closed its connection before its request arrived whole: no one will read the answer,
    and nothing went wrong here (nginx's 499 "client closed request", for the latency histogram)."""

    status, code = 499, "client_closed_request"


class RateLimited(AttuneError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **extra)


class StoreUnavailable(AttuneError):
    status, code = 503, "store_unavailable"

    def __init__(self, message: str = "the event store (Redis) is unreachable; retry shortly",
                 retry_after: int = 2, **extra: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **extra)
