"""Route maps as SVG: the (privacy-trimmed) route drawn as one path, fitted to the view box.

No tiles and no third-party request: the picture is the line alone. The query is validated
strictly (every parameter known, each at most once, each in range) and only validated, normalized
values reach the markup; the title is fixed text around the integer activity id, escaped anyway.
Output is deterministic: coordinates are rounded to 0.1 px, so the same route and parameters give
the same bytes and the same strong ETag, on every instance.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from service.errors import ApiError, invalid_parameter
from service.http_cache import PreparedBody, etag_for
from service.memo import RawMemo
from service.openapi import Param
from service.projects.strava_integration.privacy import Point, Route

MEDIA_TYPE = "image/svg+xml"
# The SVG needs no script and no fetch; inline presentation attributes are all it uses.
CSP = "default-src 'none'; style-src 'unsafe-inline'"
SIZE_MIN, SIZE_MAX = 64, 1200
WIDTH_MIN, WIDTH_MAX = 0.5, 20.0
DEFAULT_STROKE = "#fc4c02"  # Strava orange

# "89.0" is an integer to JSON Schema, and schema-driven clients send it so.
_INTEGER = re.compile(r"([0-9]{1,4})(?:\.0{1,8})?")
_STROKE = re.compile(r"#[0-9a-fA-F]{6}")
# Digits, optionally a fraction: what a person types ("3", "2.5") and what a generator prints
# for a float in range (repr never uses an exponent there: "19.999999999999996").
_DECIMAL = re.compile(r"[0-9]{1,2}(\.[0-9]{1,17})?")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,40}")


@dataclass(frozen=True, slots=True)
class SvgParams:
    width: int = 320
    height: int = 180
    stroke: str = DEFAULT_STROKE  # always lower-case #rrggbb
    stroke_width: float = 3.0  # rounded to 0.01

    @property
    def stroke_width_text(self) -> str:
        return f"{self.stroke_width:.2f}".rstrip("0").rstrip(".")


DEFAULTS = SvgParams()


SIZE_SCHEMA = {"type": "integer", "minimum": SIZE_MIN, "maximum": SIZE_MAX}
# Each may also be sent empty (`?w=`), which means the default, as for the feed's parameters.
SVG_PARAMS = [
    Param("w", {**SIZE_SCHEMA, "default": DEFAULTS.width}, "Width in pixels.", allow_empty=True),
    Param("h", {**SIZE_SCHEMA, "default": DEFAULTS.height}, "Height in pixels.", allow_empty=True),
    Param(
        "stroke",
        {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$", "default": DEFAULT_STROKE},
        "Line colour as #rrggbb (send # as %23).",
        allow_empty=True,
    ),
    Param(
        "stroke_width",
        {"type": "number", "minimum": WIDTH_MIN, "maximum": WIDTH_MAX, "default": DEFAULTS.stroke_width},
        "Line width in pixels (rounded to 0.01).",
        allow_empty=True,
    ),
]
SVG_RESPONSES = {
    "200": "The route as SVG",
    "304": "Not modified (If-None-Match)",
    "404": "Unknown, not public, or without a route",
    "422": "Invalid parameter",
    "502": "Strava failed and nothing is cached",
    "503": "Not configured, or the Strava budget is spent",
    "504": "Strava timed out and nothing is cached",
}
_KNOWN = {p.name for p in SVG_PARAMS}
_ALLOWED = ", ".join(p.name for p in SVG_PARAMS)


def _size(name: str, raw: str) -> int:
    match = _INTEGER.fullmatch(raw)
    if match is None or not SIZE_MIN <= int(match[1]) <= SIZE_MAX:
        raise invalid_parameter(name, f"an integer from {SIZE_MIN} to {SIZE_MAX}")
    return int(match[1])


def _stroke_width(raw: str) -> float:
    if not _DECIMAL.fullmatch(raw) or not WIDTH_MIN <= float(raw) <= WIDTH_MAX:
        raise invalid_parameter("stroke_width", f"a number from {WIDTH_MIN:g} to {WIDTH_MAX:g}")
    return round(float(raw), 2)


def parse_params(query_string: bytes) -> SvgParams:
    """The validated parameters; raises the 422 ApiError naming the first bad one."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name not in _KNOWN:
            # Name it only if it is plain text; the error body is JSON, but it need not echo anything odd.
            shown = name if _SAFE_NAME.fullmatch(name) else "query"
            raise invalid_parameter(shown, f"only {_ALLOWED}")
        if name in values:
            raise invalid_parameter(name, "at most one value")
        values[name] = value
    # Empty means the default, as for the feed's parameters.
    params = {k: v for k, v in values.items() if v != ""}
    stroke = params.get("stroke", DEFAULT_STROKE)
    if not _STROKE.fullmatch(stroke):
        raise invalid_parameter("stroke", "a colour as #rrggbb")
    return SvgParams(
        width=_size("w", params["w"]) if "w" in params else DEFAULTS.width,
        height=_size("h", params["h"]) if "h" in params else DEFAULTS.height,
        stroke=stroke.lower(),
        stroke_width=_stroke_width(params["stroke_width"]) if "stroke_width" in params else DEFAULTS.stroke_width,
    )


# `parse_params`, memoized by the raw query: a site embeds the same few sizes all day.
svg_params: RawMemo[SvgParams] = RawMemo(parse_params)


def _n(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def path_data(pieces: Sequence[Sequence[Point]], width: int, height: int, pad: float) -> str:
    """One subpath per piece, in view-box pixels: equirectangular, scaled by cos(mid-latitude),
    fitted inside `pad` with the aspect ratio kept and the drawing centred."""
    points = [p for piece in pieces for p in piece]
    if not points:
        return ""
    lats = [p[0] for p in points]
    kx = math.cos(math.radians((min(lats) + max(lats)) / 2))
    xs = [p[1] * kx for p in points]
    ys = [-p[0] for p in points]  # north is up
    x0, y0 = min(xs), min(ys)
    span_x, span_y = max(xs) - x0, max(ys) - y0
    inner_w, inner_h = width - 2 * pad, height - 2 * pad
    fits = [inner / span for inner, span in ((inner_w, span_x), (inner_h, span_y)) if span > 0]
    scale = min(fits) if fits else 0.0  # a single point sits in the middle
    left = pad + (inner_w - span_x * scale) / 2
    top = pad + (inner_h - span_y * scale) / 2
    out: list[str] = []
    for piece in pieces:
        coords: list[str] = []
        for lat, lng in piece:
            x = min(max(left + (lng * kx - x0) * scale, 0.0), float(width))
            y = min(max(top + (-lat - y0) * scale, 0.0), float(height))
            pair = f"{_n(x)} {_n(y)}"
            if not coords or coords[-1] != pair:  # what rounds to the same pixel adds nothing
                coords.append(pair)
        if len(coords) == 1:
            coords.append(coords[0])  # a dot: a zero-length line with round caps
        out.append("M" + coords[0] + "L" + " ".join(coords[1:]))
    return "".join(out)


def render(pieces: Sequence[Sequence[Point]], params: SvgParams, title: str) -> bytes:
    pad = params.stroke_width / 2 + 0.05 * min(params.width, params.height)
    w, h = str(params.width), str(params.height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<path d="{path_data(pieces, params.width, params.height, pad)}" fill="none"'
        f' stroke="{escape(params.stroke)}" stroke-width="{params.stroke_width_text}"'
        ' stroke-linecap="round" stroke-linejoin="round"/></svg>'
    ).encode()


def title_for(activity_id: int) -> str:
    return f"Route map of activity {int(activity_id)}"


def prepared_svg(body: bytes, control: str) -> PreparedBody:
    """One rendered SVG as its 200 and 304 in each content coding (SVG is text: it compresses well)."""
    return PreparedBody(body, etag_for(body), control, MEDIA_TYPE, [("content-security-policy", CSP)])


class RenderCache:
    """Least recently used renders, bounded in entries and bytes.

    Keyed by (activity id, parameters); an entry counts only while the route's polylines (all
    the drawing is made of) are the ones it was drawn from. A refresh that changes the route
    renders afresh without any explicit invalidation; one that leaves it alone keeps the picture.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[tuple[int, SvgParams], tuple[tuple[str, ...], PreparedBody]] = OrderedDict()

    def get(self, activity_id: int, params: SvgParams, route: Route) -> PreparedBody | None:
        key = (activity_id, params)
        entry = self.entries.get(key)
        if entry is None or entry[0] != route.polylines:  # equal strings: the same picture
            return None
        self.entries.move_to_end(key)
        return entry[1]

    def put(self, activity_id: int, params: SvgParams, route: Route, prepared: PreparedBody) -> None:
        key = (activity_id, params)
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old[1].body)
        if len(prepared.body) > self.max_bytes or self.max_entries <= 0:
            return
        self.entries[key] = (route.polylines, prepared)
        self.bytes += len(prepared.body)
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.bytes -= len(evicted.body)


Loader = Callable[[int], Awaitable[Route | None]]


class RouteSvg:
    """GET /activities/{activity_id:int}/route.svg as a plain ASGI app.

    `load(activity_id)` returns the activity's public, trimmed `Route`, or None for hidden,
    unknown and route-less activities (all answered 404, indistinguishably).
    """

    def __init__(self, load: Loader, control: str, *, max_entries: int = 256, max_bytes: int = 4 * 1024 * 1024):
        self.__name__ = "route_svg"  # Starlette names the route after it
        self.load = load
        self.control = control
        self.cache = RenderCache(max_entries, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = svg_params(scope["query_string"])
        activity_id: int = scope["path_params"]["activity_id"]
        route = await self.load(activity_id)  # an upstream failure is an ApiError: the error boundary renders it
        if route is None:
            raise ApiError(404, "not_found", "No public activity with a route has this id.")
        prepared = self.cache.get(activity_id, params, route)
        if prepared is None:
            prepared = prepared_svg(render(route.pieces, params, title_for(activity_id)), self.control)
            self.cache.put(activity_id, params, route, prepared)
        await prepared.for_request(scope)(scope, receive, send)
