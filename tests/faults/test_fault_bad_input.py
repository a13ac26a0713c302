"""Bad input against a real `krenalis serve` while valid traffic flows.

A corpus of known-nasty requests (sent as raw bytes: invalid UTF-8, deep nesting, huge numbers,
wrong types, duplicate keys, gzip bombs, broken HTTP framing, slow and stuck clients) and a
Hypothesis run of event batches full of edge values. Every request gets the right 4xx or a
200 with the bad events listed; the server stays up; the valid events sent meanwhile (by the
load generator, and the good events inside the nasty and generated requests) all reach the
warehouse exactly once, and none ends as a dead letter.

tests/collector/test_collector_fuzz.py already fuzzes the collector in-process (random bodies
and headers, "never a 5xx"); this file does not repeat it: it checks the whole path, over TCP.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from faults_load import LoadGenerator
from faults_sinks import warehouse_probe
from faults_support import WRITE_KEY, FaultClock, Watcher, record, verify, workspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(180)

AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
MAX_BODY = 500 * 1024
HYPOTHESIS_EXAMPLES = 1500
HELD_CONNECTIONS = 200


# -- a raw HTTP/1.1 client -----------------------------------------------------------------------


def request(
    body: bytes = b"",
    *,
    path: str = "/v1/batch",
    method: str = "POST",
    headers: list[tuple[str, str]] | None = None,
    auth: str | None = AUTH,
    content_type: str | None = "application/json",
    length: bool = True,
) -> bytes:
    """The bytes of one request; `headers` come after the usual ones."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers or ()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:  # skip interim answers (100 Continue)
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


