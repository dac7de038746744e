"""Route SVGs: strict parameters, escaped and deterministic markup, fitting, and the endpoint's HTTP.

The endpoint is exercised in-process through httpx's ASGITransport on a small Starlette app that
mounts it as the project will, with the service's own error handlers and a fake route source.
"""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route as StarletteRoute

from service.errors import EXCEPTION_HANDLERS, ApiError
from service.http_cache import cache_control, etag_for
from service.projects.strava_integration.errors import BudgetExhausted
from service.projects.strava_integration.polyline import encode_polyline
from service.projects.strava_integration.privacy import Point, Route, public_route
from service.projects.strava_integration.route_svg import (
    CSP,
    DEFAULTS,
    SVG_PARAMS,
    RenderCache,
    RouteSvg,
    SvgParams,
    parse_params,
    path_data,
    prepared_svg,
    render,
    svg_params,
)

SVG = "{http://www.w3.org/2000/svg}"
M_PER_DEG = math.radians(1.0) * 6_371_008.8


def offsets(origin: Point, east_north: Sequence[tuple[float, float]]) -> list[Point]:
    lat0, lng0 = origin
    k = M_PER_DEG * math.cos(math.radians(lat0))
    return [(lat0 + n / M_PER_DEG, lng0 + e / k) for e, n in east_north]


def coords(d: str) -> list[list[tuple[float, float]]]:
    """The subpaths of a path's `d`, as lists of (x, y)."""
    out = []
    for sub in re.findall(r"M[^M]*", d):
        numbers = [float(v) for v in re.findall(r"-?[0-9.]+", sub)]
        out.append(list(zip(numbers[::2], numbers[1::2], strict=True)))
    return out


def parsed(body: bytes) -> tuple[ET.Element, ET.Element]:
    root = ET.fromstring(body)  # noqa: S314 - our own output
    assert root.tag == SVG + "svg"
    [path] = root.findall(SVG + "path")
    return root, path


# ---- parameters ----

