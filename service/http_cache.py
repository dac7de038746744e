"""HTTP caching for bodies serialized once: strong ETags, If-None-Match, Cache-Control, content codings.

A `PreparedBody` holds one body as ready-to-send ASGI responses: the plain one and, made once on
the first request that wants them and kept, its gzip and brotli variants. Each variant has its
own strong ETag (`"<hash>"`, `"<hash>-gz"`, `"<hash>-br"`) and its own 304, so a request costs a
header scan and two dict look-ups: nothing is compressed, parsed or built per request.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Callable, Iterable

import brotli  # type: ignore[import-untyped]  # Google's binding ships no type information
from starlette.types import Receive, Scope, Send

from service.errors import ApiError

_MAX_IF_NONE_MATCH = 2048  # characters considered; a longer header matches nothing more
_MAX_ACCEPT_ENCODING = 512  # characters considered; browsers send about 30
_NEGOTIATED_MAX = 64  # distinct Accept-Encoding values remembered; visitors send a handful
GZIP_LEVEL = 6
# Quality 5 compresses a feed about as fast as gzip level 6 and smaller; 11 takes 100 times longer,
# and this runs on the event loop (once per body and coding, but a body per distinct query).
BROTLI_QUALITY = 5
IDENTITY = "identity"
VARY = (b"vary", b"accept-encoding")


def etag_for(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def cache_control(max_age: int, stale_while_revalidate: int) -> str:
    return f"public, max-age={max_age}, stale-while-revalidate={stale_while_revalidate}"


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison, as If-None-Match requires."""
    if not if_none_match:
        return False
    header = if_none_match[:_MAX_IF_NONE_MATCH]
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False


def _gzip(body: bytes) -> bytes:
    # mtime=0: the same body gives the same bytes (and so the same ETag) in every instance.
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)


def _brotli(body: bytes) -> bytes:
    return bytes(brotli.compress(body, quality=BROTLI_QUALITY))


