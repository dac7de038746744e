"""The service's polyline codec: Google's reference values, round trips, and refusal of bad input."""

from __future__ import annotations

import random

import pytest

from service.projects.strava_integration import shape
from service.projects.strava_integration.polyline import MAX_POLYLINE, decode_polyline, encode_polyline

# From Google's algorithm page: https://developers.google.com/maps/documentation/utilities/polylinealgorithm
GOOGLE_POINTS = [(38.5, -120.2), (40.7, -120.95), (43.252, -126.453)]
GOOGLE_ENCODED = "_p~iF~ps|U_ulLnnqC_mqNvxq`@"


def test_matches_googles_reference() -> None:
    assert decode_polyline(GOOGLE_ENCODED) == GOOGLE_POINTS
    assert encode_polyline(GOOGLE_POINTS) == GOOGLE_ENCODED
    assert encode_polyline([(-179.98321, 0.0)]) == "`~oia@?"  # Google's single-value example


def test_empty() -> None:
    assert decode_polyline("") == []
    assert encode_polyline([]) == ""


def test_round_trip_on_random_routes() -> None:
    rng = random.Random(11)
    for _ in range(200):
        lat, lng = rng.uniform(-89, 89), rng.uniform(-179, 179)
        points = []
        for _ in range(rng.randint(1, 60)):
            lat = max(-90.0, min(90.0, lat + rng.uniform(-0.01, 0.01)))
            lng = max(-180.0, min(180.0, lng + rng.uniform(-0.01, 0.01)))
            points.append((round(lat, 5), round(lng, 5)))
        encoded = encode_polyline(points)
        assert decode_polyline(encoded) == points
        assert encode_polyline(decode_polyline(encoded)) == encoded


def test_encode_rounds_to_the_grid() -> None:
    assert decode_polyline(encode_polyline([(51.123456, -0.123454)])) == [(51.12346, -0.12345)]


def test_extremes_round_trip() -> None:
    points = [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (-0.00001, 0.00001)]
    assert decode_polyline(encode_polyline(points)) == points


@pytest.mark.parametrize(
    "bad",
    [
        "_p~iF~ps|U_",  # truncated mid-value
        "_p~iF",  # a latitude without its longitude
        "_p~iF~ps|U_ulLnnqC_mqNvxq`",  # last chunk says "more follow"
        "_p~iF ~ps|U",  # below the alphabet
        "_p~iF\x7f~ps|U",  # above it
        "é?",
        "~~~~~~~~~~??",  # a value longer than 30 bits
    ],
)
def test_malformed_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_polyline(bad)


def test_over_long_input_is_refused_before_decoding() -> None:
    assert len(decode_polyline("??" * (MAX_POLYLINE // 2))) == MAX_POLYLINE // 2
    with pytest.raises(ValueError, match="too long"):
        decode_polyline("??" * (MAX_POLYLINE // 2) + "??")


def test_shape_keeps_using_the_same_codec() -> None:
    assert shape.decode_polyline is decode_polyline
    assert shape.polyline_bounds(GOOGLE_ENCODED) == {"south": 38.5, "west": -126.453, "north": 43.252, "east": -120.2}
    assert shape.polyline_bounds("_p~iF~ps|U_") is None