BAD = [
    ("w", "63"),
    ("w", "1201"),
    ("w", "0"),
    ("w", "-100"),
    ("w", "+100"),
    ("w", " 100"),
    ("w", "100.5"),
    ("w", "100."),
    ("w", "100.000000000"),
    ("w", "1e3"),
    ("w", "abc"),
    ("w", "\uff11\uff10\uff10"),  # fullwidth digits: str.isdigit says yes
    ("w", "00100"),
    ("w", "9" * 40),
    ("h", "63"),
    ("h", "1201"),
    ("h", "0x100"),
    ("stroke", "fc4c02"),
    ("stroke", "#fc4c0"),
    ("stroke", "#fc4c022"),
    ("stroke", "#gggggg"),
    ("stroke", "red"),
    ("stroke", "#fc4c02 "),
    ("stroke", "%23fc4c02"),
    ("stroke", '#000000"/><script>alert(1)</script>'),
    ("stroke", "rgb(0,0,0)"),
    ("stroke_width", "0.49"),
    ("stroke_width", "20.01"),
    ("stroke_width", "0"),
    ("stroke_width", "-1"),
    ("stroke_width", "1e1"),
    ("stroke_width", ".5"),
    ("stroke_width", "5."),
    ("stroke_width", "nan"),
    ("stroke_width", "inf"),
    ("stroke_width", "100"),
    ("stroke_width", "3." + "0" * 18),
    ("stroke_width", "٣"),  # an Arabic-Indic digit
    ("stroke_width", "3,5"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_values_name_their_parameter(name: str, value: str) -> None:
    query = httpx.QueryParams({name: value})
    with pytest.raises(ApiError) as caught:
        parse_params(str(query).encode())
    assert caught.value.status == 422
    assert caught.value.code == "invalid_parameter"
    assert caught.value.parameter == name


@pytest.mark.parametrize(
    ("query", "name"),
    [
        (b"x=1", "x"),
        (b"W=100", "W"),  # names are case-sensitive
        (b"width=100", "width"),
        (b"w=100&w=100", "w"),
        (b"stroke=%23000000&stroke=%23000000", "stroke"),
        (b"%3Cscript%3E=1", "query"),  # not echoed
        (b"w=100&" + b"a" * 100 + b"=1", "query"),
    ],
)
def test_unknown_and_repeated_parameters_are_refused(query: bytes, name: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_params(query)
    assert (caught.value.status, caught.value.parameter) == (422, name)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", DEFAULTS),
        (b"w=&h=&stroke=&stroke_width=", DEFAULTS),
        (b"w", DEFAULTS),
        (b"w=64&h=1200&stroke=%23ABCDEF&stroke_width=0.5", SvgParams(64, 1200, "#abcdef", 0.5)),
        (b"w=1200&h=64&stroke_width=20", SvgParams(1200, 64, "#fc4c02", 20.0)),
        (b"w=0100", SvgParams(100, 180)),
        (b"w=89.0&h=100.00", SvgParams(89, 100)),
        (b"stroke_width=19.999999999999996", SvgParams(stroke_width=20.0)),
        (b"stroke_width=2.345", SvgParams(stroke_width=2.35)),
        (b"stroke_width=07", SvgParams(stroke_width=7.0)),
    ],
)
def test_good_queries(query: bytes, expected: SvgParams) -> None:
    assert parse_params(query) == expected
    assert svg_params(query) == expected


def test_a_query_padded_past_the_memo_bound_is_answered_but_not_kept() -> None:
    # `&` separates nothing: the padded query means what the short one does, at any length.
    padded = b"w=200&h=100" + b"&" * 16_000
    assert svg_params(padded) == SvgParams(200, 100)
    assert padded not in svg_params.entries
    assert all(len(key) <= svg_params.max_key for key in svg_params.entries)


def test_defaults() -> None:
    assert SvgParams(320, 180, "#fc4c02", 3.0) == DEFAULTS


def test_fuzzed_values_are_accepted_in_range_or_refused_by_name() -> None:
    rng = random.Random(3)
    alphabet = "0123456789.-+e#abcdefABCDEFxX %&=;<>\"'\x00é٣"
    for _ in range(5000):
        name = rng.choice([p.name for p in SVG_PARAMS])
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        if rng.random() < 0.3:
            value = rng.choice(["#", ""]) + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(6))
        elif rng.random() < 0.3:
            value = repr(rng.uniform(-5, 1300))
        query = str(httpx.QueryParams({name: value})).encode()
        try:
            params = parse_params(query)
        except ApiError as exc:
            assert (exc.status, exc.parameter) == (422, name), (name, value)
            continue
        assert 64 <= params.width <= 1200 and 64 <= params.height <= 1200
        assert re.fullmatch(r"#[0-9a-f]{6}", params.stroke)
        assert 0.5 <= params.stroke_width <= 20


def test_schema_bounds_are_the_parsers() -> None:
    # The OpenAPI declaration is what the fuzz tests trust: its edges must be the parser's edges.
    by_name = {p.name: p for p in SVG_PARAMS}
    assert set(by_name) == {"w", "h", "stroke", "stroke_width"}
    for name in ("w", "h"):
        schema = by_name[name].schema
        for ok in (schema["minimum"], schema["maximum"], schema["default"]):
            parse_params(f"{name}={ok}".encode())
        for bad in (schema["minimum"] - 1, schema["maximum"] + 1):
            with pytest.raises(ApiError):
                parse_params(f"{name}={bad}".encode())
    schema = by_name["stroke_width"].schema
    for ok in (schema["minimum"], schema["maximum"], schema["default"]):
        parse_params(f"stroke_width={ok}".encode())
    for bad in (schema["minimum"] - 0.01, schema["maximum"] + 0.01):
        with pytest.raises(ApiError):
            parse_params(f"stroke_width={bad}".encode())
    assert re.fullmatch(by_name["stroke"].schema["pattern"], by_name["stroke"].schema["default"])
    assert all(p.as_json()["in"] == "query" and p.allow_empty for p in SVG_PARAMS)


# ---- rendering ----

LONDON = (51.50735, -0.12776)
SQUARE = offsets((60.0, 10.0), [(0, 0), (1000, 0), (1000, 1000), (0, 1000), (0, 0)])
TALL = offsets(LONDON, [(0, 0), (30, 500), (0, 1000)])
WIDE = offsets(LONDON, [(0, 0), (3000, 10), (6000, 0)])
TWO = [offsets(LONDON, [(0, 0), (500, 0)]), offsets(LONDON, [(800, 300), (1500, 300), (1500, 900)])]


