"""Strava's OAuth endpoints as the authorization server: authorize (auto-approved), token
exchange/refresh, revoke (from 1 June 2027) and the retired deauthorize."""

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .pipeline import bearer_token
from .responses import BodyError, JsonResponse, authorization_error, bad_request, read_body, strava_error
from .sim_config import OAUTH_PREFIX, SimulatorConfig
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


def _client_rejection(config: SimulatorConfig, client_id: str | None, client_secret: str | None) -> Response | None:
    """Strava's answer to wrong application credentials (401, naming the wrong one), or None if they are right.

    Real Strava says "Bad Request" with status 401, and names `client_id` for an unknown
    application and `client_secret` for a known one with the wrong secret.
    """
    if client_id is None or not hmac.compare_digest(client_id.encode(), config.client_id.encode()):
        field = "client_id"
    elif client_secret is None or not hmac.compare_digest(client_secret.encode(), config.client_secret.encode()):
        field = "client_secret"
    else:
        return None
    return strava_error(401, "Bad Request", "Application", field, "invalid")


def _basic_credentials(headers: Headers) -> tuple[str | None, str | None]:
    """(client_id, client_secret) from `Authorization: Basic`, each None when absent or unreadable."""
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or len(encoded) > MAX_PARAM_CHARS:
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, colon, client_secret = decoded.partition(":")
    return client_id or None, client_secret if colon else None


async def token(request: Request) -> Response:
    try:
        params = await _params(request)
    except BodyError:
        return bad_request("Application", "body")
    sim = _sim(request)
    rejection = _client_rejection(sim.config, params.get("client_id"), params.get("client_secret"))
    if rejection is not None:
        return rejection
    # grant_type -> the parameter it redeems, the resource Strava names when that is bad, and how.
    grants = {
        "refresh_token": ("refresh_token", "RefreshToken", sim.refresh),
        "authorization_code": ("code", "AuthorizationCode", sim.redeem_code),
    }
    grant = grants.get(params.get("grant_type", ""))
    if grant is None:
        return bad_request("Application", "grant_type")
    field, resource, redeem = grant
    value = params.get(field)
    if not value:
        return bad_request(resource, field, "missing")
    issued = redeem(value)
    return JsonResponse(issued) if issued else bad_request(resource, field)


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


TOKEN_TYPE_HINTS = frozenset({"access_token", "refresh_token"})


async def revoke(request: Request) -> Response:
    """POST /oauth/revoke (RFC 7009), which replaces oauth/deauthorize from 1 June 2027.

    Either of the grant's tokens revokes the whole grant. As RFC 7009 says, a token the server
    does not know (already revoked, or never issued) is no error: the answer is 200 all the same.
    """
    sim = _sim(request)
    rejection = _client_rejection(sim.config, *_basic_credentials(request.headers))
    if rejection is not None:
        rejection.headers["WWW-Authenticate"] = 'Basic realm="Strava"'
        return rejection
    try:
        params = await _params(request)
    except BodyError:
        return bad_request("Application", "body")
    token = params.get("token")
    if not token:
        return bad_request("Token", "token", "missing")
    hint = params.get("token_type_hint")
    if hint is not None and hint not in TOKEN_TYPE_HINTS:
        return bad_request("Token", "token_type_hint")
    sim.revoke_token(token)  # the hint only speeds up a lookup; both kinds are searched anyway
    return Response(status_code=200)


async def deauthorize(request: Request) -> Response:
    """The retired POST /oauth/deauthorize: a live access token (Bearer or form) ends the grant."""
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
    Route(f"{OAUTH_PREFIX}/revoke", revoke, methods=["POST"]),
    Route(f"{OAUTH_PREFIX}/deauthorize", deauthorize, methods=["POST"]),
]