async def exchange(port: int, parts: list[bytes | float], timeout: float = 20.0, answers: int = 1):
    """Send the parts (a float is a pause), read `answers` answers; the last one as (status,
    headers, body), or (None, {}, b"") when the server closed the connection without answering,
    or ("no answer", {}, b"") after `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
                continue
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break  # the server answered early and closed: read what it said
        try:
            for _ in range(answers - 1):
                status, _, body = await asyncio.wait_for(read_response(reader), timeout)
                if status != 200:
                    return status, {}, body
            return await asyncio.wait_for(read_response(reader), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None, {}, b""
        except TimeoutError:
            return "no answer", {}, b""
    finally:
        writer.close()


# -- the corpus ----------------------------------------------------------------------------------

_ids = itertools.count()


def mid() -> str:
    return f"corpus-{next(_ids)}"


def track(message_id: str | None = None, **fields: object) -> dict:
    event = {"type": "track", "event": "Nasty", "anonymousId": "nasty-user"}
    event["messageId"] = message_id or mid()
    event.update(fields)
    return event


def batch(*events: dict) -> bytes:
    return json.dumps({"batch": list(events)}).encode()


@dataclass
class Case:
    name: str
    parts: list[bytes | float]
    status: int
    rejected: set[int] = field(default_factory=set)  # for a 200: the events reported as bad
    stored: set[str] = field(default_factory=set)  # messageIds that must reach the warehouse
    parser: bool = False  # refused by the HTTP parser (plain text), not by the collector
    answers: int = 1  # pipelined requests: every answer must have `status`


def corpus() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, parts: bytes | list, status: int, **kw: object) -> None:
        cases.append(Case(name, parts if isinstance(parts, list) else [parts], status, **kw))

    def ok(
        name: str, events: list[dict], rejected: set[int], body: bytes | None = None, **kw
    ) -> None:
        stored = {
            e["messageId"]
            for i, e in enumerate(events)
            if i not in rejected and isinstance(e, dict)
        }
        add(name, request(body or batch(*events), **kw), 200, rejected=rejected, stored=stored)

    good = track()
    # Encoding: a bad event is rejected alone (the rest of a batch would be stored).
    add("invalid UTF-8 in a value", request(b'{"batch":[{"type":"track","event":"\xff\xfe",'
        b'"anonymousId":"a","messageId":"x"}]}'), 200, rejected={0})  # fmt: skip
    add("invalid UTF-8 in a key", request(b'{"batch":[{"\xc3\x28":1,"type":"track"}]}'), 200,
        rejected={0})  # fmt: skip
    add("overlong UTF-8 (C0 AF)", request(b'{"batch":[{"type":"track","event":"\xc0\xaf"}]}'),
        200, rejected={0})  # fmt: skip
    add("UTF-16 body", request('{"batch":[]}'.encode("utf-16")), 400)
    # A lone surrogate is read as U+FFFD, as Go's JSON decoder does: the event is stored.
    surrogate = mid()
    add("lone surrogate escape", request(b'{"batch":[{"type":"track","event":"\\ud800",'
        b'"anonymousId":"a","messageId":"' + surrogate.encode() + b'"}]}'), 200,
        stored={surrogate})  # fmt: skip
    add("BOM before the JSON", request(b"\xef\xbb\xbf" + batch(track())), 400)
    add("NUL byte in the JSON", request(b'{"batch":[{"type":"track\x00"}]}'), 400)
    ok("escaped NUL and exotic text", [track(properties={"s": "a\u0000b\u202e\U0001f600\ufeff"},
       context={"page": {"title": "\u0000"}}), track(mid() + " with spaces\tand tab")], set())  # fmt: skip
    # Nesting.
    # Nesting: an event deeper than 64 levels is rejected alone.
    add("array nested 100,000 deep", request(b"[" * 100_000 + b"]" * 100_000), 200, rejected={0})
    add("properties nested 10,000 deep",
        request(b'{"batch":[{"type":"track","event":"e","anonymousId":"a","properties":'
                + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}]}"), 200, rejected={0})  # fmt: skip
    ok(
        "properties nested 100 deep",
        [track(properties=json.loads('{"a":' * 100 + "1" + "}" * 100))],
        {0},
    )
    # Numbers.
    add(
        "1e400 in properties",
        request(batch(track()).replace(b'"Nasty"', b'"Nasty","properties":{"n":1e400}')),
        200,
        rejected={0},
    )
    add("a 5,000-digit integer", request(batch(track()).replace(b'"Nasty"', b'"Nasty","properties":{"n":1' + b"0" * 5000 + b"}")), 200, rejected={0})  # fmt: skip
    ok(
        "big integer and tiny float in properties",
        [track(properties={"n": 10**30, "m": -(10**30), "f": 5e-324})],
        set(),
    )
    ok("numbers out of the columns' ranges", [
        track(context={"screen": {"width": 32768}}),
        track(context={"screen": {"height": -1}}),
        track(context={"screen": {"density": 10}}),
        track(context={"sessionId": 2**63}),
        track(context={"location": {"latitude": 1.7976931348623157e308, "longitude": -1e308}}),
        track(context={"screen": {"width": 32767, "height": 1, "density": 9.99}, "sessionId": -(2**63)}),
    ], {0, 1, 2, 3})  # fmt: skip
    # Wrong types.
    ok("wrong types per event", [
        track(type=5), track(event=["x"]), track(properties=[1, 2]), track(context="x"),
        track(timestamp=1700000000), track(anonymousId={"a": 1}), track(messageId=7),
        track(context={"consents": {"ads": "yes"}}), track(), track(context={"ip": "999.1.1.1"}),
    ], {0, 1, 2, 3, 4, 5, 6, 7, 9})  # fmt: skip
    ok("not objects in the batch", [good, 1, "x", None, [], True], {1, 2, 3, 4, 5})
    add("batch is a string", request(b'{"batch":"x"}'), 400)
    add("batch is empty", request(b'{"batch":[]}'), 400)
    add("body is null", request(b"null"), 400)
    add("body is a number", request(b"42"), 400)
    add("body is empty", request(b""), 400)
    add("truncated JSON", request(batch(track())[:-3]), 400)
    add("trailing garbage", request(batch(track()) + b"}{"), 400)
    add("20,001 events", request(b'{"batch":[' + b",".join([b"{}"] * 20_001) + b"]}"), 400)
    add("writeKey of the wrong type", request(b'{"writeKey":5,"batch":[{}]}', auth=None), 400)
    add("sentAt not a time", request(b'{"sentAt":"yesterday","batch":[{}]}'), 400)
    ok("timestamps at the edges", [
        track(timestamp="0001-01-01T00:00:00Z"), track(timestamp="9999-12-31T23:59:59.999Z"),
        track(timestamp="2024-02-30T00:00:00Z"), track(timestamp="not a date"),
        track(originalTimestamp="2026-01-01T00:00:00Z"),
        track(timestamp="2024-02-29T12:00:00.123456789+14:00"),
    ], {2, 3})  # fmt: skip
    ok(
        "an event over 32 KiB next to a good one",
        [track(properties={"x": "y" * 40_000}), track()],
        {0},
    )
    ok("messageId of 100 characters", [track("m" * 100), track("n" * 99)], {0})
    # Duplicate keys: the last value wins (documented in krenalis/events/decode.py).
    first, last = mid(), mid()
    add("duplicate keys", request(
        f'{{"batch":[{{"type":"identify","type":"track","event":"e","anonymousId":"a",'
        f'"messageId":"{first}","messageId":"{last}"}}]}}'.encode()), 200, stored={last})  # fmt: skip
    # Compression.
    add(
        "gzip bomb (10 MB of zeros)",
        request(gzip.compress(b"0" * 10_000_000), headers=[("Content-Encoding", "gzip")]),
        413,
    )
    add(
        "gzip of gzip",
        request(
            gzip.compress(gzip.compress(batch(track()))), headers=[("Content-Encoding", "gzip")]
        ),
        400,
    )
    add(
        "truncated gzip",
        request(gzip.compress(batch(track()))[:-10], headers=[("Content-Encoding", "gzip")]),
        415,
    )
    add(
        "gzip header on plain JSON",
        request(batch(track()), headers=[("Content-Encoding", "gzip")]),
        415,
    )
    add("brotli", request(b"\x0b\x02\x80{}\x03", headers=[("Content-Encoding", "br")]), 415)
    gz = track()
    add("valid gzip", request(gzip.compress(batch(gz)), headers=[("Content-Encoding", "gzip")]), 200,
        stored={gz["messageId"]})  # fmt: skip
    # Size and framing.
    add("body over 500 KiB", request(b" " * (MAX_BODY + 1)), 413)
    add(
        "Content-Length over 500 KiB, no body",
        [request(length=False, headers=[("Content-Length", "999999999")])],
        413,
    )
    add(
        "Content-Length too big for an integer",
        request(length=False, headers=[("Content-Length", "9" * 30)]),
        400,
        parser=True,
    )
    add("two Content-Lengths", request(b"{}", headers=[("Content-Length", "5")]), 400, parser=True)
    add(
        "Content-Length and chunked",
        request(b"2\r\n{}\r\n0\r\n\r\n", headers=[("Transfer-Encoding", "chunked")]),
        400,
        parser=True,
    )
    add(
        "broken chunk size",
        request(b"zz\r\n{}\r\n0\r\n\r\n", length=False, headers=[("Transfer-Encoding", "chunked")]),
        400,
        parser=True,
    )
    add("NUL in a header value", request(b"{}", headers=[("X-A", "a\x00b")]), 400, parser=True)
    add("space in a header name", request(b"{}", headers=[("X A", "b")]), 400, parser=True)
    add("bare LF line ends", request(batch(track())).replace(b"\r\n", b"\n"), 400, parser=True)
    add(
        "TLS handshake on the HTTP port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        400,
        parser=True,
    )
    add("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, parser=True)
    add("unknown method", request(b"{}", method="BREW"), 400, parser=True)
    add("GET on /v1/batch", request(method="GET", length=False), 405)
    add("unknown path", request(b"{}", path="/v1/nothing"), 404)
    add("path traversal", request(b"{}", path="/v1/../../etc/passwd"), 404)
    chunked = track()
    body = batch(chunked)
    add("chunked body in tiny chunks", request(
        b"".join(b"%x\r\n%s\r\n" % (1, body[i : i + 1]) for i in range(len(body))) + b"0\r\n\r\n",
        length=False, headers=[("Transfer-Encoding", "chunked")]), 200, stored={chunked["messageId"]})  # fmt: skip
    exp = track()
    add(
        "Expect: 100-continue",
        request(batch(exp), headers=[("Expect", "100-continue")]),
        200,
        stored={exp["messageId"]},
    )
    first, second, old = track(), track(), track()
    add("two pipelined requests", request(batch(first)) + request(batch(second)), 200,
        stored={first["messageId"], second["messageId"]}, answers=2)  # fmt: skip
    add("HTTP/1.0", request(batch(old)).replace(b"HTTP/1.1", b"HTTP/1.0", 1), 200,
        stored={old["messageId"]})  # fmt: skip
    # Headers and auth.
    add("no Authorization", request(batch(track()), auth=None), 401)
    add("unknown write key", request(batch(track()), auth="Bearer " + "Z" * 32), 401)
    add("Basic auth not base64", request(batch(track()), auth="Basic ***"), 400)
    add("Latin-1 bytes in the write key", request(batch(track()), auth="Bearer \xe9\xe9"), 401)
    add("unknown auth scheme", request(batch(track()), auth="Digest x"), 400)
    add("XML content type", request(batch(track()), content_type="text/xml"), 415)
    add(
        "latin-1 charset",
        request(batch(track()), content_type="application/json; charset=latin-1"),
        415,
    )
    add(
        "Content-Type with a boundary",
        request(batch(track()), content_type="application/json; boundary=x"),
        415,
    )
    # Slow clients: a body trickled over 3 s, a body cut short (no answer expected).
    slow = track()
    body = batch(slow)
    trickle = [request(length=False, headers=[("Content-Length", str(len(body)))])]
    for i in range(0, len(body), 4):
        trickle += [body[i : i + 4], 3.0 / (len(body) / 4)]
    add("body trickled 4 bytes at a time over 3 s", trickle, 200, stored={slow["messageId"]})
    return cases


async def check_case(port: int, case: Case) -> str | None:
    """None if the answer is right, else what was wrong."""
    status, _, body = await exchange(port, case.parts, answers=case.answers)
    if status != case.status:
        return f"{case.name}: {status} {body[:200]!r}, expected {case.status}"
    if case.parser:
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return f"{case.name}: the answer is not JSON: {body[:200]!r}"
    if status != 200:
        error = answer.get("error", {})
        return None if error.get("code") and error.get("message") else f"{case.name}: {answer}"
    got = {r["index"] for r in answer.get("rejected", [])}
    if got != case.rejected:
        return f"{case.name}: rejected {sorted(got)}, expected {sorted(case.rejected)}: {answer}"
    return None


async def incomplete_requests(port: int) -> None:
    """A body cut short, and a client that goes away mid-headers: nothing to answer, nothing
    stored, nothing broken."""
    body = batch(track())
    for parts in (
        [request(length=False, headers=[("Content-Length", str(len(body) + 100))]) + body],
        [b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Le"],
    ):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for part in parts:
            writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()


async def hold_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    """Connections that never finish their request (slowloris), or never send a byte."""
    held = []
    for i in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 2:
            writer.write(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
        held.append(writer)
    return held


# -- the hypothesis run --------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "a\x00b", "\u202e", "\U0001f600" * 5, "x" * 300, "\\", '"',
                     "'; DROP TABLE krenalis_events; --", "\ufeff", "null"]),
)  # fmt: skip
numbers = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0, -1, 1, 32767, 32768, 2**63 - 1, 2**63, -(2**63), 9.99, 9.995, 1e308, 5e-324]
    ),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
times = st.one_of(
    texts,
    st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z",
                     "2024-02-29T12:00:00+14:00", "2024-02-30T00:00:00Z", "2026-01-01T00:00:00.123456789Z",
                     "2026-01-01", "2026-01-01T00:00:00-23:59", "1970-01-01T00:00:00Z"]),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
)  # fmt: skip
sections = st.fixed_dictionaries(
    {},
    optional={
        "screen": st.fixed_dictionaries({}, optional={"width": numbers, "height": numbers, "density": numbers}),
        "location": st.fixed_dictionaries({}, optional={"latitude": numbers, "longitude": numbers, "city": texts}),
        "sessionId": numbers,
        "sessionStart": st.booleans() | values,
        "ip": st.one_of(texts, st.sampled_from(["1.2.3.4", "::1", "fe80::1%eth0", "256.0.0.1", "::ffff:1.2.3.4"])),
        "locale": st.one_of(texts, st.sampled_from(["it-IT", "en", "zh-Hant-TW", "xx-YYYYYY", "EN_us"])),
        "timezone": texts,
        "userAgent": texts,
        "consents": st.dictionaries(texts, st.booleans() | values, max_size=3),
        "app": st.dictionaries(st.sampled_from(["name", "version", "build"]), texts | values, max_size=3),
        "page": st.dictionaries(st.sampled_from(["url", "path", "title"]), texts, max_size=3),
        "os": st.dictionaries(st.sampled_from(["name", "version"]), texts, max_size=2),
        "traits": values,
    },
)  # fmt: skip
TYPES = ("track", "page", "screen", "identify", "group", "alias")
ids = st.one_of(
    st.text(min_size=1, max_size=30), st.sampled_from(["\x00x", "\U0001f600", "a b", "x" * 200])
)
objects = st.dictionaries(texts, values, max_size=5)


@st.composite
def events(draw: st.DrawFn) -> dict:
    """A mostly valid event of a random type, with edge values where the format is free; one
    in five gets one field replaced by a value of any type."""
    kind = draw(st.sampled_from(TYPES))
    event: dict = {"type": kind, "anonymousId": draw(ids)}
    if kind in ("identify", "alias") or draw(st.booleans()):
        event["userId"] = draw(ids)
    required = {"track": "event", "group": "groupId", "alias": "previousId"}
    if kind in required:
        event[required[kind]] = draw(ids)
    if kind in ("page", "screen") and draw(st.booleans()):
        event["name"] = draw(texts)
    if kind in ("track", "page", "screen") and draw(st.booleans()):
        event["properties"] = draw(objects)
    if kind in ("identify", "group") and draw(st.booleans()):
        event["traits"] = draw(objects)
    for name, strategy in (
        ("context", sections),
        ("timestamp", times),
        ("sentAt", times),
        ("channel", texts),
    ):
        if draw(st.integers(0, 2)) == 0:
            event[name] = draw(strategy)
    if draw(st.integers(0, 4)) == 0:
        event[draw(st.sampled_from(sorted(event) + ["properties", "context", "traits"]))] = draw(
            values
        )
    return event


envelopes = st.fixed_dictionaries(
    {"batch": st.lists(events(), min_size=1, max_size=5)},
    optional={"sentAt": times, "context": sections},
)


class Fuzzer:
    """Posts generated batches from a thread (Hypothesis is synchronous); every event gets a
    unique messageId, and the ids of the events the collector accepted are kept."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.stored: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.requests = 0
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def run(self, examples: int) -> None:
        with httpx.Client(
            base_url=self.base_url, timeout=30, headers={"Authorization": AUTH}
        ) as client:

            @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(envelopes)
            def one(envelope: dict) -> None:
                for event in envelope["batch"]:
                    event["messageId"] = f"hyp-{next(self._ids)}"
                body = json.dumps(envelope).encode()
                response = client.post(
                    "/v1/batch", content=body, headers={"Content-Type": "application/json"}
                )
                self.requests += 1
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                assert response.status_code in (200, 400, 413), (
                    response.status_code,
                    response.text,
                    body[:500],
                )
                answer = response.json()
                if response.status_code != 200:
                    assert answer["error"]["code"] and answer["error"]["message"], answer
                    return
                rejected = {r["index"] for r in answer.get("rejected", [])}
                kept = [
                    e["messageId"] for i, e in enumerate(envelope["batch"]) if i not in rejected
                ]
                assert answer["accepted"] == len(kept), answer
                self.stored.update(kept)

            one()