def test_markup() -> None:
    body = render([SQUARE], SvgParams(400, 300, "#123abc", 2.5), "Route map of activity 7")
    root, path = parsed(body)
    assert root.attrib == {"width": "400", "height": "300", "viewBox": "0 0 400 300", "role": "img"}
    assert root.find(SVG + "title").text == "Route map of activity 7"  # type: ignore[union-attr]
    assert path.attrib["fill"] == "none"
    assert path.attrib["stroke"] == "#123abc"
    assert path.attrib["stroke-width"] == "2.5"
    assert path.attrib["stroke-linecap"] == path.attrib["stroke-linejoin"] == "round"
    assert len(root) == 2  # the title and the path: nothing else
    for forbidden in (b"<script", b"href", b"style", b"<foreignObject", b"http://www.w3.org/1999"):
        assert forbidden not in body
    assert not re.search(rb"\son[a-z]+=", body)


def test_title_is_escaped() -> None:
    title = "</title><script>alert(1)</script>&\"'"
    body = render([SQUARE], DEFAULTS, title)
    assert b"<script" not in body
    root, _ = parsed(body)
    assert root.find(SVG + "title").text == title  # type: ignore[union-attr]


def test_deterministic() -> None:
    first = render(TWO, DEFAULTS, "t")
    assert render(TWO, DEFAULTS, "t") == first
    assert render([list(p) for p in TWO], SvgParams(), "t") == first
    assert render(TWO, SvgParams(stroke_width=3.5), "t") != first
    # Same parameters in another spelling or order: the same bytes, so the same ETag.
    a = parse_params(b"w=200&h=100&stroke=%23ABCDEF&stroke_width=2.50")
    b = parse_params(b"stroke_width=2.5&stroke=%23abcdef&h=100&w=0200")
    assert render(TWO, a, "t") == render(TWO, b, "t")


@pytest.mark.parametrize("pieces", [[SQUARE], [TALL], [WIDE], TWO, [[LONDON]], [[LONDON, LONDON]]], ids=str)
@pytest.mark.parametrize(
    "params", [DEFAULTS, SvgParams(64, 64, stroke_width=20), SvgParams(1200, 64), SvgParams(64, 1200)]
)
def test_fitted_inside_the_view_box(pieces: list[list[Point]], params: SvgParams) -> None:
    _, path = parsed(render(pieces, params, "t"))
    pad = params.stroke_width / 2 + 0.05 * min(params.width, params.height)
    subpaths = coords(path.attrib["d"])
    assert len(subpaths) == len(pieces)
    xs = [x for sub in subpaths for x, _ in sub]
    ys = [y for sub in subpaths for _, y in sub]
    # Inside the padding, so even the stroke's round caps stay in the view box.
    assert pad - 0.05 <= min(xs) and max(xs) <= params.width - pad + 0.05
    assert pad - 0.05 <= min(ys) and max(ys) <= params.height - pad + 0.05
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    if span_x or span_y:  # fitted: one dimension fills the inner box
        filled = max(span_x / (params.width - 2 * pad), span_y / (params.height - 2 * pad))
        assert filled == pytest.approx(1, abs=0.01)
        # Centred: equal margins on the other side too.
        assert min(xs) + max(xs) == pytest.approx(params.width, abs=0.15)
        assert min(ys) + max(ys) == pytest.approx(params.height, abs=0.15)
    else:
        assert (xs[0], ys[0]) == (params.width / 2, params.height / 2)


def test_aspect_is_kept() -> None:
    # 1 km by 1 km at 60° north spans twice as many degrees of longitude as of latitude.
    _, path = parsed(render([SQUARE], SvgParams(600, 300), "t"))
    [sub] = coords(path.attrib["d"])
    xs, ys = [x for x, _ in sub], [y for _, y in sub]
    assert (max(xs) - min(xs)) / (max(ys) - min(ys)) == pytest.approx(1, abs=0.01)
    # North is up: the route's second corner (east) is level with the start, the third above it.
    assert sub[1][1] == pytest.approx(sub[0][1], abs=0.1) and sub[2][1] < sub[1][1]


