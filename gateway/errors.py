"""One error hierarchy for the API and its single mapping to an HTTP response.

Every error leaves the gateway as ``{"error": {"message", "type", "param", "code"}}`` (the
OpenAI shape) with the status of its class. Handlers raise; ``app.py`` converts in one place.
"""

from __future__ import annotations

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


class EngineUnavailable(ApiError):
    """The runner serving the model is not reachable or not ready."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class EngineError(ApiError):
    """The engine failed on valid input: a bug or a fault worth a look in the logs."""

    status = 500
    type = "server_error"
    code = "engine_error"


def error_response(error: ApiError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )
