"""/metrics counts match what was sent, filtered, stored and delivered (with 2 collector processes)."""

from __future__ import annotations

import httpx
from e2e_support import WRITE_KEY, file_events, make_event, post_events, wait_for

from krenalis.runtime.processes import free_port

WORKSPACE = f"""
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  archive: {{type: file, path: ./archive}}
pipelines:
  web-archive:
    source: web
    to: archive
    filter:
      all:
        - {{field: properties.keep, op: is_true}}
"""


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]
    return sum(values)


async def test_metrics_match_what_was_sent_and_delivered(deployment):
    deployment.write_workspace(WORKSPACE)
    metrics_url = f"http://127.0.0.1:{free_port()}/metrics"  # its own address, not the ingest port
    serve = deployment.start(
        "serve",
        KRENALIS_PROMETHEUS_METRICS_ENABLED="true",
        KRENALIS_HTTP_WORKERS="2",
        KRENALIS_METRICS_ADDR=metrics_url.removeprefix("http://").removesuffix("/metrics"),
    )
    await serve.wait_healthy()
    await serve.wait_log("Collector listening.", count=2)  # the second process shares the port
    kept = [make_event(f"k{i}", properties={"keep": True}) for i in range(120)]
    dropped = [make_event(f"d{i}", properties={"keep": False}) for i in range(80)]
    invalid = [{"type": "track", "userId": "u"}]  # no "event": rejected
    await post_events(serve.base_url, kept + dropped, per_request=20)
    async with httpx.AsyncClient() as client:
        bad = await client.post(
            f"{serve.base_url}/v1/batch", json={"batch": invalid}, auth=(WRITE_KEY, "")
        )
    assert bad.json()["rejected"][0]["index"] == 0
    archive = deployment.root / "archive"
    await wait_for(lambda: len(file_events(archive)) == 120, what="the archive", processes=[serve])

    async def scrape() -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(metrics_url)).text

    async def delivered_all() -> str | None:
        text = await scrape()
        return (
            text
            if sample(text, "krenalis_events_delivered_total", pipeline="web-archive") == 120
            else None
        )

    text = await wait_for(delivered_all, what="delivered metric", processes=[serve])
    assert sample(text, "krenalis_events_received_total", source="web") == 200
    assert sample(text, "krenalis_events_rejected_total", source="web") == 1
    assert sample(text, "krenalis_events_published_total", pipeline="web-archive") == 120
    assert sample(text, "krenalis_events_filtered_out_total", pipeline="web-archive") == 80
    assert sample(text, "krenalis_http_requests_total", status="200") == 11
    assert WRITE_KEY not in text
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{serve.base_url}/metrics")).status_code == 404
