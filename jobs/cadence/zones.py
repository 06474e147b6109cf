"""A customer's time zone from the state of their golden record (US states, DC and Puerto Rico; a
state spanning two zones gets the one most of its people live in)."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo

_EAST, _CENTRAL, _MOUNTAIN, _PACIFIC = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
)
STATE_ZONES = {
    **dict.fromkeys(
        (
            "CT",
            "DE",
            "DC",
            "FL",
            "GA",
            "KY",
            "ME",
            "MD",
            "MA",
            "NH",
            "NJ",
            "NY",
            "NC",
            "OH",
            "PA",
            "RI",
            "SC",
            "VT",
            "VA",
            "WV",
        ),
        _EAST,
    ),
    **dict.fromkeys(
        ("AL", "AR", "IL", "IA", "KS", "LA", "MN", "MS", "MO", "NE", "ND", "OK", "SD", "TN", "TX", "WI"),
        _CENTRAL,
    ),
    **dict.fromkeys(("CO", "MT", "NM", "UT", "WY"), _MOUNTAIN),
    **dict.fromkeys(("CA", "NV", "OR", "WA"), _PACIFIC),
    "AK": "America/Anchorage",
    "AZ": "America/Phoenix",
    "HI": "Pacific/Honolulu",
    "ID": "America/Boise",
    "IN": "America/Indiana/Indianapolis",
    "MI": "America/Detroit",
    "PR": "America/Puerto_Rico",
}


def zone_name(state: str | None, default: str) -> str:
    """The IANA zone of a state code (any case, surrounding spaces ignored), else `default`."""
    if not isinstance(state, str):
        return default
    return STATE_ZONES.get(state.strip().upper(), default)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