def test_pieces_become_subpaths() -> None:
    d = path_data(TWO, 320, 180, 10)
    assert d.count("M") == 2 and d.startswith("M")
    assert [len(sub) for sub in coords(d)] == [2, 3]
    assert path_data([], 320, 180, 10) == ""


def test_points_on_one_pixel_collapse() -> None:
    dense = offsets(LONDON, [(i * 0.0005, 0) for i in range(1000)] + [(3000, 0)])
    [sub] = coords(path_data([dense], 320, 180, 10))
    assert len(sub) == 2  # 1000 points within half a metre are one 0.1 px step at this scale
    assert coords(path_data([[LONDON]], 320, 180, 10)) == [[(160, 90), (160, 90)]]  # a dot


# ---- the cache ----


def _route(points: list[Point]) -> Route:
    route = public_route(encode_polyline(points), 0)
    assert route is not None
    return route


def test_render_cache_is_bounded_and_keyed_on_the_route_content() -> None:
    cache = RenderCache(max_entries=2, max_bytes=1000)
    r1, r2 = _route(SQUARE), _route(SQUARE)
    p = prepared_svg(b"x" * 100, "c")
    cache.put(1, DEFAULTS, r1, p)
    assert cache.get(1, DEFAULTS, r1) is p
    assert r2 is not r1 and cache.get(1, DEFAULTS, r2) is p  # an equal route from a refresh: the same picture
    assert cache.get(1, DEFAULTS, _route(SQUARE[:-1])) is None  # another route: rendered afresh
    assert cache.get(1, SvgParams(stroke_width=4), r1) is None
    cache.put(2, DEFAULTS, r1, prepared_svg(b"y" * 100, "c"))
    cache.get(1, DEFAULTS, r1)  # now 2 is the least recently used
    cache.put(3, DEFAULTS, r1, prepared_svg(b"z" * 100, "c"))
    assert [k[0] for k in cache.entries] == [1, 3]
    cache.put(4, DEFAULTS, r1, prepared_svg(b"w" * 950, "c"))  # over the byte bound: 1 and 3 go
    assert [k[0] for k in cache.entries] == [4] and cache.bytes == 950
    cache.put(5, DEFAULTS, r1, prepared_svg(b"v" * 1001, "c"))  # bigger than the whole cache: not kept
    assert 5 not in [k[0] for k in cache.entries] and cache.bytes == 950
    cache.put(4, DEFAULTS, r2, prepared_svg(b"u" * 10, "c"))  # replaced, bytes follow
    assert cache.bytes == 10 and len(cache.entries) == 1


# ---- the endpoint, over ASGI ----

CONTROL = cache_control(300, 86400)
URL = "/activities/{}/route.svg"


class FakeSource:
    """What the data layer will provide: the activity's public trimmed Route, or None."""

    def __init__(self) -> None:
        self.routes: dict[int, Route | None] = {}
        self.error: Exception | None = None
        self.calls = 0

    async def __call__(self, activity_id: int) -> Route | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.routes.get(activity_id)


@pytest.fixture
def source() -> FakeSource:
    src = FakeSource()
    src.routes[1] = public_route(encode_polyline(offsets(LONDON, [(0, 0), (3000, 0), (3000, 2000), (0, 0)])), 200)
    src.routes[2] = None  # hidden, or without a route
    return src


@pytest.fixture
def endpoint(source: FakeSource) -> RouteSvg:
    return RouteSvg(source, CONTROL)


@pytest.fixture
async def client(endpoint: RouteSvg) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[StarletteRoute("/activities/{activity_id:int}/route.svg", endpoint, methods=["GET"])],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
        yield c


