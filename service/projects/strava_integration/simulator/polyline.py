"""Google encoded polyline format (precision 5), written out so the simulator needs no extra library.

Format reference: https://developers.google.com/maps/documentation/utilities/polylinealgorithm
"""

from collections.abc import Iterable

_PRECISION = 1e5


def _encode_value(value: int) -> str:
    # Zig-zag the sign into the lowest bit, then emit 5-bit chunks, low chunk first,
    # with 0x20 marking "more chunks follow"; 63 shifts every chunk into printable ASCII.
    value = ~(value << 1) if value < 0 else value << 1
    chunks = []
    while value >= 0x20:
        chunks.append(chr((0x20 | (value & 0x1F)) + 63))
        value >>= 5
    chunks.append(chr(value + 63))
    return "".join(chunks)


def encode_polyline(points: Iterable[tuple[float, float]]) -> str:
    """Encode (lat, lng) pairs; each point is stored as the delta to the previous one."""
    out = []
    prev_lat = prev_lng = 0
    for lat, lng in points:
        ilat, ilng = round(lat * _PRECISION), round(lng * _PRECISION)
        out.append(_encode_value(ilat - prev_lat))
        out.append(_encode_value(ilng - prev_lng))
        prev_lat, prev_lng = ilat, ilng
    return "".join(out)


def decode_polyline(encoded: str) -> list[tuple[float, float]]:
    """Inverse of `encode_polyline`; raises ValueError on a truncated or non-polyline string."""
    values: list[int] = []
    shift = result = 0
    for char in encoded:
        chunk = ord(char) - 63
        if not 0 <= chunk < 64:
            raise ValueError(f"invalid polyline character {char!r}")
        result |= (chunk & 0x1F) << shift
        shift += 5
        if chunk < 0x20:
            values.append(~(result >> 1) if result & 1 else result >> 1)
            shift = result = 0
    if shift or len(values) % 2:
        raise ValueError("truncated polyline")
    points = []
    lat = lng = 0
    for i in range(0, len(values), 2):
        lat += values[i]
        lng += values[i + 1]
        points.append((lat / _PRECISION, lng / _PRECISION))
    return points
