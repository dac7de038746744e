"""Strava OAuth endpoints: authorize (auto-approved), token exchange/refresh, deauthorize."""

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .config import OAUTH_PREFIX
from .pipeline import bearer_token
from .responses import BodyError, JsonResponse, authorization_error, bad_request, read_body, strava_error
from .state import SimulatorState

SCOPES = frozenset(
    {"read", "read_all", "profile:read_all", "profile:write", "activity:read", "activity:read_all", "activity:write"}
)
MAX_PARAM_CHARS = 2048
MAX_FIELDS = 32


def _sim(request: Request) -> SimulatorState:
    return request.app.state.sim


async def _params(request: Request) -> dict[str, str]:
    """Query string merged with a form (or JSON) body; Strava accepts its parameters either way."""
    params = dict(request.query_params)
    body = await read_body(request)
    if body.strip():
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                parsed: Any = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BodyError("invalid JSON") from exc
            if not isinstance(parsed, dict):
                raise BodyError("JSON body must be an object")
            params.update({str(k): str(v) for k, v in parsed.items() if v is not None})
        else:
            try:
                form = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=MAX_FIELDS)
            except (UnicodeDecodeError, ValueError) as exc:
                raise BodyError("invalid form body") from exc
            params.update({k: v[0] for k, v in form.items()})
    if len(params) > MAX_FIELDS or any(len(v) > MAX_PARAM_CHARS for v in params.values()):
        raise BodyError("too many or too long parameters")
    return params


def _invalid_client() -> Response:
    return strava_error(401, "Bad Request", "Application", "client_id", "invalid")


async def token(request: Request) -> Response:
    try:
        params = await _params(request)
    except BodyError:
        return bad_request("Application", "body")
    sim = _sim(request)
    if params.get("client_id") != sim.config.client_id or params.get("client_secret") != sim.config.client_secret:
        return _invalid_client()
    grant_type = params.get("grant_type")
    if grant_type == "refresh_token":
        refresh_token = params.get("refresh_token")
        if not refresh_token:
            return bad_request("RefreshToken", "refresh_token", "missing")
        issued = sim.refresh(refresh_token)
        return JsonResponse(issued) if issued else bad_request("RefreshToken", "refresh_token")
    if grant_type == "authorization_code":
        code = params.get("code")
        if not code:
            return bad_request("AuthorizationCode", "code", "missing")
        issued = sim.redeem_code(code)
        return JsonResponse(issued) if issued else bad_request("AuthorizationCode", "code")
    return bad_request("Application", "grant_type")


def _granted_scope(requested: str | None) -> str | None:
    """The scopes an auto-approving athlete grants, or None if the request names an unknown one."""
    if not requested:
        return "read"
    wanted = [s.strip() for s in requested.split(",") if s.strip()]
    if not wanted or any(s not in SCOPES for s in wanted):
        return None
    return ",".join(dict.fromkeys(wanted))  # de-duplicate, keep order


async def authorize(request: Request) -> Response:
    params = request.query_params
    sim = _sim(request)
    if params.get("client_id") != sim.config.client_id:
        return bad_request("Application", "client_id")
    redirect_uri = params.get("redirect_uri", "")
    parts = urlsplit(redirect_uri) if len(redirect_uri) <= MAX_PARAM_CHARS else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return bad_request("Application", "redirect_uri")
    if params.get("response_type") != "code":
        return bad_request("Application", "response_type")
    scope = _granted_scope(params.get("scope"))
    if scope is None:
        return bad_request("Application", "scope")
    state = params.get("state", "")
    if len(state) > MAX_PARAM_CHARS:
        return bad_request("Application", "state")
    # Sandbox: the athlete approves instantly, so go straight to the callback with a fresh code.
    query = urlencode({"state": state, "code": sim.new_code(), "scope": scope}, safe=",:")
    separator = "&" if parts.query else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=302)


async def deauthorize(request: Request) -> Response:
    try:
        params = await _params(request)
    except BodyError:
        return bad_request("Application", "body")
    access_token = bearer_token(request.scope) or params.get("access_token")
    if not access_token or not _sim(request).deauthorize(access_token):
        return authorization_error()
    return JsonResponse({"access_token": access_token})


routes = [
    Route(f"{OAUTH_PREFIX}/authorize", authorize, methods=["GET"]),
    Route(f"{OAUTH_PREFIX}/token", token, methods=["POST"]),
    Route(f"{OAUTH_PREFIX}/deauthorize", deauthorize, methods=["POST"]),
]
