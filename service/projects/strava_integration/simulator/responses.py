"""JSON responses and error bodies in the shape Strava sends them.

Strava errors look like `{"message": ..., "errors": [{"resource", "field", "code"}]}`; clients key
their handling off `resource`/`field`/`code`, so the constants below copy Strava's spelling.
"""

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

MAX_BODY_BYTES = 64 * 1024


class JsonResponse(Response):
    # Strava sends the charset parameter; mirror it so header assertions match production.
    media_type = "application/json; charset=utf-8"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def strava_error(
    status: int, message: str, resource: str, field: str, code: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    body = {"message": message, "errors": [{"resource": resource, "field": field, "code": code}]}
    return JsonResponse(body, status_code=status, headers=headers)


def bad_request(resource: str, field: str, code: str = "invalid") -> JsonResponse:
    return strava_error(400, "Bad Request", resource, field, code)


def authorization_error() -> JsonResponse:
    return strava_error(401, "Authorization Error", "Athlete", "access_token", "invalid")


def record_not_found(resource: str, field: str = "id", code: str = "not found") -> JsonResponse:
    return strava_error(404, "Record Not Found", resource, field, code)


def rate_limit_exceeded() -> JsonResponse:
    return strava_error(429, "Rate Limit Exceeded", "Application", "rate limit", "exceeded")


class BodyError(Exception):
    """The request body was too large or not what the endpoint accepts."""


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    # Stop reading as soon as the limit is crossed instead of buffering whatever a client sends.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as `{}`."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BodyError("JSON body must be an object")
    return value
