"""``geoip``: context.location from context.ip, read in a local MaxMind-format database.

The database is a ``.mmdb`` file (GeoLite2-City, GeoIP2-City, or any file with the same
record layout), read with MaxMind's ``maxminddb`` reader (its C extension when installed).
Only keys the event's location lacks are filled: an app that sent the device's own location
keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krenalis.transforms.builtin import StepFailed
from krenalis.transforms.context import Context
from krenalis.transforms.spec import GeoipStep

__all__ = ["build_geoip", "location_of", "open_database"]


def open_database(path: Path) -> Any:
    """The reader of the database at ``path``; StepFailed saying why it cannot be read."""
    import maxminddb  # imported here: only processes that run a geoip step pay for it

    try:
        return maxminddb.open_database(str(path))
    except FileNotFoundError:
        raise StepFailed(f"the GeoIP database {path} does not exist") from None
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise StepFailed(f"the GeoIP database {path} cannot be read: {exc}") from None


def build_geoip(spec: GeoipStep, base: Path) -> Any:
    reader = open_database(base / spec.geoip.database)

    def geoip(event: dict[str, Any], context: Context) -> dict[str, Any]:
        section = event.get("context")
        ip = section.get("ip") if isinstance(section, dict) else None
        if not isinstance(ip, str):
            return event
        found = location_of(reader, ip)
        if found:
            location = section.get("location")  # type: ignore[union-attr]
            if not isinstance(location, dict):
                location = section["location"] = {}  # type: ignore[index]
            for key, value in found.items():
                location.setdefault(key, value)
        return event

    return geoip


def location_of(reader: Any, ip: str) -> dict[str, Any]:
    """country, city, latitude and longitude of ``ip`` (those the database knows)."""
    try:
        record = reader.get(ip)
    except ValueError:  # not an IP address
        return {}
    if not isinstance(record, dict):
        return {}
    found: dict[str, Any] = {}
    country = _name(record.get("country"))
    if country:
        found["country"] = country
    city = _name(record.get("city"))
    if city:
        found["city"] = city
    position = record.get("location")
    if isinstance(position, dict):
        for key in ("latitude", "longitude"):
            if isinstance(position.get(key), int | float):
                found[key] = position[key]
    return found


def _name(section: Any) -> str | None:
    """The English name of a country or city record, else its ISO code."""
    if not isinstance(section, dict):
        return None
    names = section.get("names")
    if isinstance(names, dict) and isinstance(names.get("en"), str):
        return names["en"]
    code = section.get("iso_code")
    return code if isinstance(code, str) else None
