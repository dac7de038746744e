"""Security defaults: static response headers, CORS, and constant-time secret checks."""

from __future__ import annotations

import hmac

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request

from service.errors import ApiError
from service.settings import Settings

# Added to every response, errors included, by the observability middleware's send wrapper.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

API_KEY_HEADER = "x-api-key"
MAX_SECRET_HEADER = 512


def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; lengths differ in time only by what `compare_digest` allows."""
    if given is None or len(given) > MAX_SECRET_HEADER:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def require_api_key(request: Request, expected: str | None) -> None:
    """Admin routes: 401 when the key is missing, 403 when it is wrong, 503 when none is set."""
    if not expected:
        raise ApiError(503, "admin_disabled", "No admin API key is configured for this project.")
    given = request.headers.get(API_KEY_HEADER)
    if not given:
        raise ApiError(
            401, "unauthorized", "The X-API-Key header is required.", headers={"WWW-Authenticate": "X-API-Key"}
        )
    if not secret_matches(given, expected):
        raise ApiError(403, "forbidden", "The API key is not valid.")


def bearer_matches(header: str | None, token: str) -> bool:
    if header is None or not header.startswith("Bearer "):
        return False
    return secret_matches(header[7:], token)


def cors_middleware(settings: Settings) -> list[Middleware]:
    if not settings.cors_allow_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allow_origins),
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["If-None-Match", "X-Request-ID"],
            expose_headers=["ETag", "X-Request-ID", "Retry-After"],
            max_age=600,
        )
    ]
