"""End to end: a pipeline's `transform:` steps, in real `krenalis serve` processes, with a real
nats-server, PostgreSQL and webhook receiver; exact counts in the warehouse, the webhook and
EVENTS_DLQ.

The steps run in the worker's transform process: built-in steps; a Python function that
changes, drops and fans out events; one that raises; one that never returns; and a function
changed while serve runs (its file, then the workspace), with a broken version in between that
is refused while the running one keeps going.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import textwrap
from collections import Counter

from e2e_support import (
    WRITE_KEY,
    Deployment,
    jetstream,
    make_event,
    post_events,
    subject_counts,
    wait_for,
    warehouse_rows,
    warehouse_stats,
)

from krenalis.stream.deadletters import list_dead_letters
from sinks.webhook_receiver import WebhookReceiver
from transforms.helpers_transforms import LONDON, make_geoip_db

SECRET = "e2e-hash-secret-0123456789abcdef"
GOOGLEBOT = (
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html) Chrome/120.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"

BUILT_INS = """\
      - drop_bots
      - geoip: {database: city.mmdb}
      - mask_ip
      - hash: [userId]
        secret: ${HASH_SECRET}
      - rename: {properties.price: properties.amount}
      - set: {properties.channel: web}
      - keep: [properties.amount, properties.channel]
      - drop: [context.userAgent]
"""

SHAPE = """
def shape(event, context):
    name = event.get("event")
    if name == "Test":
        return None
    if name == "Boom":
        return {}["missing"]
    if name == "Hang":
        while True:
            pass
    if name == "Order Completed":
        return [dict(event, event="Item Bought", properties={"sku": sku})
                for sku in event["properties"]["items"]]
    event["properties"]["shaped_by"] = context.pipeline
    return event
"""


def workspace(dsn: str, hook: str, steps: str) -> str:
    return f"""\
warehouse:
  dsn: "{dsn}"
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  hook:
    type: webhook
    url: "{hook}"
