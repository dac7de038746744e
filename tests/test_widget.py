"""The widget's script and demo page over real HTTP: content type, ETag/304, versioned URL, demo on and off."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.projects import REGISTRY
from service.projects.strava_integration import widget
from service.projects.strava_integration.config import StravaSettings
from service.settings import load_settings
from tests.support import serve_in_thread

PREFIX = "/api/strava-integration"
JS = "text/javascript; charset=utf-8"
STRONG_ETAG = re.compile(r'^"[0-9a-f]{32}"$')


def serve(env: dict[str, str], sandbox: bool) -> Iterator[httpx.Client]:
    settings = load_settings(env, sandbox=sandbox, parsers={p.name: p.parse_settings for p in REGISTRY})
    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url + PREFIX, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox() -> Iterator[httpx.Client]:
    yield from serve({}, sandbox=True)


@pytest.fixture(scope="module")
def production() -> Iterator[httpx.Client]:
    yield from serve({}, sandbox=False)


def versioned_path(client: httpx.Client) -> str:
    match = re.search(r'src="(widget\.[0-9a-f]+\.js)"', client.get("/demo").text)
    assert match, "the demo page loads the widget by its versioned name"
    return "/" + match.group(1)


def test_widget_js_is_javascript_with_a_strong_etag_and_a_short_max_age(production: httpx.Client) -> None:
    response = production.get("/widget.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == JS
    assert response.headers["x-content-type-options"] == "nosniff"  # so the type must be right
    assert STRONG_ETAG.match(response.headers["etag"])
    assert response.headers["cache-control"].startswith(f"public, max-age={widget.WIDGET_MAX_AGE},")
    assert response.content == (widget.STATIC / "widget.js").read_bytes()
    assert b"customElements.define" in response.content
    assert int(response.headers["content-length"]) == len(response.content)


def test_widget_js_revalidates_with_304(production: httpx.Client) -> None:
    etag = production.get("/widget.js").headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = production.get("/widget.js", headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert "cache-control" in again.headers
    assert production.get("/widget.js", headers={"If-None-Match": '"stale"'}).status_code == 200


def test_versioned_url_is_the_same_script_cached_for_a_year(sandbox: httpx.Client) -> None:
    path = versioned_path(sandbox)
    current = sandbox.get("/widget.js")
    pinned = sandbox.get(path)
    assert pinned.status_code == 200
    assert pinned.content == current.content
    assert pinned.headers["content-type"] == JS
    assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert pinned.headers["etag"] == current.headers["etag"]
    assert sandbox.get(path, headers={"If-None-Match": pinned.headers["etag"]}).status_code == 304
    # The name is the content's hash: it changes exactly when the bytes do.
    assert path == f"/widget.{hashlib.blake2b(current.content, digest_size=16).hexdigest()[:16]}.js"


@pytest.mark.parametrize("version", ["0000000000000000", "abc", "1.0.0", "%3Cscript%3E"])
def test_other_versions_are_404_json(production: httpx.Client, version: str) -> None:
    response = production.get(f"/widget.{version}.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "not_found"


def test_demo_page_in_the_sandbox(sandbox: httpx.Client) -> None:
    response = sandbox.get("/demo")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert '<strava-activity-feed src="/api/strava-integration" limit="6">' in page
    assert "{{version}}" not in page
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    for kind in ("script-src", "connect-src", "img-src"):
        assert directives[kind] == "'self'", kind
    # The page's one inline style is allowed by its hash, and nothing else inline is.
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert directives["frame-ancestors"] == "'none'"
    etag = response.headers["etag"]
    assert sandbox.get("/demo", headers={"If-None-Match": etag}).status_code == 304


def test_demo_page_is_404_json_outside_the_sandbox(production: httpx.Client) -> None:
    response = production.get("/demo")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found"
    assert "STRAVA_DEMO_PAGE" in body["message"]
    assert set(body) >= {"error", "message", "request_id"}


@pytest.mark.skipif(
    "demo_page" not in StravaSettings.__dataclass_fields__, reason="STRAVA_DEMO_PAGE is not declared yet"
)
@pytest.mark.parametrize(("value", "sandboxed", "status"), [("false", True, 404), ("true", False, 200)])
def test_strava_demo_page_overrides_the_default(value: str, sandboxed: bool, status: int) -> None:
    for client in serve({"STRAVA_DEMO_PAGE": value}, sandbox=sandboxed):
        assert client.get("/demo").status_code == status


def test_routes_are_in_the_openapi_spec(production: httpx.Client) -> None:
    spec = production.get(str(production.base_url.copy_with(path="/openapi.json"))).json()
    paths = spec["paths"]
    assert "text/javascript" in paths[f"{PREFIX}/widget.js"]["get"]["responses"]["200"]["content"]
    assert f"{PREFIX}/widget.{{version}}.js" in paths
    assert "text/html" in paths[f"{PREFIX}/demo"]["get"]["responses"]["200"]["content"]


def test_demo_csp_hashes_every_inline_style() -> None:
    csp = widget.demo_csp(b"<style>a{}</style><p></p><style>\nb{}\n</style>")
    hashes = re.findall(r"'sha256-([^']+)'", csp)
    assert hashes == [base64.b64encode(hashlib.sha256(css).digest()).decode() for css in (b"a{}", b"\nb{}\n")]
    assert "style-src 'none'" in widget.demo_csp(b"<p>no style</p>")


def test_assets_are_read_once(tmp_path: Path) -> None:
    """The files are read when the routes are built; changing them later changes nothing served."""
    (tmp_path / "widget.js").write_bytes(b"/* v1 */")
    (tmp_path / "demo.html").write_bytes(b"<script src='widget.{{version}}.js'></script>")
    assets = widget.load_assets(tmp_path)
    (tmp_path / "widget.js").write_bytes(b"/* v2 */")
    assert assets.widget == b"/* v1 */"
    assert assets.demo == f"<script src='widget.{assets.version}.js'></script>".encode()
    assert re.fullmatch(r"[0-9a-f]{16}", assets.version)
