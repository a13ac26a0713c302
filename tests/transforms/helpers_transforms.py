"""Helpers of the transform tests: events in the stream's form, workspaces with steps, and a
small MaxMind-format database made with mmdb-writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Pipeline

__all__ = ["LONDON", "SECRET", "make_geoip_db", "pipeline_with", "wire", "workspace_with"]

WRITE_KEY = "TransformsKey0123456789abcdefghi"
#: A HMAC secret long enough for the hash step.
SECRET = "s3cret-for-hashing-0123456789"
#: What the test database says of 81.2.69.0/24 (and of 2a02:8010::/32).
LONDON = {"country": "United Kingdom", "city": "London", "latitude": 51.5142, "longitude": -0.0931}


def wire(message_id: str, user: str = "anon-1", **fields: Any) -> dict[str, Any]:
    """An event in the stream's wire form, as the collector publishes it."""
    now = "2026-11-26T05:29:02.123Z"
    event: dict[str, Any] = {
        "connectionId": "web",
        "anonymousId": user,
        "messageId": message_id,
        "type": "track",
        "event": "Clicked",
        "properties": {},
        "traits": {},
        "context": {},
        "receivedAt": now,
        "sentAt": now,
        "originalTimestamp": now,
        "timestamp": now,
    }
    event.update(fields)
    return event


def workspace_with(steps: str, *, to: str = "warehouse", destinations: str = "") -> str:
    """A workspace with one source "web" and one pipeline "p" to ``to``, whose transform list
    is ``steps`` (YAML list items, indented by 6)."""
    return (
        f'sources:\n  web:\n    write_key: "{WRITE_KEY}"\n'
        + (f"destinations:\n{destinations}" if destinations else "")
        + f"pipelines:\n  p:\n    source: web\n    to: {to}\n    transform:\n{steps}"
    )


def pipeline_with(steps: str, environ: dict[str, str] | None = None) -> Pipeline:
    env = {"HASH_SECRET": SECRET, **(environ or {})}
    return parse_workspace(workspace_with(steps), "krenalis.yaml", environ=env).pipelines["p"]


def make_geoip_db(path: Path) -> Path:
    """A city database that knows London's addresses (IPv4 and IPv6), as GeoLite2 lays out."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    record = {
        "country": {"iso_code": "GB", "names": {"en": LONDON["country"]}},
        "city": {"names": {"en": LONDON["city"]}},
        "location": {"latitude": LONDON["latitude"], "longitude": LONDON["longitude"]},
    }
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(IPSet(["81.2.69.0/24", "2a02:8010::/32"]), record)
    writer.to_db_file(str(path))
    return path
