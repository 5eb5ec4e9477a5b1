"""JSON error bodies: every API failure is ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger("voicegw.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return web.json_response({"error": body}, status=self.status)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def from_validation(exc: ValidationError, prefix: str = "") -> ApiError:
    """The first problem, naming the field by its dotted path."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
    kind = first["type"]
    if kind == "extra_forbidden":
        return ApiError(400, "unknown_field", f"unknown field {field}", field)
    if kind == "missing":
        return ApiError(400, "missing_field", f"{field} is required", field)
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, "invalid_field", f"{field}: {message}", field or None)


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "request body must be a JSON object")
    return data


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await json_object(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return ApiError(exc.status, code, exc.reason).response()
    except Exception:
        log.exception("api.unhandled_error", extra={"path": request.path, "method": request.method})
        return ApiError(500, "internal_error", "internal error; see the gateway log").response()
