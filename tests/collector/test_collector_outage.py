"""NATS down: ingestion answers 503 within about a second (never hangs), and recovers by itself."""

from __future__ import annotations

import asyncio
import time

from helpers_collector import CRM_PIPELINE, WAREHOUSE_PIPELINE, CollectorHarness, bearer, event

from krenalis.stream.publisher import Publisher


async def test_503_while_nats_is_down_then_recovery(collector: CollectorHarness) -> None:
    async with collector.client() as client:
        before = event("track")
        response = await client.post("/v1/track", json=before, headers=bearer())
        assert response.status_code == 200, response.text

        collector.nats.kill()  # SIGKILL: no goodbye to the client
        await collector.wait_usable(False, timeout=10)

        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "stream": False, "revision": 0}

        refused = event("track")
        for path, body in (
            ("/v1/track", refused),
            ("/v1/batch", {"batch": [refused]}),
            ("/v1/events", [refused]),
        ):
            started = time.monotonic()
            response = await client.post(path, json=body, headers=bearer())
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "ServiceUnavailable"
            assert "NATS" in error["message"] or "stream" in error["message"]
            assert response.headers["retry-after"].isdigit()
            assert elapsed < 1.5, f"503 took {elapsed:.2f}s"

        # Bad requests are still told what is wrong: no need for the stream to say so.
        response = await client.post("/v1/events", content=b"{", headers=bearer())
        assert response.status_code == 400

        collector.nats.start()  # same port, same store
        await collector.wait_usable(True, timeout=20)
        health = await client.get("/health")
        assert health.status_code == 200

        after = event("track")
        response = await client.post("/v1/track", json=after, headers=bearer())
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 2
        # The client retries the refused event: it is stored now, once.
        for _ in range(2):
            response = await client.post("/v1/batch", json={"batch": [refused]}, headers=bearer())
            assert response.status_code == 200, response.text

    # What was acknowledged before the crash survived it (file storage, fsync always).
    sent = {before["messageId"], after["messageId"], refused["messageId"]}
    warehouse = await collector.take(WAREHOUSE_PIPELINE, expected=3)
    assert sorted(s.event["messageId"] for s in warehouse) == sorted(sent)
    crm = await collector.take(CRM_PIPELINE, expected=3)
    assert sorted(s.event["messageId"] for s in crm) == sorted(sent)


async def test_requests_in_flight_when_nats_dies(collector: CollectorHarness) -> None:
    """Requests racing the crash get 200 (and are stored) or 503, within the publish deadline.

    The publisher's deadline is shortened here (production: 10 s) to keep the test quick.
    """
    deadline = 2.0
    collector.collector.publisher = Publisher(collector.conn.nc, timeout=1.0, deadline=deadline)
    results: list[tuple[int, float, list[str]]] = []
    async with collector.client() as client:

        async def producer() -> None:
            for _ in range(15):
                batch = [event("track") for _ in range(50)]
                started = time.monotonic()
                response = await client.post("/v1/batch", json={"batch": batch}, headers=bearer())
                elapsed = time.monotonic() - started
                results.append((response.status_code, elapsed, [e["messageId"] for e in batch]))

        tasks = [asyncio.create_task(producer()) for _ in range(4)]
        while sum(1 for status, _, _ in results if status == 200) < 4:
            await asyncio.sleep(0.001)
        collector.nats.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        assert {status for status, _, _ in results} <= {200, 503}, results
        assert max(elapsed for _, elapsed, _ in results) < deadline + 2.0
        assert results[-1][0] == 503

        collector.nats.start()
        await collector.wait_usable(True, timeout=20)
        last = event("track")
        response = await client.post("/v1/track", json=last, headers=bearer())
        assert response.status_code == 200, response.text
    # Every 200 survived the crash (a 503 may or may not have been stored: at least once).
    acknowledged = {last["messageId"]}
    for status, _, ids in results:
        if status == 200:
            acknowledged.update(ids)
    stored = await collector.take(WAREHOUSE_PIPELINE)  # all there is: 200 means stored
    assert acknowledged <= {s.event["messageId"] for s in stored}
