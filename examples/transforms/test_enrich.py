"""Unit tests of a transform step: call the function with an event and a Context.

Run with `pytest examples/`. `krenalis transform test PIPELINE --event FILE.json` then shows
the same function inside the pipeline's whole chain of steps.
"""

from __future__ import annotations

from enrich import enrich

from krenalis.transforms.context import Context

CONTEXT = Context(source="website", pipeline="website-crm", stored_at=1_764_000_000.0)


def event(**fields: object) -> dict:
    return {"type": "track", "event": "Clicked", "messageId": "m1", "anonymousId": "a1",
            "properties": {}, "traits": {}, "context": {}, **fields}  # fmt: skip


def test_events_say_where_they_came_through():
    out = enrich(event(), CONTEXT)
    assert out is not None and out["properties"]["via"] == "website/website-crm"


def test_staff_events_are_dropped():
    staff = event(context={"traits": {"email": "ada@example.com"}})
    assert enrich(staff, CONTEXT) is None


def test_an_order_becomes_one_event_per_product():
    order = event(event="Order Completed",
                  properties={"products": [{"sku": "A", "price": 3}, {"sku": "B", "price": 5}]})  # fmt: skip
    out = enrich(order, CONTEXT)
    assert isinstance(out, list)
    assert [(e["event"], e["properties"]["sku"]) for e in out] == [
        ("Product Purchased", "A"),
        ("Product Purchased", "B"),
    ]
