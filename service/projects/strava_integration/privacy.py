"""Privacy trim of route ends: nothing within `radius_m` of a route's true start or end leaves the service.

The circles are centred on the first and last decoded points, before anything is cut (for a loop
they coincide). The line is cut where it crosses a circle, at a point computed on the segment, so
no straight segment is ever drawn across a circle; a route that passes through a circle again
mid-way falls apart into several pieces. Each crossing is computed against a circle a little larger
than asked (`_margin`), so that rounding to the polyline grid (1e-5 degrees) and the flat local
projection used for the geometry cannot bring a served point or segment back inside; a final
haversine check of every served point backs that up.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.projects.strava_integration.polyline import PRECISION, decode_polyline, encode_polyline

Point = tuple[float, float]  # (lat, lng) in degrees
EARTH_RADIUS_M = 6_371_008.8  # mean radius, as the haversine distance uses it
# Rounding a point to 1e-5 degrees moves it by at most half a step in each axis: 0.56 m north-south,
# less east-west, 0.79 m in all. A metre covers it with room to spare.
ROUNDING_SLACK_M = 1.0
M_PER_DEGREE = math.radians(1.0) * EARTH_RADIUS_M  # along a meridian
_MAX_TAN_LAT = math.tan(math.radians(89.0))


def haversine_m(a: Point, b: Point) -> float:
    lat1, lat2 = math.radians(a[0]), math.radians(b[0])
    dlat = lat2 - lat1
    dlng = math.radians(b[1] - a[1])
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _margin(radius_m: float, lat: float) -> float:
    # The projection uses the centre's east-west scale for the whole circle; at a latitude span of
    # r/R that misjudges a distance by about r * tan(lat) * r / (2R). Twice that, plus the rounding.
    tan_lat = min(abs(math.tan(math.radians(lat))), _MAX_TAN_LAT)
    return ROUNDING_SLACK_M + 2 * radius_m * radius_m * tan_lat / EARTH_RADIUS_M


class _Circle:
    """A circle in a local equirectangular projection around its centre (metres east, metres north).

    Straight lines in (lat, lng) stay straight in this projection, so a segment's crossings with
    the circle are the roots of a quadratic in the segment parameter t.
    """

    __slots__ = ("lat", "lng", "radius", "radius2", "x_scale", "y_scale")

    def __init__(self, centre: Point, radius_m: float) -> None:
        self.lat, self.lng = centre
        self.y_scale = M_PER_DEGREE
        self.x_scale = self.y_scale * math.cos(math.radians(self.lat))
        self.radius = radius_m + _margin(radius_m, self.lat)
        self.radius2 = self.radius * self.radius

    def project(self, point: Point) -> Point:
        return ((point[1] - self.lng) * self.x_scale, (point[0] - self.lat) * self.y_scale)

    def outcodes(self, projected: Sequence[Point]) -> list[int]:
        """Which sides of the circle's bounding square each point lies beyond (Cohen-Sutherland).

        A segment whose two ends share a side cannot meet the circle: most of a route is skipped so.
        """
        r = self.radius
        return [(x < -r) | (x > r) << 1 | (y < -r) << 2 | (y > r) << 3 for x, y in projected]

    def inside(self, p: Point, q: Point) -> tuple[float, float] | None:
        """The open interval of t in [0, 1] where p + t(q - p) is strictly inside, if any."""
        dx, dy = q[0] - p[0], q[1] - p[1]
        a = dx * dx + dy * dy
        c = p[0] * p[0] + p[1] * p[1] - self.radius2
        if a == 0.0:
            return (0.0, 1.0) if c < 0 else None
        b = 2 * (p[0] * dx + p[1] * dy)
        disc = b * b - 4 * a * c
        if disc <= 0:
            return None  # misses, or only touches
        root = math.sqrt(disc)
        lo, hi = max(0.0, (-b - root) / (2 * a)), min(1.0, (-b + root) / (2 * a))
        return (lo, hi) if lo < hi else None


def _outside(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The closed parts of [0, 1] that no (open) inside interval covers."""
    out: list[tuple[float, float]] = []
    start = 0.0
    # A gap of zero length (a point exactly on a circle) is left out: the walk in `_cut` then ends
    # the piece there, or starts the next one at the following crossing.
    for lo, hi in sorted(intervals):
        if lo > start:
            out.append((start, lo))
        start = max(start, hi)
    if start < 1.0:
        out.append((start, 1.0))
    return out