pipelines:
  to-warehouse:
    source: web
    to: warehouse
    batch: {{max_wait: 100ms}}
    transform:
{steps}  to-hook:
    source: web
    to: hook
    batch: {{max_wait: 100ms}}
    transform:
{steps}"""


def start(deployment: Deployment):
    return deployment.start("serve", HASH_SECRET=SECRET)


def hashed(value: str) -> str:
    return hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()


async def drained(js, rx: WebhookReceiver, dsn: str, rows: int, posts: int, letters: int):
    seen: list[object] = []

    async def done() -> bool:
        dead = await list_dead_letters(js)
        stored, _ = await warehouse_stats(dsn)
        state = (stored, len(rx.bodies), len(dead), await subject_counts(js))
        seen[:] = [state]
        return state[:3] == (rows, posts, letters) and not any(state[3].values())

    what = f"{rows} rows, {posts} posts, {letters} dead letters, EVENTS empty"
    try:
        await wait_for(done, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen (rows, posts, letters, subjects): {seen}") from None
    await asyncio.sleep(1.0)  # anything delivered twice would show up meanwhile
    assert (await warehouse_stats(dsn))[0] == rows and len(rx.bodies) == posts
    return await list_dead_letters(js)


async def test_built_in_steps(deployment, warehouse_dsn):
    make_geoip_db(deployment.root / "city.mmdb")
    humans = [
        make_event(f"h{i}", user=f"anon-{i % 4}", userId=f"user-{i}",
                   properties={"price": i, "card": "4111"},
                   context={"ip": f"81.2.69.{i + 10}", "userAgent": FIREFOX})
        for i in range(30)
    ]  # fmt: skip
    bots = [
        make_event(f"b{i}", context={"ip": "8.8.8.8", "userAgent": GOOGLEBOT}) for i in range(10)
    ]
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(warehouse_dsn, rx.url, BUILT_INS))
        serve = start(deployment)
        await serve.wait_healthy()
        assert await post_events(serve.base_url, humans + bots) == 2 * 40
        assert await drained(js, rx, warehouse_dsn, rows=30, posts=30, letters=0) == []

        rows = await warehouse_rows(
            warehouse_dsn,
            "SELECT message_id, user_id, host(context_ip), context_location_country,"
            " context_location_city, context_location_latitude, context_location_longitude,"
            " properties, context_user_agent FROM krenalis_events ORDER BY message_id",
        )
        assert sorted(r[0] for r in rows) == sorted(f"h{i}" for i in range(30))  # no bot
        for message_id, user_id, ip, country, city, latitude, longitude, props, agent in rows:
            i = int(message_id[1:])
            assert user_id == hashed(f"user-{i}") and ip == "81.2.69.0"
            assert (country, city, latitude, longitude) == tuple(LONDON.values())
            assert props == {"amount": i, "channel": "web"} and agent is None
        posted = {body["messageId"]: body for body in rx.bodies}
        assert sorted(posted) == sorted(f"h{i}" for i in range(30))
        assert posted["h3"]["context"]["location"] == LONDON
        assert posted["h3"]["userId"] == hashed("user-3")
        assert serve.stop() == 0


async def test_a_python_function_that_changes_drops_fans_out_raises_and_hangs(
    deployment, warehouse_dsn
):
    (deployment.root / "fns.py").write_text(SHAPE)
    steps = "      - python: fns.py:shape\n        timeout: 100ms\n      - mask_ip\n"
    events = (
        [make_event(f"n{i}", user=f"anon-{i % 3}", event="Clicked") for i in range(10)]
        + [make_event(f"t{i}", event="Test") for i in range(5)]
        + [make_event(f"o{i}", event="Order Completed", properties={"items": ["A", "B", "C"]})
           for i in range(5)]
        + [make_event(f"x{i}", event="Boom") for i in range(3)]
        + [make_event(f"z{i}", event="Hang") for i in range(2)]
    )  # fmt: skip
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(warehouse_dsn, rx.url, steps))
        serve = start(deployment)
        await serve.wait_healthy()
        assert await post_events(serve.base_url, events) == 2 * 25
        # Kept 10 changed + 5 orders x 3 items; 5 tests dropped; 3 raised + 2 hung: dead.
        letters = await drained(js, rx, warehouse_dsn, rows=25, posts=25, letters=10)

        ids = sorted(r[0] for r in await warehouse_rows(
            warehouse_dsn, "SELECT message_id FROM krenalis_events"))  # fmt: skip
        expected = [f"n{i}" for i in range(10)] + [f"o{i}#{k}" for i in range(5) for k in range(3)]
        assert ids == sorted(expected)
        assert sorted(body["messageId"] for body in rx.bodies) == sorted(expected)
        [(props,)] = await warehouse_rows(
            warehouse_dsn, "SELECT properties FROM krenalis_events WHERE message_id = 'n1'"
        )
        assert props == {"n": "n1", "shaped_by": "to-warehouse"}
        [(event, props)] = await warehouse_rows(
            warehouse_dsn, "SELECT event, properties FROM krenalis_events WHERE message_id = 'o2#1'"
        )
        assert (event, props) == ("Item Bought", {"sku": "B"})

        reasons = Counter((x.pipeline, x.message_id[0], _kind(x.reason)) for x in letters)
        assert reasons == {
            ("to-warehouse", "x", "raised"): 3, ("to-hook", "x", "raised"): 3,
            ("to-warehouse", "z", "timeout"): 2, ("to-hook", "z", "timeout"): 2,
        }  # fmt: skip
        boom = next(x.reason for x in letters if x.message_id == "x0")
        assert boom.startswith("step 1:python fns.py:shape failed: KeyError: 'missing' at fns.py:")
        assert json.loads(next(x.data for x in letters if x.message_id == "z0"))["event"] == "Hang"

        status = json.loads((await asyncio.to_thread(deployment.cli, "status", "--json")).stdout)
        step = next(s for s in status["steps"] if s["pipeline"] == "to-warehouse"
                    and s["step"] == "1:python fns.py:shape")  # fmt: skip
        assert (step["in"], step["out"], step["dropped"], step["failed"]) == (25, 25, 5, 5)
        assert serve.stop() == 0


def _kind(reason: str) -> str:
    if "ran past its time limit of 100ms" in reason:
        return "timeout"
    return "raised" if "failed: KeyError" in reason else reason


def version(n: int) -> str:
    return textwrap.dedent(f"""
        def tag(event):
            event["properties"]["version"] = {n}
            return event
    """)


async def test_a_reload_changes_the_function_and_a_broken_one_is_refused(deployment, warehouse_dsn):
    (deployment.root / "fns.py").write_text(version(1))
    async with WebhookReceiver() as rx, jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(warehouse_dsn, rx.url, "      - python: fns.py:tag\n"))
        serve = start(deployment)
        await serve.wait_healthy()

        async def send(prefix: str, total: int) -> None:
            events = [make_event(f"{prefix}{i}", user=f"anon-{i % 3}") for i in range(10)]
            await post_events(serve.base_url, events)
            await drained(js, rx, warehouse_dsn, rows=total, posts=total, letters=0)

        await send("a", 10)
        # The function's file changes: the worker loads the new version, then uses it.
        (deployment.root / "fns.py").write_text(version(2))
        await serve.wait_log("A function's file changed; reloading the pipeline.", count=2)
        await send("b", 20)
        # A broken version is refused; the running one keeps going.
        (deployment.root / "fns.py").write_text("def tag(event)\n    return event\n")
        await serve.wait_log("A changed function does not load", count=2)
        assert "fns.py does not import: SyntaxError" in serve.log()
        await send("c", 30)
        # `workspace apply` refuses it too, naming the workspace line.
        bad = deployment.root / "bad.yaml"
        bad.write_text(deployment.workspace_path.read_text())
        refused = await asyncio.to_thread(deployment.cli, "workspace", "apply", str(bad))
        assert refused.returncode == 2
        assert (
            f'{bad}:16: pipeline "to-warehouse": transform[0] (python fns.py:tag)' in refused.stderr
        )
        # A new revision names another function: applied, and used.
        (deployment.root / "fns3.py").write_text(version(3))
        text = deployment.workspace_path.read_text().replace("fns.py:tag", "fns3.py:tag")
        deployment.write_workspace(text)
        # serve, then its worker process (which has restarted the workers by then).
        await serve.wait_log("Workspace revision in use. revision=2", count=2)
        await send("d", 40)

        rows = await warehouse_rows(
            warehouse_dsn, "SELECT message_id, properties->>'version' FROM krenalis_events"
        )
        got = Counter((message_id[0], v) for message_id, v in rows)
        assert got == {("a", "1"): 10, ("b", "2"): 10, ("c", "2"): 10, ("d", "3"): 10}
        hooked = Counter((b["messageId"][0], b["properties"]["version"]) for b in rx.bodies)
        assert hooked == {("a", 1): 10, ("b", 2): 10, ("c", 2): 10, ("d", 3): 10}
        assert serve.stop() == 0