# Content codings we can produce, in the order we prefer them when the client likes them equally.
CODERS: dict[str, tuple[Callable[[bytes], bytes], str]] = {"br": (_brotli, "-br"), "gzip": (_gzip, "-gz")}
PREFERENCE = (*CODERS, IDENTITY)
_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 §8.4.1.3: x-gzip is gzip
_QVALUE = re.compile(r"q=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.IGNORECASE)


def negotiate(accept_encoding: str) -> tuple[str, ...]:
    """The codings the client accepts, best first (`identity` among them if acceptable); () for none.

    RFC 9110 §12.5.3: a listed coding has its q (0 = not acceptable); `*` gives its q to every coding
    not listed; `identity` is acceptable unless listed with q=0 or refused by `*;q=0`. An unlisted
    identity comes last (the client named what it would rather have). An empty value means identity
    only. Items that do not parse (a bad q) are ignored rather than failing the request.
    """
    text = accept_encoding[:_MAX_ACCEPT_ENCODING]
    if len(accept_encoding) > _MAX_ACCEPT_ENCODING:
        text = text.rpartition(",")[0]  # drop the item the cut went through
    weights: dict[str, float] = {}
    for item in text.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        params = params.strip()
        if params:
            found = _QVALUE.fullmatch("".join(params.split()))
            if found is None:
                continue
            q = float(found.group(1))
        coding = _ALIASES.get(coding, coding)
        weights.setdefault(coding, q)  # the first mention counts
    star = weights.get("*")
    ranked: list[tuple[float, int, str]] = []
    for rank, coding in enumerate(PREFERENCE):
        named = weights.get(coding, star)
        if named is not None:
            q = named
        elif coding == IDENTITY:
            q = 0.0005  # acceptable, behind anything the client named (a named q is at least 0.001)
        else:
            continue
        if q > 0:
            ranked.append((-q, rank, coding))
    return tuple(coding for _, _, coding in sorted(ranked))


_NEGOTIATED: dict[bytes, tuple[str, ...]] = {}


def negotiated(raw: bytes) -> tuple[str, ...]:
    """`negotiate`, memoized by the raw header bytes (one tuple object per distinct value)."""
    order = _NEGOTIATED.get(raw)
    if order is None:
        order = negotiate(raw.decode("latin-1"))
        if len(raw) > _MAX_ACCEPT_ENCODING:
            return order  # kept keys stay small: a 60 kB header is parsed (its first 512 bytes) each time
        if len(_NEGOTIATED) >= _NEGOTIATED_MAX:
            _NEGOTIATED.clear()
        _NEGOTIATED[raw] = order
    return order


NO_PREFERENCE = (IDENTITY,)  # no Accept-Encoding: RFC 9110 lets us pick, and identity always works


class _Fixed:
    """An ASGI response whose status, headers and body never change: built once, sent many times."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The header list is shared between requests: whoever adds headers must copy it (ours do).
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


class Variant:
    """One encoding of the body: its ETag, its 200 and its 304."""

    __slots__ = ("etag", "not_modified", "ok", "size")

    def __init__(
        self, coding: str, body: bytes, etag: str, control: str, content_type: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        common = [(b"etag", etag.encode()), (b"cache-control", control.encode()), VARY, *extra]
        head = [(b"content-length", str(len(body)).encode()), (b"content-type", content_type.encode())]
        if coding != IDENTITY:
            head.append((b"content-encoding", coding.encode()))
        self.etag = etag
        self.size = len(body)
        self.ok = _Fixed(200, [*head, *common], body)
        self.not_modified = _Fixed(304, common, b"")


class PreparedBody:
    """A cached body as its 200 and its 304 in each content coding, prepared once per body.

    `content_type` lets the same machinery serve other bodies (JavaScript, SVG); `headers` are sent
    with every variant, 200 and 304 alike. A compressed variant is made on the first request that
    can use it, then kept; it is used only when it is smaller than the plain body, unless the client
    refused identity (then any coding it accepts beats a 406).
    """

    __slots__ = (
        "_by_header",
        "_extra",
        "_variants",
        "body",
        "content_type",
        "control",
        "etag",
        "identity",
    )

    def __init__(
        self,
        body: bytes,
        etag: str,
        control: str,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.body = body
        self.etag = etag
        self.control = control
        self.content_type = content_type
        self._extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        self.identity = Variant(IDENTITY, body, etag, control, content_type, self._extra)
        self._variants = {IDENTITY: self.identity}
        # The raw Accept-Encoding (None: no header) -> the variant to send; bounded like `_NEGOTIATED`.
        self._by_header: dict[bytes | None, Variant] = {}

    def variant(self, coding: str) -> Variant:
        """This body in `coding` (compressed now if this is the first time, then kept)."""
        found = self._variants.get(coding)
        if found is None:
            compress, suffix = CODERS[coding]
            etag = self.etag[:-1] + suffix + '"'
            found = Variant(coding, compress(self.body), etag, self.control, self.content_type, self._extra)
            self._variants[coding] = found
        return found

    def choose(self, order: tuple[str, ...]) -> Variant | None:
        """The variant for a negotiated preference order; None when nothing acceptable exists."""
        identity_ok = IDENTITY in order
        for coding in order:
            candidate = self.variant(coding)
            if coding == IDENTITY or candidate.size < self.identity.size or not identity_ok:
                return candidate
        return None

    def _negotiate(self, accept_encoding: bytes | None) -> Variant:
        chosen = self.choose(NO_PREFERENCE if accept_encoding is None else negotiated(accept_encoding))
        if chosen is None:
            raise ApiError(
                406,
                "not_acceptable",
                f"No acceptable content coding; this resource is available as {', '.join(PREFERENCE)}.",
                headers={"Vary": "Accept-Encoding"},
            )
        if accept_encoding is None or len(accept_encoding) <= _MAX_ACCEPT_ENCODING:
            if len(self._by_header) >= _NEGOTIATED_MAX:
                self._by_header.clear()
            self._by_header[accept_encoding] = chosen
        return chosen

    def for_request(self, scope: Scope) -> _Fixed:
        if_none_match: bytes | None = None
        accept_encoding: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                # Several lines are one comma-joined list (RFC 9110 §5.3).
                accept_encoding = value if accept_encoding is None else accept_encoding + b"," + value
            elif name == b"if-none-match":
                if if_none_match is None:
                    if_none_match = value
                elif len(if_none_match) < _MAX_IF_NONE_MATCH:
                    # Several lines are one list here too; joined only up to what `matches` looks at,
                    # so a flood of lines cannot grow it.
                    if_none_match += b"," + value[:_MAX_IF_NONE_MATCH]
        # One dict hit per request: the raw header (bytes hash once) -> the variant to send.
        chosen = self._by_header.get(accept_encoding)
        if chosen is None:
            chosen = self._negotiate(accept_encoding)
        if if_none_match is not None and matches(if_none_match.decode("latin-1"), chosen.etag):
            return chosen.not_modified
        return chosen.ok
