"""One error hierarchy for the API and its single mapping to an HTTP response.

Every error leaves the gateway as ``{"error": {"message", "type", "param", "code"}}`` (the
OpenAI shape) with the status of its class. Handlers raise; ``gateway/app.py`` converts in one place.
Errors answered below the ASGI app (a connection that sends its request too slowly, one too
many connections) are written by ``hosting/protocol.py`` as raw HTTP with ``http_bytes``.
"""

from __future__ import annotations

import http

import orjson
from starlette.responses import Response


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    """The caller may not do this (the admin endpoint without an admin key configured)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Unprocessable(ApiError):
    """A well-formed input that could not be processed within its budget: an image or PDF page
    whose decoding crashed its worker, ran past its time or needed more than its memory."""

    status = 422
    type = "invalid_request_error"
    code = "image_unprocessable"


class Overloaded(ApiError):
    """Admission refused: too much work in flight. The client should retry after a pause."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class RequestTimeout(ApiError):
    """The client did not send its whole request in time (``server.read_timeout_s``)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class EngineUnavailable(ApiError):
    """The runner serving the model is not reachable or not ready."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ServerBusy(EngineUnavailable):
    """Too many open connections on this worker (``server.max_connections``), or the server is
    stopping: retry, here or on another replica."""

    code = "server_busy"


class GatewayTimeout(ApiError):
    """The request was not answered in time: ``server.request_timeout_s`` in the gateway, or the
    runner's ``timeout_s`` for its call. Nothing is wrong with the input; retry later."""

    status = 504
    type = "server_error"
    code = "timeout"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineError(ApiError):
    """The engine failed on valid input: a bug or a fault worth a look in the logs."""

    status = 500
    type = "server_error"
    code = "engine_error"


# Not an error response: the status an abandoned request is counted under (nginx's "client
# closed request"); nothing is sent, nobody is listening.
CLIENT_GONE = 499


def error_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def http_bytes(error: ApiError) -> bytes:
    """``error`` as a whole HTTP/1.1 response that closes the connection, for code below the
    ASGI app that writes to the socket itself (``hosting/protocol.py``)."""
    body = orjson.dumps(error.body())
    head = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}",
            "content-type: application/json", f"content-length: {len(body)}", "connection: close",
            *(f"{name}: {value}" for name, value in error.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
