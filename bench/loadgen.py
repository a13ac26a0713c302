"""The load generator: POST /v1/batch with Basic auth over many keep-alive connections.

Runs in its own process on uvloop. Each connection sends one request at a time (HTTP/1.1
keep-alive, no pipelining). With `--rate 0` every connection sends back to back (closed loop,
unthrottled); with `--rate R` (events/s) request k is due at start + k * batch / R and is sent by
the first free connection (latency is measured from the actual send; `behind_s` reports how
late the generator was against its schedule, i.e. whether the offered rate was really offered).

The first `--warmup` seconds are not counted. Figures (JSON on stdout or `--out`):
events accepted/s (from the collector's `"accepted"` count in 200 answers), requests/s,
request latency p50/p90/p99/max, failures by status, and the generator's own CPU use, so a
reader can check that the generator was not the limit.

Two HTTP clients: `raw` (a minimal HTTP/1.1 client on asyncio streams; the default) and `httpx`
(httpx.AsyncClient), so the self-test can show which one limits first.

Run: python -m bench.loadgen --url http://127.0.0.1:2022/v1/batch --key KEY [--batch 100]
     [--rate 0] [--duration 15] [--warmup 2] [--connections 16] [--event-size 400]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench import write_result
from bench.events import EventFactory, basic_auth

__all__ = ["Config", "run"]

_ACCEPTED = re.compile(rb'"accepted":(\d+)')


@dataclass
class Config:
    url: str
    key: str
    batch: int = 100
    rate: float = 0.0  # events/s; 0 = unthrottled
    duration: float = 15.0
    warmup: float = 2.0
    connections: int = 16
    event_size: int = 400
    client: str = "raw"
    timeout: float = 30.0
    start_at: float = 0.0  # wall clock (time.time()) to begin; 0 = now


@dataclass
class Tally:
    window_start: float = 0.0  # perf_counter
    window_end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, requests started in window
    accepted_window: int = 0
    requests_window: int = 0
    accepted_total: int = 0
    sent_total: int = 0
    requests_total: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    behind: float = 0.0
    bytes_sent: int = 0

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class _Schedule:
    """Hands out request slots: immediately when unthrottled, at their due time otherwise."""

    def __init__(self, cfg: Config, start: float, end: float, tally: Tally) -> None:
        self.interval = cfg.batch / cfg.rate if cfg.rate > 0 else 0.0
        self.start = start
        self.end = end
        self.k = 0
        self.tally = tally

    async def next(self) -> bool:
        if not self.interval:
            return time.perf_counter() < self.end
        due = self.start + self.k * self.interval
        self.k += 1
        if due >= self.end:
            return False
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.tally.behind = max(self.tally.behind, -delay)
        return True


class _RawConnection:
    """One keep-alive HTTP/1.1 connection; reconnects after an error."""

    def __init__(self, host: str, port: int, path: str, headers: bytes) -> None:
        self.host, self.port, self.path = host, port, path
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode() + headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def _connection_loop(
    cfg: Config, factory: EventFactory, schedule: _Schedule, tally: Tally, post
) -> None:
    while await schedule.next():
        body = factory.body(cfg.batch)
        started = time.perf_counter()
        try:
            status, payload = await asyncio.wait_for(post(body), cfg.timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            tally.fail(type(exc).__name__)
            tally.requests_total += 1
            await asyncio.sleep(0.05)
            continue
        except Exception as exc:  # httpx errors
            tally.fail(type(exc).__name__)
            tally.requests_total += 1
            await asyncio.sleep(0.05)
            continue
        done = time.perf_counter()
        tally.requests_total += 1
        tally.sent_total += cfg.batch
        tally.bytes_sent += len(body)
        accepted = 0
        if status == 200:
            m = _ACCEPTED.search(payload)
            accepted = int(m.group(1)) if m else cfg.batch
            if accepted != cfg.batch:
                tally.fail("partially rejected")
        else:
            tally.fail(f"HTTP {status}")
        tally.accepted_total += accepted
        if tally.window_start <= started and done <= tally.window_end:
            tally.latencies.append(done - started)
            tally.accepted_window += accepted
            tally.requests_window += 1


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[idx]


async def run(cfg: Config) -> dict:
    factory = EventFactory(target_size=cfg.event_size)
    parts = urlsplit(cfg.url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    auth = basic_auth(cfg.key)
    tally = Tally()
    lead = max(0.05, cfg.start_at - time.time()) if cfg.start_at else 0.05
    wall_start = time.time() + lead
    start = time.perf_counter() + lead
    tally.window_start = start + cfg.warmup
    tally.window_end = start + cfg.warmup + cfg.duration
    schedule = _Schedule(cfg, start, tally.window_end, tally)
    rusage0 = resource.getrusage(resource.RUSAGE_SELF)
    client = None
    if cfg.client == "httpx":
        import httpx

        client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=cfg.connections, max_keepalive_connections=cfg.connections
            ),
            timeout=cfg.timeout,
        )
        headers = {"Authorization": auth, "Content-Type": "application/json"}

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            r = await client.post(cfg.url, content=body, headers=headers)
            return r.status_code, r.content

        posts = [post_httpx] * cfg.connections
        conns: list[_RawConnection] = []
    else:
        extra = f"Authorization: {auth}\r\nContent-Type: application/json\r\n".encode()
        conns = [_RawConnection(host, port, path, extra) for _ in range(cfg.connections)]
        posts = [c.post for c in conns]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    tasks = [asyncio.create_task(_connection_loop(cfg, factory, schedule, tally, p)) for p in posts]
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in conns:
            await c.close()
        if client is not None:
            await client.aclose()
    finished = time.perf_counter()
    rusage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (rusage1.ru_utime - rusage0.ru_utime) + (rusage1.ru_stime - rusage0.ru_stime)
    window = cfg.duration
    lat = tally.latencies
    return {
        "client": cfg.client,
        "batch": cfg.batch,
        "rate_target": cfg.rate,
        "connections": cfg.connections,
        "event_size": round(factory.event_size),
        "window_epoch": [wall_start + cfg.warmup, wall_start + cfg.warmup + cfg.duration],
        "start_epoch": wall_start,
        "events_per_s": tally.accepted_window / window,
        "requests_per_s": tally.requests_window / window,
        "latency_ms": {
            name: (None if _percentile(lat, q) is None else round(_percentile(lat, q) * 1000, 2))
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "accepted_window": tally.accepted_window,
        "accepted_total": tally.accepted_total,
        "sent_total": tally.sent_total,
        "requests_total": tally.requests_total,
        "failures": tally.failures,
        "behind_s": round(tally.behind, 3),
        "mbytes_per_s": round(tally.bytes_sent / (finished - start) / 1e6, 2),
        "cpu_cores": round(cpu / (finished - start), 3),
        "run_s": round(finished - start, 2),
        "id_prefix": factory.prefix,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Krenalis load generator (POST /v1/batch).")
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True, help="the source's write key (Basic auth user)")
    p.add_argument("--batch", type=int, default=100, help="events per request")
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = unthrottled")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds not counted, first")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--event-size", type=int, default=400, help="bytes per event (>= ~420)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--start-at", type=float, default=0.0, help="begin at this time.time()")
    p.add_argument("--out", help="write the JSON result here instead of stdout")
    args = p.parse_args(argv)
    cfg = Config(
        url=args.url, key=args.key, batch=args.batch, rate=args.rate, duration=args.duration,
        warmup=args.warmup, connections=args.connections, event_size=args.event_size,
        client=args.client, start_at=args.start_at,
    )  # fmt: skip
    import uvloop

    result = uvloop.run(run(cfg))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
