"""Google's encoded polyline format (precision 5): decode what Strava sends, encode what we serve.

Format reference: https://developers.google.com/maps/documentation/utilities/polylinealgorithm
Each point is stored as the delta to the previous one, in 1e-5 degrees, zig-zag signed and
written in 5-bit chunks (low chunk first, 0x20 = "more follow", +63 into printable ASCII).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_POLYLINE = 100_000  # characters; longer strings are not decoded (and not served)
PRECISION = 1e5  # encoded units per degree: coordinates are rounded to 1e-5 degrees


def decode_polyline(encoded: str) -> list[tuple[float, float]]:
    """(lat, lng) pairs. Raises ValueError on a malformed, truncated or over-long string."""
    length = len(encoded)
    if length > MAX_POLYLINE:
        raise ValueError("polyline too long")
    points: list[tuple[float, float]] = []
    index = lat = lng = 0
    while index < length:
        deltas = []
        for _ in range(2):
            shift = result = 0
            while True:
                if index >= length:
                    raise ValueError("truncated polyline")
                byte = ord(encoded[index]) - 63
                index += 1
                if not 0 <= byte < 64:
                    raise ValueError("invalid polyline character")
                result |= (byte & 0x1F) << shift
                shift += 5
                if byte < 0x20:
                    break
                if shift > 30:
                    raise ValueError("polyline value too long")
            deltas.append(~(result >> 1) if result & 1 else result >> 1)
        lat += deltas[0]
        lng += deltas[1]
        points.append((lat / PRECISION, lng / PRECISION))
    return points


def _encode_value(value: int, out: list[str]) -> None:
    value = ~(value << 1) if value < 0 else value << 1
    while value >= 0x20:
        out.append(chr((0x20 | (value & 0x1F)) + 63))
        value >>= 5
    out.append(chr(value + 63))


def encode_polyline(points: Iterable[tuple[float, float]]) -> str:
    """Encode (lat, lng) pairs, each rounded to the nearest 1e-5 degree."""
    out: list[str] = []
    prev_lat = prev_lng = 0
    for lat, lng in points:
        ilat, ilng = round(lat * PRECISION), round(lng * PRECISION)
        _encode_value(ilat - prev_lat, out)
        _encode_value(ilng - prev_lng, out)
        prev_lat, prev_lng = ilat, ilng
    return "".join(out)