async def test_nasty_requests_and_generated_batches_during_valid_traffic(
    stack_factory, nats_server, warehouse_dsn
):
    stack = stack_factory(nats_server.url)
    stack.write_workspace(workspace(dsn=warehouse_dsn))
    serve = stack.start("serve", "serve", stack.env())
    await serve.wait_healthy(timeout=60)
    port = serve.http_port
    cases = corpus()
    expected_stored = set().union(*(c.stored for c in cases))
    fuzzer = Fuzzer(serve.base_url)
    clock = FaultClock("bad input with valid traffic")
    async with (
        LoadGenerator(serve.base_url) as load,
        Watcher([warehouse_probe(warehouse_dsn)]) as watcher,
    ):
        await asyncio.sleep(2.0)
        clock.begin()
        held = await hold_connections(port, HELD_CONNECTIONS)
        fuzzing = asyncio.create_task(asyncio.to_thread(fuzzer.run, HYPOTHESIS_EXAMPLES))
        wrong = [w for w in await asyncio.gather(*(check_case(port, c) for c in cases)) if w]
        await incomplete_requests(port)
        await fuzzing
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{serve.base_url}/health")).status_code == 200
        for writer in held:
            writer.close()
        clock.end()
        assert not wrong, "\n".join(wrong)
        assert serve.running()
        await asyncio.sleep(1.0)
        await load.stop()
        clock.recovery_s = 0.0
        clock.extra.update(
            corpus_cases=len(cases), hypothesis_requests=fuzzer.requests,
            hypothesis_statuses=fuzzer.statuses, held_connections=HELD_CONNECTIONS,
            other_events_stored=len(expected_stored | fuzzer.stored),
        )  # fmt: skip
        duplicates = await verify(
            load, watcher, nats_server.url, also=expected_stored | fuzzer.stored
        )
    record(clock, load, watcher, duplicates)