def _on_grid(point: Point) -> Point:
    return (round(point[0] * PRECISION) / PRECISION, round(point[1] * PRECISION) / PRECISION)


def _cut(points: Sequence[Point], circles: Sequence[_Circle]) -> list[list[Point]]:
    projected = [[circle.project(p) for p in points] for circle in circles]
    codes = [circle.outcodes(p) for circle, p in zip(circles, projected, strict=True)]
    pieces: list[list[Point]] = []
    current: list[Point] | None = None

    def at(i: int, t: float) -> Point:
        (lat0, lng0), (lat1, lng1) = points[i], points[i + 1]
        return (lat0 + t * (lat1 - lat0), lng0 + t * (lng1 - lng0))

    for i in range(len(points) - 1):
        near = [k for k in range(len(circles)) if not codes[k][i] & codes[k][i + 1]]
        if not near and current is not None:
            current.append(points[i + 1])  # far from both circles: the common case, kept cheap
            continue
        inside = [iv for k in near if (iv := circles[k].inside(projected[k][i], projected[k][i + 1]))]
        for lo, hi in _outside(inside):
            if current is None or lo > 0.0:
                if current is not None:
                    pieces.append(current)
                current = [points[i] if lo == 0.0 else at(i, lo)]
            if hi < 1.0:
                current.append(at(i, hi))
                pieces.append(current)
                current = None
            else:
                current.append(points[i + 1])
    if current is not None:
        pieces.append(current)
    return pieces


def _enforce(pieces: Iterable[Sequence[Point]], centres: Sequence[Point], radius_m: float) -> list[list[Point]]:
    """Round to the grid, drop repeats, and split at any point still inside a circle (none should be)."""
    # A point further north or south than the radius is outside whatever its longitude.
    band = radius_m / M_PER_DEGREE
    out: list[list[Point]] = []
    for piece in pieces:
        kept: list[Point] = []
        for point in map(_on_grid, piece):
            if any(abs(point[0] - c[0]) < band and haversine_m(point, c) < radius_m for c in centres):
                if len(kept) >= 2:
                    out.append(kept)
                kept = []
            elif not kept or kept[-1] != point:
                kept.append(point)
        if len(kept) >= 2:
            out.append(kept)
    return out


def trim(points: Sequence[Point], radius_m: float) -> list[list[Point]]:
    """The pieces of the route outside both privacy circles, on the 1e-5 degree grid.

    `radius_m <= 0` leaves the route as it is (one piece, even a single point). Pieces of fewer
    than two points are dropped; an empty list means nothing may be drawn.
    """
    if radius_m <= 0:
        return [list(points)] if points else []
    if len(points) < 2:
        return []
    centres = [points[0]] if points[0] == points[-1] else [points[0], points[-1]]
    circles = [_Circle(c, radius_m) for c in centres]
    return _enforce(_cut(points, circles), centres, radius_m)


def bounds_of(pieces: Iterable[Iterable[Point]]) -> dict[str, float] | None:
    lats: list[float] = []
    lngs: list[float] = []
    for piece in pieces:
        for lat, lng in piece:
            lats.append(lat)
            lngs.append(lng)
    if not lats:
        return None
    return {"south": min(lats), "west": min(lngs), "north": max(lats), "east": max(lngs)}


def _length(piece: Sequence[Point]) -> float:
    # Only to pick the longest piece: a flat approximation in degrees is plenty.
    scale = math.cos(math.radians(piece[0][0]))
    return sum(math.hypot(b[0] - a[0], (b[1] - a[1]) * scale) for a, b in itertools.pairwise(piece))


@dataclass(frozen=True, slots=True)
class Route:
    """What the API serves of one route: encoded pieces and their bounds.

    It keeps only strings (points are decoded again on demand, for the rare SVG render), so a
    memo of many routes stays small.
    """

    polylines: tuple[str, ...]  # one encoded polyline per piece, in route order
    polyline: str  # the longest piece, for the single `summary_polyline` field
    bounds: Mapping[str, float]  # south, west, north, east of what remains

    @property
    def pieces(self) -> list[list[Point]]:
        return [decode_polyline(p) for p in self.polylines]

    def as_map(self) -> dict[str, object]:
        return {"summary_polyline": self.polyline, "polylines": list(self.polylines), "bounds": dict(self.bounds)}


def public_route(encoded: object, radius_m: float) -> Route | None:
    """The trimmed route of an encoded polyline; None when it is missing, malformed or fully hidden."""
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        points = decode_polyline(encoded)
    except ValueError:  # over-long ones too (MAX_POLYLINE)
        return None
    pieces = trim(points, radius_m)
    bounds = bounds_of(pieces)
    if bounds is None:
        return None
    if radius_m <= 0:
        return Route((encoded,), encoded, bounds)  # unchanged, byte for byte
    encoded_pieces = tuple(encode_polyline(p) for p in pieces)
    longest = max(range(len(pieces)), key=lambda i: _length(pieces[i]))  # the first of equals
    return Route(encoded_pieces, encoded_pieces[longest], bounds)


class RouteSource(Protocol):
    """Where the public shapes get trimmed routes: `TrimmedRoutes`, or what one `warm` returned."""

    def get(self, encoded: object, /) -> Route | None: ...


class TrimmedRoutes:
    """`public_route` at one radius, memoized by polyline, least recently used first out.

    Each distinct polyline is trimmed once, not once per refresh or per request. Bounded in
    entries and in polyline characters.
    """

    def __init__(self, radius_m: float, *, max_entries: int = 2048, max_chars: int = 4_000_000) -> None:
        self.radius_m = radius_m
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.chars = 0
        self.entries: OrderedDict[str, Route | None] = OrderedDict()

    def get(self, encoded: object) -> Route | None:
        if not isinstance(encoded, str):
            return None
        try:
            route = self.entries[encoded]
        except KeyError:
            pass
        else:
            self.entries.move_to_end(encoded)
            return route
        return self._keep(encoded, public_route(encoded, self.radius_m))

    async def warm(self, polylines: Iterable[object]) -> Warmed:
        """Trim in a worker thread whatever is not memoized yet; the routes of all of them, to shape with.

        A few hundred points cost milliseconds, a list of 200 routes or a long one a good part of a
        second: too long to hold the event loop. What is returned holds every route, so a memo
        too small for them all cannot send the shaping back to trimming on the loop. The memo
        itself is only touched on the loop.
        """
        routes: dict[str, Route | None] = {}
        missing: list[str] = []
        for encoded in dict.fromkeys(p for p in polylines if isinstance(p, str)):
            if encoded in self.entries:
                self.entries.move_to_end(encoded)
                routes[encoded] = self.entries[encoded]
            else:
                missing.append(encoded)
        if missing:
            radius = self.radius_m
            trimmed = await asyncio.to_thread(lambda: [public_route(p, radius) for p in missing])
            for encoded, route in zip(missing, trimmed, strict=True):
                routes[encoded] = self._keep(encoded, route)
        return Warmed(routes, self)

    def _keep(self, encoded: str, route: Route | None) -> Route | None:
        """Memoize `route` (two warms of one polyline at once: equal results, one entry); returns it."""
        if len(encoded) <= self.max_chars and self.max_entries > 0:
            if encoded not in self.entries:
                self.chars += len(encoded)
            self.entries[encoded] = route
            self.entries.move_to_end(encoded)
            while len(self.entries) > self.max_entries or self.chars > self.max_chars:
                evicted, _ = self.entries.popitem(last=False)
                self.chars -= len(evicted)
        return route


class Warmed:
    """The routes one `warm` trimmed or found, looked up first; the memo for any other polyline."""

    __slots__ = ("memo", "routes")

    def __init__(self, routes: dict[str, Route | None], memo: TrimmedRoutes) -> None:
        self.routes = routes
        self.memo = memo

    def get(self, encoded: object) -> Route | None:
        if isinstance(encoded, str) and encoded in self.routes:
            return self.routes[encoded]
        return self.memo.get(encoded)
