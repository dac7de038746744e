"""The widget in a real headless Chromium, against `python -m service --sandbox` on loopback.

What a website owner sees: the demo page renders the feed's activities as cards, with the links and
credits Strava asks for; data stays text; nothing errs in the console; and the widget says so
plainly when the API is unreachable or refuses the site's origin. The assertions are driven by the
feed JSON the same service returns, so they hold for any seed.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests import browser
from tests.support import LOG_DIR, ROOT, SECRETS, ServiceProcess, free_port, serve_in_thread

PREFIX = "/api/strava-integration"
DEMO_LIMIT = 6  # what demo.html asks for
MARKUP_NAME = "<img src=x onerror=alert(1)>"
# Set to refresh the README's screenshot from this run.
UPDATE_SCREENSHOT = os.environ.get("SITEAPI_UPDATE_SCREENSHOTS") == "1"

# Everything a test asserts about the widget, read from its shadow DOM in one round trip.
READ_WIDGET = """
const host = document.querySelector("strava-activity-feed");
const root = host && host.shadowRoot;
if (!root || host.hasAttribute("aria-busy")) return null;
const status = root.querySelector("[role=status]");
const list = root.querySelector("ul[role=list]");
const text = (node) => (node ? node.textContent : null);
return {
  status: status && {text: status.textContent, live: status.getAttribute("aria-live"), error: status.matches(".error")},
  cards: list && [...list.children].map((li) => {
    const link = li.querySelector("article > a");
    return {
      tag: li.tagName, heading: text(li.querySelector("article h3")),
      link: link && {href: link.getAttribute("href"), text: link.textContent, target: link.target, rel: link.rel},
      credit: text(li.querySelector(".credit")),
      images: [...li.querySelectorAll("img")].map((i) => ({src: i.src, alt: i.alt, done: i.complete})),
      figures: [...li.querySelectorAll("dt")].map((dt) => dt.textContent),
      time: li.querySelector("time") && li.querySelector("time").getAttribute("datetime"),
    };
  }),
  powered: text(root.querySelector(".powered a")),
  shadowImages: [...root.querySelectorAll("img")].map((i) => i.getAttribute("src")),
  pageImages: document.images.length,
};
"""
# Route images are lazy: those in the viewport must have loaded and decoded to a real picture.
IMAGES_IN_VIEW_LOADED = """
const images = [...document.querySelector("strava-activity-feed").shadowRoot.querySelectorAll("img")];
return images.filter((i) => i.getBoundingClientRect().top < innerHeight).every((i) => i.complete && i.naturalWidth > 0);
"""
FOOT = {"Run", "TrailRun", "Walk", "Hike", "VirtualRun"}


def host_app(service_url: str) -> Starlette:
    """Another website (another origin) that embeds the widget, as the README tells site owners to."""

    async def page(request: Request) -> HTMLResponse:
        src = request.query_params.get("src", service_url + PREFIX)
        limit = request.query_params.get("limit", "3")
        sport = request.query_params.get("sport_type")
        extra = f' sport-type="{html.escape(sport)}"' if sport else ""
        return HTMLResponse(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>A website</title></head><body>"
            f'<strava-activity-feed src="{html.escape(src)}" limit="{html.escape(limit)}"{extra}>'
            "</strava-activity-feed>"
            f'<script src="{html.escape(service_url + PREFIX)}/widget.js"></script></body></html>'
        )

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    return Starlette(routes=[Route("/", page), Route("/favicon.ico", favicon)])


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[ServiceProcess, str]]:
    """The sandbox service, and a website on 127.0.0.1 whose origin CORS_ALLOW_ORIGINS admits."""
    service = ServiceProcess(env={k: v for k, v in SECRETS.items() if k != "METRICS_BEARER_TOKEN"}, args=("--sandbox",))
    with serve_in_thread(host_app(service.base_url)) as site:
        service.env["CORS_ALLOW_ORIGINS"] = site
        with service:
            yield service, site


@pytest.fixture(scope="module")
def chromium() -> Iterator[browser.Browser]:
    if not browser.available():
        pytest.fail("needs Debian's chromium and chromium-driver packages (.ci/run installs them)")
    with browser.chromium() as session:
        yield session


@pytest.fixture
def page(chromium: browser.Browser) -> Iterator[browser.Browser]:
    """The shared browser, with the console and any alert of the previous test out of the way."""
    chromium.console()
    yield chromium
    assert chromium.alert_text() is None, "a dialog opened"


def feed(service: ServiceProcess, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(service.base_url + PREFIX + "/feed", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["activities"]


def rendered(page: browser.Browser, cards: int | None = None) -> dict[str, Any]:
    """The widget once it has settled (with `cards` cards, if given)."""
    if cards is None:
        return page.wait_for(f"const w = (() => {{{READ_WIDGET}}})(); return w && (w.cards || w.status) ? w : null")
    return page.wait_for(
        f"const w = (() => {{{READ_WIDGET}}})(); return w && w.cards && w.cards.length === {cards} ? w : null"
    )


def route_served(service: ServiceProcess, items: list[dict[str, Any]]) -> bool:
    """Whether this build serves route.svg (another part of issue 11; the widget hides a missing image)."""
    url = next((i["route_svg"] for i in items if i["route_svg"]), None)
    return url is not None and httpx.get(urljoin(service.base_url, url), timeout=10).status_code == 200


def console_errors(page: browser.Browser, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    # The browser asks every origin for /favicon.ico; the service has none, and that is not the page's doing.
    ignored = ("/favicon.ico ", *allowed)
    return [e for e in page.console() if e["level"] == "SEVERE" and not any(s in e["message"] for s in ignored)]


def assert_cards_match(widget: dict[str, Any], items: list[dict[str, Any]], base: str, routes: bool) -> None:
    assert widget["status"] is None
    assert [c["heading"] for c in widget["cards"]] == [i["name"] for i in items]
    for card, item in zip(widget["cards"], items, strict=True):
        assert card["tag"] == "LI"
        assert card["link"] == {
            "href": item["strava_url"],
            "text": "View on Strava",
            "target": "_blank",
            "rel": "noopener",
        }
        assert card["credit"] == (f"Recorded with {item['attribution']}" if item["attribution"] else None)
        assert card["time"] == item["start_date"]
        moving = bool(item["distance_m"] and item["moving_time_s"])
        expected_figures = [
            *(["Distance"] if item["distance_m"] is not None else []),
            *(["Moving time"] if item["moving_time_s"] else []),
            *([("Pace" if item["sport_type"] in FOOT else "Speed")] if moving else []),
            *(["Elevation gain"] if item["total_elevation_gain_m"] is not None else []),
        ]
        assert card["figures"] == expected_figures, item["id"]
        if routes:  # a missing route image removes itself, so only a served one can be checked
            expected = [{"src": urljoin(base, item["route_svg"]), "alt": f"Route map of {item['name']}"}]
            assert [{"src": i["src"], "alt": i["alt"]} for i in card["images"]] == (
                expected if item["route_svg"] else []
            )
    assert widget["powered"] == "Powered by Strava"
    assert widget["pageImages"] == 0


def test_demo_page_renders_the_feed(stack: tuple[ServiceProcess, str], page: browser.Browser) -> None:
    service, _ = stack
    items = feed(service, limit=DEMO_LIMIT)
    assert items, "the sandbox has public activities"
    routes = route_served(service, items)
    page.get(service.base_url + PREFIX + "/demo")
    widget = rendered(page, len(items))
    assert_cards_match(widget, items, service.base_url + PREFIX + "/", routes)
    if routes:
        page.wait_for(IMAGES_IN_VIEW_LOADED)
    shot = page.screenshot(LOG_DIR / "widget-demo.png")
    if UPDATE_SCREENSHOT:
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "widget-demo.png").write_bytes(shot.read_bytes())
    # With the CSP in force, a blocked script, style or request would show up here too.
    allowed = () if routes else ("/route.svg - Failed to load resource",)
    assert console_errors(page, allowed) == []


def test_attribution_appears_exactly_where_the_feed_says(
    stack: tuple[ServiceProcess, str], page: browser.Browser
) -> None:
    service, _ = stack
    items = feed(service, limit=200)
    page.get(service.base_url + PREFIX + "/demo")
    rendered(page, min(DEMO_LIMIT, len(items)))
    page.run("document.querySelector('strava-activity-feed').setAttribute('limit', '200')")
    widget = rendered(page, len(items))
    credits = [c["credit"] for c in widget["cards"]]
    assert credits == [f"Recorded with {i['attribution']}" if i["attribution"] else None for i in items]
    assert any(i["attribution"] == "Garmin" for i in items), "the sandbox seed has Garmin-recorded activities"
    assert not all(i["attribution"] for i in items), "and some that are not"


def test_an_activity_named_like_markup_renders_as_text(
    stack: tuple[ServiceProcess, str], page: browser.Browser
) -> None:
    service, _ = stack
    items = feed(service, limit=200)
    assert MARKUP_NAME in [i["name"] for i in items], "the sandbox seed has an activity named like markup"
    page.get(service.base_url + PREFIX + "/demo")
    rendered(page, min(DEMO_LIMIT, len(items)))
    page.run("document.querySelector('strava-activity-feed').setAttribute('limit', '200')")
    widget = rendered(page, len(items))
    card = next(c for c in widget["cards"] if c["heading"] == MARKUP_NAME)
    assert all(i["alt"] == f"Route map of {MARKUP_NAME}" for i in card["images"])
    # Only route images exist, in the shadow DOM and in the page: the name made none of its own.
    assert all(src.endswith("/route.svg") for src in widget["shadowImages"])
    assert widget["pageImages"] == 0
    assert page.alert_text() is None


def test_attributes_rerender_and_the_browser_cache_serves_the_feed(
    stack: tuple[ServiceProcess, str], page: browser.Browser
) -> None:
    service, _ = stack
    page.get(service.base_url + PREFIX + "/demo")
    rendered(page, len(feed(service, limit=DEMO_LIMIT)))
    element = "document.querySelector('strava-activity-feed')"
    page.run(f"{element}.setAttribute('limit', '5')")  # a query no other test asks, so not cached yet
    assert [c["heading"] for c in rendered(page, 5)["cards"]] == [i["name"] for i in feed(service, limit=5)]
    runs = feed(service, limit=2, sport_type="Run")
    page.run(f"{element}.setAttribute('sport-type', 'Run'); {element}.setAttribute('limit', '2')")
    assert [c["heading"] for c in rendered(page, len(runs))["cards"]] == [i["name"] for i in runs]
    page.run(f"{element}.removeAttribute('sport-type'); {element}.setAttribute('limit', '5')")
    rendered(page, 5)
    # The same feed URL again: answered by the browser's HTTP cache, as the feed's Cache-Control allows.
    url = f"{service.base_url}{PREFIX}/feed?limit=5"
    fetches = page.run(
        "return performance.getEntriesByType('resource').filter((e) => e.name === arguments[0])"
        ".map((e) => e.transferSize)",
        url,
    )
    assert len(fetches) == 2 and fetches[0] > 0 and fetches[1] == 0, fetches


def test_another_origin_embeds_the_widget_when_cors_allows_it(
    stack: tuple[ServiceProcess, str], page: browser.Browser
) -> None:
    service, site = stack
    items = feed(service, limit=3)
    page.get(site + "/?limit=3")
    widget = rendered(page, len(items))
    assert_cards_match(widget, items, service.base_url + PREFIX + "/", route_served(service, items))


def test_empty_state(stack: tuple[ServiceProcess, str], page: browser.Browser) -> None:
    service, site = stack
    assert feed(service, sport_type="Kitesurf") == []
    page.get(site + "/?sport_type=Kitesurf")
    widget = rendered(page)
    assert widget["cards"] is None
    assert widget["status"] == {"text": "No activities yet.", "live": "polite", "error": False}
    assert console_errors(page) == []


def test_error_state_when_the_api_is_down(stack: tuple[ServiceProcess, str], page: browser.Browser) -> None:
    _, site = stack
    closed = f"http://127.0.0.1:{free_port()}{PREFIX}"  # nothing listens there
    page.get(site + "/?src=" + closed)
    widget = rendered(page)
    assert widget["cards"] is None
    assert widget["status"] == {"text": "Activities could not be loaded.", "live": "polite", "error": True}
    page.screenshot(LOG_DIR / "widget-error.png")


def test_error_state_when_the_site_origin_is_not_allowed(
    stack: tuple[ServiceProcess, str], page: browser.Browser
) -> None:
    """localhost is another origin than 127.0.0.1: the one CORS_ALLOW_ORIGINS names is the only one served."""
    _, site = stack
    page.get(site.replace("127.0.0.1", "localhost") + "/")
    widget = rendered(page)
    assert widget["status"] == {"text": "Activities could not be loaded.", "live": "polite", "error": True}
    assert any("CORS policy" in e["message"] for e in page.console())