# -- limits on headers and on slow clients ----------------------------------------------------


async def start_serve(stack_factory, nats_server, warehouse_dsn):
    stack = stack_factory(nats_server.url)
    stack.write_workspace(workspace(dsn=warehouse_dsn))
    serve = stack.start("serve", "serve", stack.env())
    await serve.wait_healthy(timeout=60)
    return serve


async def still_serving(serve) -> None:
    body = batch(track())
    status, _, answer = await exchange(serve.http_port, [request(body)])
    assert status == 200, answer
    assert serve.running()


async def test_oversize_headers_are_refused(stack_factory, nats_server, warehouse_dsn):
    serve = await start_serve(stack_factory, nats_server, warehouse_dsn)
    body = batch(track())
    for name, extra in (
        ("one 1 MiB header", [("X-Big", "a" * 1024 * 1024)]),
        ("10,000 headers", [(f"X-H{i}", "v") for i in range(10_000)]),
    ):
        status, _, answer = await exchange(serve.http_port, [request(body, headers=extra)])
        # 431, or a reset if the server closed before the client had sent every byte.
        assert status in (431, None), f"{name}: {status} {answer[:200]!r}"
    await still_serving(serve)


@pytest.mark.faults
async def test_stalled_clients_are_cut_off(stack_factory, nats_server, warehouse_dsn):
    serve = await start_serve(stack_factory, nats_server, warehouse_dsn)
    body = batch(track())
    stalls = {
        "idle connection": [],
        "headers never finished": [b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nX-Slow: "],
        "body never finished": [
            request(length=False, headers=[("Content-Length", str(len(body) + 10))]) + body
        ],
    }

    async def wait_cut(parts: list[bytes]) -> tuple[object, float]:
        started = time.monotonic()
        status, _, _ = await exchange(serve.http_port, parts, timeout=65.0)
        return status, time.monotonic() - started

    outcomes = dict(
        zip(stalls, await asyncio.gather(*(wait_cut(p) for p in stalls.values())), strict=True)
    )
    for name, (status, seconds) in outcomes.items():
        # Answered 408 (or closed) within a minute, instead of waiting for ever.
        assert status in (408, None) and seconds < 65.0, f"{name}: {status} after {seconds:.0f}s"
    await still_serving(serve)