async def test_serves_the_svg(client: httpx.AsyncClient, source: FakeSource) -> None:
    params: dict[str, str | int] = {"w": 400, "h": 200, "stroke": "#00AA00", "stroke_width": 4}
    # Identity here, to check the bytes against their ETag; the coded variants are PreparedBody's (test_compression).
    response = await client.get(URL.format(1), params=params, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["content-security-policy"] == CSP
    assert "script-src" not in CSP and CSP.startswith("default-src 'none'")
    assert response.headers["cache-control"] == CONTROL
    assert response.headers["etag"] == etag_for(response.content)
    assert response.headers["content-length"] == str(len(response.content))
    root, path = parsed(response.content)
    assert root.attrib["viewBox"] == "0 0 400 200"
    assert path.attrib["stroke"] == "#00aa00" and path.attrib["stroke-width"] == "4"
    assert root.find(SVG + "title").text == "Route map of activity 1"  # type: ignore[union-attr]
    route = source.routes[1]
    assert route is not None
    assert len(coords(path.attrib["d"])) == len(route.pieces)


async def test_etag_and_304(client: httpx.AsyncClient) -> None:
    first = await client.get(URL.format(1))
    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await client.get(URL.format(1), headers={"If-None-Match": header})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag and again.headers["cache-control"] == CONTROL
    other = await client.get(URL.format(1), headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200 and other.content == first.content
    # Other parameters: another picture, another ETag.
    wider = await client.get(URL.format(1), params={"w": 640})
    assert wider.headers["etag"] != etag


async def test_rendered_once_per_route_and_parameters(
    client: httpx.AsyncClient, endpoint: RouteSvg, source: FakeSource
) -> None:
    first = await client.get(URL.format(1))
    [(key, (_, prepared))] = endpoint.cache.entries.items()
    await client.get(URL.format(1), params={"w": "", "stroke": "#FC4C02"})  # the defaults, spelled out
    assert list(endpoint.cache.entries.items()) == [(key, (source.routes[1].polylines, prepared))]  # type: ignore[union-attr]
    assert source.calls == 2  # the source is asked every time (it applies the privacy rule)
    # A refresh hands out a new Route object; the same route is not drawn again...
    same = public_route(encode_polyline(offsets(LONDON, [(0, 0), (3000, 0), (3000, 2000), (0, 0)])), 200)
    assert same is not source.routes[1] and same == source.routes[1]
    source.routes[1] = same
    unchanged = await client.get(URL.format(1))
    assert unchanged.headers["etag"] == first.headers["etag"]
    assert list(endpoint.cache.entries.items()) == [(key, (same.polylines, prepared))]  # type: ignore[union-attr]
    # ...a changed one is.
    source.routes[1] = public_route(encode_polyline(offsets(LONDON, [(0, 0), (5000, 0)])), 200)
    changed = await client.get(URL.format(1))
    assert changed.headers["etag"] != prepared.etag
    assert changed.headers["etag"] != first.headers["etag"]  # in the same content coding too
    assert len(endpoint.cache.entries) == 1


@pytest.mark.parametrize("activity_id", [2, 3, 10**18])
async def test_hidden_unknown_or_route_less_is_404_json(client: httpx.AsyncClient, activity_id: int) -> None:
    response = await client.get(URL.format(activity_id))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "not_found"


async def test_bad_parameter_is_422_json(client: httpx.AsyncClient, source: FakeSource) -> None:
    response = await client.get(URL.format(1), params={"stroke": '"><script>alert(1)</script>'})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "invalid_parameter" and response.json()["parameter"] == "stroke"
    assert b"<script" not in response.content
    assert source.calls == 0  # refused before any data is read
    response = await client.get(URL.format(1) + "?w=100&w=200")
    assert (response.status_code, response.json()["parameter"]) == (422, "w")
    response = await client.get(URL.format(1), params={"zoom": 3})
    assert (response.status_code, response.json()["parameter"]) == (422, "zoom")


async def test_upstream_failure_is_its_json_error(client: httpx.AsyncClient, source: FakeSource) -> None:
    source.error = BudgetExhausted(30)
    response = await client.get(URL.format(1))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"] == "strava_budget_exhausted"


async def test_a_route_trimmed_to_nothing_is_not_drawn(client: httpx.AsyncClient, source: FakeSource) -> None:
    # The source applies the privacy trim: a route inside its own circle gives None, hence 404.
    source.routes[5] = public_route(encode_polyline(offsets(LONDON, [(0, 0), (100, 0)])), 200)
    assert source.routes[5] is None
    assert (await client.get(URL.format(5))).status_code == 404
