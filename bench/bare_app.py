"""The baseline: a bare Starlette app, no middleware, serving one recorded response.

`bench/run.py` fetches the benchmarked route from the running service once, writes what it got
to a JSON file (path, status, the route's own and the security headers, the body in base64) and
starts this app on it, so both servers send the same bytes but the request id header.
The uvicorn settings are the service's own (`service.launcher.uvicorn_config`): only the app
differs, so the gap is the service's stack.

    python -m bench.bare_app --response recorded.json --port 8081 --loop asyncio
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.security import SECURITY_HEADERS

# Headers the route itself sets. The server's own (date, server, content-length) it sets itself.
ROUTE_HEADERS = ("content-type", "cache-control", "etag", "last-modified", "vary")
# What the service sends on every response for security (`service/security.py`). They are not
# observability, so `bench/run.py` (by default, `--bare-headers same`) has the baseline send them
# too: the same bytes, and the gap is what observability adds (the request id header, metrics,
# the access line). `--bare-headers route` leaves them out: the stricter comparison.
SECURITY_HEADER_NAMES = tuple(name.decode() for name, _ in SECURITY_HEADERS)


def recorded(
    path: str, status: int, headers: Mapping[str, str], body: bytes, *, security_headers: bool = True
) -> dict[str, Any]:
    """The JSON-able record of one response: the route's own headers and the security ones."""
    keep = ROUTE_HEADERS + (SECURITY_HEADER_NAMES if security_headers else ())
    kept = {k.lower(): v for k, v in headers.items() if k.lower() in keep}
    return {"path": path, "status": status, "headers": kept, "body_b64": base64.b64encode(body).decode()}


def create_app(record: Mapping[str, Any]) -> Starlette:
    body = base64.b64decode(record["body_b64"])
    status = int(record["status"])
    headers = dict(record["headers"])

    async def endpoint(request: Request) -> Response:
        # A fresh Response per request, as the service's routes build theirs.
        return Response(body, status_code=status, headers=headers)

    # Starlette routes on the path alone; the query string is accepted and ignored.
    path = str(record["path"]).split("?", 1)[0]
    return Starlette(routes=[Route(path, endpoint)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__.splitlines()[0])
    parser.add_argument("--response", type=Path, required=True, help="JSON file written by bench/run.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)

    from service.launcher import uvicorn_config
    from service.settings import Settings

    app = create_app(orjson.loads(args.response.read_bytes()))
    config = uvicorn_config(Settings(host=args.host, port=args.port), app, args.loop)
    config.access_log = False
    config.lifespan = "off"
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
