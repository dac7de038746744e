"""The embeddable `<strava-activity-feed>` script and its demo page: read once at start-up, served from memory.

`/widget.js` is what sites paste (short max-age, revalidated by ETag, so a release reaches them within
minutes); `/widget.<version>.js` is the same bytes under a content-hashed name that never changes, so
it is cached for a year. Only the current version is served: an old name is a 404, never new bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.errors import ApiError
from service.http_cache import PreparedBody, cache_control, etag_for
from service.openapi import describe
from service.projects.strava_integration.config import StravaSettings

STATIC = Path(__file__).resolve().parent / "static"
TAGS = ["strava-integration"]
JAVASCRIPT = "text/javascript"
HTML = "text/html"
TEXT_JAVASCRIPT = f"{JAVASCRIPT}; charset=utf-8"  # the Content-Type headers; the spec names the bare types
TEXT_HTML = f"{HTML}; charset=utf-8"
WIDGET_MAX_AGE = 300  # seconds: how long a site may run an old widget.js before revalidating
IMMUTABLE = "public, max-age=31536000, immutable"
VERSION_LENGTH = 16  # hex characters of the content hash in the versioned name
_STYLE = re.compile(rb"<style>(.*?)</style>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Assets:
    widget: bytes
    version: str
    demo: bytes
    demo_csp: str


def load_assets(static: Path = STATIC) -> Assets:
    """Read and prepare the files (blocking I/O, so at start-up only)."""
    widget = (static / "widget.js").read_bytes()
    version = hashlib.blake2b(widget, digest_size=16).hexdigest()[:VERSION_LENGTH]
    demo = (static / "demo.html").read_bytes().replace(b"{{version}}", version.encode())
    return Assets(widget, version, demo, demo_csp(demo))


def demo_csp(page: bytes) -> str:
    """Only this service: its script, its images, its API; the page's own inline style by hash."""
    hashes = [base64.b64encode(hashlib.sha256(css).digest()).decode() for css in _STYLE.findall(page)]
    styles = " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"
    return (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
        f"style-src {styles}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class Asset:
    """A GET endpoint serving one prepared body, as a plain ASGI app (like the data routes)."""

    def __init__(self, name: str, prepared: PreparedBody) -> None:
        self.__name__ = name  # Starlette names the route after it
        self.prepared = prepared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.prepared.for_request(scope)(scope, receive, send)


class VersionedAsset(Asset):
    """`/widget.{version}.js`: the current version only."""

    def __init__(self, name: str, prepared: PreparedBody, version: str) -> None:
        super().__init__(name, prepared)
        self.version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path_params"].get("version") != self.version:
            raise ApiError(404, "not_found", "No such widget version; /widget.js is always the current one.")
        await super().__call__(scope, receive, send)


class DisabledDemo:
    __name__ = "demo"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise ApiError(404, "not_found", "The demo page is off; set STRAVA_DEMO_PAGE=true to serve it.")


def widget_routes(settings: StravaSettings, assets: Assets | None = None) -> list[Route]:
    assets = assets or load_assets()
    etag = etag_for(assets.widget)
    current = Asset("widget", PreparedBody(assets.widget, etag, cache_control(WIDGET_MAX_AGE, 3600), TEXT_JAVASCRIPT))
    pinned = VersionedAsset(
        "widget_versioned", PreparedBody(assets.widget, etag, IMMUTABLE, TEXT_JAVASCRIPT), assets.version
    )
    demo: Asset | DisabledDemo = DisabledDemo()
    if settings.demo_page:
        page = PreparedBody(
            assets.demo,
            etag_for(assets.demo),
            "no-cache",
            TEXT_HTML,
            [(b"content-security-policy", assets.demo_csp.encode())],
        )
        demo = Asset("demo", page)
    script = {"200": "The script", "304": "Not modified (If-None-Match)"}
    return [
        Route(
            "/widget.js",
            describe(
                "The <strava-activity-feed> widget (current version)",
                responses=script,
                tags=TAGS,
                media_type=JAVASCRIPT,
            )(current),
            methods=["GET"],
        ),
        Route(
            "/widget.{version}.js",
            describe(
                "The widget under its content-hashed name, cached for a year",
                responses={**script, "404": "Not the current version"},
                tags=TAGS,
                media_type=JAVASCRIPT,
            )(pinned),
            methods=["GET"],
        ),
        Route(
            "/demo",
            describe(
                "A page that shows the widget (STRAVA_DEMO_PAGE)",
                responses={"200": "The page", "304": "Not modified (If-None-Match)", "404": "Demo page off"},
                tags=TAGS,
                media_type=HTML,
            )(demo),
            methods=["GET"],
        ),
    ]
