"""An example transform step: plain Python, tested with pytest (see test_enrich.py).

Use it in a pipeline of krenalis.yaml (paths are relative to the workspace file):

    transform:
      - python: examples/transforms/enrich.py:enrich
"""

from __future__ import annotations

from krenalis.transforms.context import Context

INTERNAL_DOMAINS = ("@example.com",)


def enrich(event: dict, context: Context) -> dict | list[dict] | None:
    """Drop our own staff's test events, split an order into one event per product, and say
    where every other event came through."""
    email = (event.get("context") or {}).get("traits", {}).get("email", "")
    if email.endswith(INTERNAL_DOMAINS):
        return None  # counted as filtered, never delivered
    if event.get("event") == "Order Completed":
        products = event.get("properties", {}).get("products", [])
        # Each item gets the messageId "<messageId>#<position>": a replay makes the same ids.
        return [
            {**event, "event": "Product Purchased", "properties": dict(product)}
            for product in products
        ]
    event.setdefault("properties", {})["via"] = f"{context.source}/{context.pipeline}"
    return event
